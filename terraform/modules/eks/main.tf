# EKS with IRSA, encrypted secrets, control-plane logs, and two managed node groups:
# on-demand "system" nodes, and spot nodes for Dask workers, tainted so that only Dask
# workers (which tolerate it, cluster/daskcluster.yaml) land there.
module "eks" {
  # checkov:skip=CKV_TF_1:Registry module pinned to an exact version (not a moving range); commit pinning would need a git source.
  source  = "terraform-aws-modules/eks/aws"
  version = "20.31.6"

  cluster_name    = var.name
  cluster_version = var.kubernetes_version

  vpc_id     = var.vpc_id
  subnet_ids = var.private_subnet_ids

  cluster_endpoint_private_access      = true
  cluster_endpoint_public_access       = length(var.endpoint_public_access_cidrs) > 0
  cluster_endpoint_public_access_cidrs = var.endpoint_public_access_cidrs

  enable_irsa                              = true
  enable_cluster_creator_admin_permissions = true
  cluster_enabled_log_types                = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
  cluster_encryption_config                = { resources = ["secrets"] }

  eks_managed_node_groups = {
    system = {
      instance_types = var.system_instance_types
      capacity_type  = "ON_DEMAND"
      min_size       = var.system_nodes.min
      max_size       = var.system_nodes.max
      desired_size   = var.system_nodes.desired
      labels         = { "riverlake.io/pool" = "system" }
    }
    dask = {
      instance_types = var.dask_instance_types
      capacity_type  = "SPOT"
      min_size       = 0
      max_size       = var.dask_max_nodes
      desired_size   = 0
      labels         = { "riverlake.io/pool" = "dask" }
      taints = {
        dask = { key = "riverlake.io/dask", value = "true", effect = "NO_SCHEDULE" }
      }
    }
  }

  tags = var.tags
}

# The NetworkPolicy engine: without one, the namespace's NetworkPolicy objects are accepted
# and ignored. The Amazon VPC CNI add-on enforces them with its network policy agent once
# its configuration value enableNetworkPolicy is "true" (VPC CNI 1.14 or later, Kubernetes
# 1.25 or later). EKS installs a self-managed vpc-cni with every cluster: the add-on takes
# it over (OVERWRITE) at the version EKS names the default for the cluster's Kubernetes.
data "aws_eks_addon_version" "vpc_cni" {
  addon_name         = "vpc-cni"
  kubernetes_version = module.eks.cluster_version
  most_recent        = false
}

resource "aws_eks_addon" "vpc_cni" {
  cluster_name                = module.eks.cluster_name
  addon_name                  = "vpc-cni"
  addon_version               = data.aws_eks_addon_version.vpc_cni.version
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"
  configuration_values        = jsonencode({ enableNetworkPolicy = "true" })
  tags                        = var.tags
}
