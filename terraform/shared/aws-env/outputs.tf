output "kubeconfig" {
  description = "kubeconfig for the cluster (credentials come from `aws eks get-token`; no secret inside)."
  value       = module.aws.kubeconfig
}

output "bucket_name" {
  description = "The lake bucket."
  value       = module.aws.bucket_name
}

output "lake_url" {
  description = "RIVERLAKE_LAKE_URL of this environment."
  value       = module.aws.lake_url
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
