# dev: one NAT gateway, a small system node group, few spot nodes for Dask.
provider "aws" {
  region = var.region
  default_tags {
    tags = local.tags
  }
}

locals {
  name = "riverlake-dev"
  tags = { project = "riverlake", environment = "dev" }
}

module "network" {
  source             = "../../modules/network"
  name               = local.name
  azs                = var.azs
  single_nat_gateway = true
  tags               = local.tags
}

module "eks" {
  source                       = "../../modules/eks"
  name                         = local.name
  vpc_id                       = module.network.vpc_id
  private_subnet_ids           = module.network.private_subnet_ids
  endpoint_public_access_cidrs = var.endpoint_public_access_cidrs
  system_nodes                 = { min = 2, max = 3, desired = 2 }
  dask_max_nodes               = 4
  tags                         = local.tags
}

module "lake" {
  source      = "../../modules/lake"
  bucket_name = var.bucket_name
  tags        = local.tags
}

module "irsa" {
  source            = "../../modules/irsa"
  name              = local.name
  oidc_provider_arn = module.eks.oidc_provider_arn
  oidc_issuer       = module.eks.oidc_issuer
  bucket_arn        = module.lake.bucket_arn
  kms_key_arn       = module.lake.kms_key_arn
  tags              = local.tags
}

provider "helm" {
  kubernetes {
    host                   = module.eks.cluster_endpoint
    cluster_ca_certificate = base64decode(module.eks.cluster_ca)
    exec {
      api_version = "client.authentication.k8s.io/v1beta1"
      command     = "aws"
      args        = ["eks", "get-token", "--cluster-name", module.eks.cluster_name, "--region", var.region]
    }
  }
}

provider "kustomization" {
  kubeconfig_raw = local.kubeconfig
}

module "platform" {
  source          = "../../modules/platform"
  environment     = "dev"
  image           = var.image
  lake_url        = module.lake.lake_url
  apps_host       = var.apps_host
  prefect_api_url = var.prefect_api_url
  role_arns       = module.irsa.role_arns
}
