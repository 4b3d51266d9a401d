locals {
  kubeconfig = yamlencode({
    apiVersion      = "v1"
    kind            = "Config"
    current-context = module.eks.cluster_name
    clusters = [{
      name    = module.eks.cluster_name
      cluster = { server = module.eks.cluster_endpoint, certificate-authority-data = module.eks.cluster_ca }
    }]
    contexts = [{ name = module.eks.cluster_name, context = { cluster = module.eks.cluster_name, user = module.eks.cluster_name } }]
    users = [{
      name = module.eks.cluster_name
      user = { exec = {
        apiVersion = "client.authentication.k8s.io/v1beta1"
        command    = "aws"
        args       = ["eks", "get-token", "--cluster-name", module.eks.cluster_name, "--region", var.region]
      } }
    }]
  })
}

output "kubeconfig" {
  description = "kubeconfig for the cluster (credentials come from `aws eks get-token`; no secret inside)."
  value       = local.kubeconfig
}

output "bucket_name" {
  description = "The lake bucket."
  value       = module.lake.bucket_name
}

output "lake_url" {
  description = "RIVERLAKE_LAKE_URL of this environment."
  value       = module.lake.lake_url
}

output "apps_url" {
  description = "URL of the Panel apps."
  value       = module.platform.apps_url
}

output "prefect_api_url" {
  description = "The Prefect API the worker reports to."
  value       = module.platform.prefect_api_url
}

output "grafana_service" {
  description = "Grafana inside the cluster."
  value       = module.platform.grafana_service
}
