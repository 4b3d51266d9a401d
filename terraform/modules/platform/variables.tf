variable "environment" {
  type        = string
  description = "Environment name (dev, prod, ...); labels and hosts use it."
}

variable "namespace" {
  type        = string
  description = "Namespace of Riverlake's workloads (created by the manifests, PSS restricted)."
  default     = "riverlake"
}

variable "image" {
  type        = string
  description = "The Riverlake image (flows, Dask, apps), repository:tag."
  default     = "ghcr.io/riverlake/riverlake:0.1.0"
}

variable "lake_url" {
  type        = string
  description = "RIVERLAKE_LAKE_URL: s3://bucket/prefix of the lake."
}

variable "apps_host" {
  type        = string
  description = "Host name of the apps' Ingress."
}

variable "prefect_api_url" {
  type        = string
  description = "Prefect API the worker and flow runs report to (Prefect Cloud or a self-hosted server)."
}

variable "role_arns" {
  type        = map(string)
  description = "IAM role per service account (IRSA): riverlake-runner, riverlake-apps. Empty: no annotations."
  default     = {}
}

variable "dask_operator_chart_version" {
  type        = string
  description = "Version of the dask-kubernetes-operator chart (match the dask-kubernetes package)."
  default     = "2026.3.0"
}

variable "prefect_worker_chart_version" {
  type        = string
  description = "Version of the prefect-worker chart (its Prefect matches the image's)."
  default     = "2025.11.20190615"
}

variable "kube_prometheus_stack_chart_version" {
  type        = string
  description = "Version of the kube-prometheus-stack chart."
  default     = "66.3.1"
}
