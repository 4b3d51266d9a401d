# The root module of an AWS environment, shared by envs/dev and envs/prod (each links
# these files and sets local.environment and local.aws in its own main.tf).
provider "aws" {
  region = var.region
  default_tags {
    tags = local.tags
  }
}

locals {
  name = "riverlake-${local.environment}"
  tags = { project = "riverlake", environment = local.environment }
}

module "aws" {
  source                       = "../../modules/aws"
  name                         = local.name
  region                       = var.region
  azs                          = var.azs
  single_nat_gateway           = local.aws.single_nat_gateway
  system_nodes                 = local.aws.system_nodes
  dask_max_nodes               = local.aws.dask_max_nodes
  endpoint_public_access_cidrs = var.endpoint_public_access_cidrs
  bucket_name                  = coalesce(var.bucket_name, "${local.name}-lake")
  tags                         = local.tags
}

provider "helm" {
  kubernetes {
    host                   = module.aws.cluster_endpoint
    cluster_ca_certificate = base64decode(module.aws.cluster_ca)
    exec {
      api_version = "client.authentication.k8s.io/v1beta1"
      command     = "aws"
      args        = module.aws.token_command
    }
  }
}

provider "kustomization" {
  kubeconfig_raw = module.aws.kubeconfig
}

module "platform" {
  source          = "../../modules/platform"
  environment     = local.environment
  image           = var.image
  lake_url        = module.aws.lake_url
  apps_host       = var.apps_host
  prefect_api_url = var.prefect_api_url
  role_arns       = module.aws.role_arns
}
