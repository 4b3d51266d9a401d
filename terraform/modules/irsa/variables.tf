variable "name" {
  type        = string
  description = "Prefix of the IAM roles."
}

variable "oidc_provider_arn" {
  type        = string
  description = "ARN of the EKS cluster's OIDC provider."
}

variable "oidc_issuer" {
  type        = string
  description = "OIDC issuer of the cluster, without https://."
}

variable "namespace" {
  type        = string
  description = "Kubernetes namespace of Riverlake's service accounts."
  default     = "riverlake"
}

variable "bucket_arn" {
  type        = string
  description = "ARN of the lake bucket."
}

variable "kms_key_arn" {
  type        = string
  description = "ARN of the KMS key of the lake bucket."
}

variable "tags" {
  type        = map(string)
  description = "Tags for every resource."
  default     = {}
}
