# prod: a NAT gateway per zone, a larger system node group, more spot nodes for Dask.
locals {
  environment = "prod"
  aws = {
    single_nat_gateway = false
    system_nodes       = { min = 3, max = 6, desired = 3 }
    dask_max_nodes     = 20
  }
}
