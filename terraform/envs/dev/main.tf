# dev: one NAT gateway, a small system node group, few spot nodes for Dask.
locals {
  environment = "dev"
  aws = {
    single_nat_gateway = true
    system_nodes       = { min = 2, max = 3, desired = 2 }
    dask_max_nodes     = 4
  }
}
