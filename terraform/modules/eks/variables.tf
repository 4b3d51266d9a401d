variable "name" {
  type        = string
  description = "Name of the EKS cluster."
}

variable "kubernetes_version" {
  type        = string
  description = "Kubernetes minor version of the control plane and nodes."
  default     = "1.31"
}

variable "vpc_id" {
  type        = string
  description = "VPC to create the cluster in."
}

variable "private_subnet_ids" {
  type        = list(string)
  description = "Private subnets for the control plane's interfaces and the nodes."
}

variable "endpoint_public_access_cidrs" {
  type        = list(string)
  description = "CIDRs allowed to reach the public API endpoint; empty makes the endpoint private only."
  default     = []
}

variable "system_instance_types" {
  type        = list(string)
  description = "Instance types of the on-demand node group (apps, Prefect worker, schedulers, monitoring)."
  default     = ["m6i.large"]
}

variable "system_nodes" {
  type        = object({ min = number, max = number, desired = number })
  description = "Size of the on-demand node group."
  default     = { min = 2, max = 4, desired = 2 }
}

variable "dask_instance_types" {
  type        = list(string)
  description = "Instance types of the spot node group for Dask workers (several, for spot capacity)."
  default     = ["m6i.2xlarge", "m6a.2xlarge", "m5.2xlarge"]
}

variable "dask_max_nodes" {
  type        = number
  description = "Most spot nodes for Dask workers; the group scales from zero."
  default     = 10
}

variable "tags" {
  type        = map(string)
  description = "Tags for every resource."
  default     = {}
}
