output "kubeconfig" {
  description = "The kubeconfig and context Terraform used (the cluster's own)."
  value       = "${pathexpand(var.kubeconfig_path)} (context ${var.kube_context})"
}

output "bucket_name" {
  description = "The lake bucket (from lake_url)."
  value       = split("/", trimprefix(var.lake_url, "s3://"))[0]
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
