variable "bucket_name" {
  type        = string
  description = "Name of the lake bucket (globally unique)."
}

variable "landing_to_ia_days" {
  type        = number
  description = "Days after which landing/ objects move to STANDARD_IA."
  default     = 30
}

variable "landing_to_glacier_days" {
  type        = number
  description = "Days after which landing/ objects move to GLACIER_IR."
  default     = 90
}

variable "noncurrent_expiry_days" {
  type        = number
  description = "Days to keep noncurrent object versions (Delta's vacuum removes live references first)."
  default     = 30
}

variable "access_log_retention_days" {
  type        = number
  description = "Days to keep the bucket's access logs."
  default     = 365
}

variable "tags" {
  type        = map(string)
  description = "Tags for every resource."
  default     = {}
}
