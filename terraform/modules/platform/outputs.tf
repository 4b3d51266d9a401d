output "apps_url" {
  description = "URL of the Panel apps."
  value       = "https://${var.apps_host}/"
}

output "prefect_api_url" {
  description = "The Prefect API the worker reports to."
  value       = var.prefect_api_url
}

output "grafana_service" {
  description = "Grafana, inside the cluster (kubectl port-forward -n monitoring svc/kube-prometheus-stack-grafana 3000:80)."
  value       = "http://kube-prometheus-stack-grafana.monitoring.svc.cluster.local"
}
