variable "region" {
  type        = string
  description = "AWS region."
  default     = "eu-west-1"
}

variable "azs" {
  type        = list(string)
  description = "Availability zones of the VPC."
  default     = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
}

variable "bucket_name" {
  type        = string
  description = "Name of the lake bucket (globally unique); null: riverlake-<environment>-lake."
  default     = null
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

variable "endpoint_public_access_cidrs" {
  type        = list(string)
  description = "CIDRs allowed to reach the EKS API endpoint from outside the VPC (empty: private only)."
  default     = []
}
