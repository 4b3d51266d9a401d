output "cluster_name" {
  description = "Name of the EKS cluster."
  value       = module.eks.cluster_name
}

output "cluster_endpoint" {
  description = "API server endpoint."
  value       = module.eks.cluster_endpoint
}

output "cluster_ca" {
  description = "Base64 CA certificate of the API server."
  value       = module.eks.cluster_ca
}

output "token_command" {
  description = "Arguments of `aws` that print a token for the cluster."
  value       = local.token_command
}

output "kubeconfig" {
  description = "kubeconfig for the cluster (credentials come from `aws eks get-token`; no secret inside)."
  value = yamlencode({
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
      user = { exec = { apiVersion = "client.authentication.k8s.io/v1beta1", command = "aws", args = local.token_command } }
    }]
  })
}

output "bucket_name" {
  description = "The lake bucket."
  value       = module.lake.bucket_name
}

output "lake_url" {
  description = "RIVERLAKE_LAKE_URL of this environment."
  value       = module.lake.lake_url
}

output "role_arns" {
  description = "IAM role per service account (IRSA)."
  value       = module.irsa.role_arns
}
