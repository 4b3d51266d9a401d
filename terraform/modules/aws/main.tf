# One AWS environment: its network, its EKS cluster, its lake bucket and the IAM roles
# its service accounts assume. The environments (envs/dev, envs/prod) differ only in
# the values they pass here; the platform on top is installed from their root module,
# where the Kubernetes providers can be configured from this module's outputs.
module "network" {
  source             = "../network"
  name               = var.name
  azs                = var.azs
  single_nat_gateway = var.single_nat_gateway
  tags               = var.tags
}

module "eks" {
  source                       = "../eks"
  name                         = var.name
  vpc_id                       = module.network.vpc_id
  private_subnet_ids           = module.network.private_subnet_ids
  endpoint_public_access_cidrs = var.endpoint_public_access_cidrs
  system_nodes                 = var.system_nodes
  dask_max_nodes               = var.dask_max_nodes
  tags                         = var.tags
}

module "lake" {
  source      = "../lake"
  bucket_name = var.bucket_name
  tags        = var.tags
}

module "irsa" {
  source            = "../irsa"
  name              = var.name
  oidc_provider_arn = module.eks.oidc_provider_arn
  oidc_issuer       = module.eks.oidc_issuer
  bucket_arn        = module.lake.bucket_arn
  kms_key_arn       = module.lake.kms_key_arn
  tags              = var.tags
}

locals {
  token_command = ["eks", "get-token", "--cluster-name", module.eks.cluster_name, "--region", var.region]
}
