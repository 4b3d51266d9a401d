# An existing cluster: only the Helm releases and the platform's manifests. The lake
# bucket and the identities (IRSA roles, or credentials in a Secret riverlake-s3) are
# the cluster owner's.
provider "helm" {
  kubernetes {
    config_path    = pathexpand(var.kubeconfig_path)
    config_context = var.kube_context
  }
}

provider "kustomization" {
  kubeconfig_path = pathexpand(var.kubeconfig_path)
  context         = var.kube_context
}

module "platform" {
  source          = "../../modules/platform"
  environment     = var.environment
  image           = var.image
  lake_url        = var.lake_url
  apps_host       = var.apps_host
  prefect_api_url = var.prefect_api_url
  role_arns       = var.role_arns
}
