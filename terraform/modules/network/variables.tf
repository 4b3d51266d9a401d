variable "name" {
  type        = string
  description = "Name of the VPC and prefix of its resources."
}

variable "cidr" {
  type        = string
  description = "CIDR block of the VPC."
  default     = "10.40.0.0/16"
}

variable "azs" {
  type        = list(string)
  description = "Availability zones to spread the subnets over (at least two for EKS)."
}

variable "single_nat_gateway" {
  type        = bool
  description = "One NAT gateway for all zones (cheaper; dev) instead of one per zone (prod)."
  default     = false
}

variable "flow_log_retention_days" {
  type        = number
  description = "Days to keep the VPC flow logs in CloudWatch."
  default     = 365
}

variable "tags" {
  type        = map(string)
  description = "Tags for every resource."
  default     = {}
}
