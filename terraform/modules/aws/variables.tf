variable "name" {
  type        = string
  description = "Name of the environment's VPC and EKS cluster, and prefix of its IAM roles."
}

variable "region" {
  type        = string
  description = "AWS region (for the kubeconfig's token command)."
}

variable "azs" {
  type        = list(string)
  description = "Availability zones of the VPC."
}

variable "single_nat_gateway" {
  type        = bool
  description = "One NAT gateway for all zones (dev) instead of one per zone (prod)."
}

variable "system_nodes" {
  type        = object({ min = number, max = number, desired = number })
  description = "Size of the on-demand node group."
}

variable "dask_max_nodes" {
  type        = number
  description = "Most spot nodes for Dask workers."
}

variable "endpoint_public_access_cidrs" {
  type        = list(string)
  description = "CIDRs allowed to reach the EKS API endpoint from outside the VPC (empty: private only)."
}

variable "bucket_name" {
  type        = string
  description = "Name of the lake bucket (globally unique)."
}

variable "tags" {
  type        = map(string)
  description = "Tags for every resource."
}
