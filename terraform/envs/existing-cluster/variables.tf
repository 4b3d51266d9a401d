variable "kubeconfig_path" {
  type        = string
  description = "Path of the kubeconfig of the existing cluster."
  default     = "~/.kube/config"
}

variable "kube_context" {
  type        = string
  description = "kubeconfig context to use."
}

variable "environment" {
  type        = string
  description = "Environment name."
  default     = "existing"
}

variable "lake_url" {
  type        = string
  description = "RIVERLAKE_LAKE_URL: s3://bucket/prefix of an existing lake bucket."
}

variable "apps_host" {
  type        = string
  description = "Host name of the apps' Ingress."
}

variable "prefect_api_url" {
  type        = string
  description = "Prefect API the worker and flow runs report to."
}

variable "image" {
  type        = string
  description = "The Riverlake image, repository:tag."
  default     = "ghcr.io/riverlake/riverlake:0.1.0"
}

variable "role_arns" {
  type        = map(string)
  description = "IRSA role per service account (riverlake-runner, riverlake-apps), if the cluster is EKS; empty otherwise."
  default     = {}
}
