# What runs on the cluster: the dask-kubernetes operator, Prefect's Kubernetes worker and
# kube-prometheus-stack (Helm, pinned), then the platform's own manifests
# (deploy/kubernetes/base), patched for this environment: image, lake URL, Ingress host
# and the IRSA role of each service account.
locals {
  manifests    = "${path.module}/../../../deploy/kubernetes/base"
  job_template = file("${path.module}/../../../deploy/prefect/kubernetes-job-template.json")
  image_parts  = split(":", var.image)
}

resource "helm_release" "dask_operator" {
  name             = "dask-kubernetes-operator"
  repository       = "https://helm.dask.org"
  chart            = "dask-kubernetes-operator"
  version          = var.dask_operator_chart_version
  namespace        = "dask-operator"
  create_namespace = true
  atomic           = true
}

resource "helm_release" "kube_prometheus_stack" {
  name             = "kube-prometheus-stack"
  repository       = "https://prometheus-community.github.io/helm-charts"
  chart            = "kube-prometheus-stack"
  version          = var.kube_prometheus_stack_chart_version
  namespace        = "monitoring"
  create_namespace = true
  atomic           = true
  values = [yamlencode({
    prometheus = {
      prometheusSpec = {
        # pick up the platform's ServiceMonitor, PodMonitor and PrometheusRule
        ruleSelectorNilUsesHelmValues           = false
        serviceMonitorSelectorNilUsesHelmValues = false
        podMonitorSelectorNilUsesHelmValues     = false
      }
    }
    grafana = {
      sidecar = { dashboards = { enabled = true, label = "grafana_dashboard", searchNamespace = "ALL" } }
    }
  })]
}

data "kustomization_overlay" "platform" {
  resources = [local.manifests]

  images {
    name     = "riverlake"
    new_name = local.image_parts[0]
    new_tag  = local.image_parts[1]
  }

  config_map_generator {
    name     = "riverlake-config"
    behavior = "merge"
    literals = [
      "RIVERLAKE_LAKE_URL=${var.lake_url}",
      "RIVERLAKE_APP_ORIGINS=${var.apps_host}",
      "PREFECT_API_URL=${var.prefect_api_url}",
      "RIVERLAKE_IMAGE=${var.image}",
      "RIVERLAKE_ENVIRONMENT=${var.environment}",
    ]
  }

  patches {
    target {
      kind = "Ingress"
      name = "riverlake-apps"
    }
    patch = jsonencode([
      { op = "replace", path = "/spec/rules/0/host", value = var.apps_host },
      { op = "replace", path = "/spec/tls/0/hosts/0", value = var.apps_host },
    ])
  }

  dynamic "patches" {
    for_each = var.role_arns
    content {
      target {
        kind = "ServiceAccount"
        name = patches.key
      }
      patch = jsonencode([{
        op    = "add"
        path  = "/metadata/annotations"
        value = { "eks.amazonaws.com/role-arn" = patches.value }
      }])
    }
  }
}

# Namespace and CRD-free objects first (priority 0), then the rest, as kbst recommends.
resource "kustomization_resource" "p0" {
  for_each = data.kustomization_overlay.platform.ids_prio[0]
  manifest = data.kustomization_overlay.platform.manifests[each.value]
}

resource "kustomization_resource" "p1" {
  for_each   = data.kustomization_overlay.platform.ids_prio[1]
  manifest   = data.kustomization_overlay.platform.manifests[each.value]
  depends_on = [kustomization_resource.p0, helm_release.kube_prometheus_stack, helm_release.dask_operator]
}

resource "kustomization_resource" "p2" {
  for_each   = data.kustomization_overlay.platform.ids_prio[2]
  manifest   = data.kustomization_overlay.platform.manifests[each.value]
  depends_on = [kustomization_resource.p1]
}

resource "helm_release" "prefect_worker" {
  name       = "prefect-worker"
  repository = "https://prefecthq.github.io/prefect-helm"
  chart      = "prefect-worker"
  version    = var.prefect_worker_chart_version
  namespace  = var.namespace
  atomic     = true
  values = [yamlencode({
    worker = {
      apiConfig                 = "selfHostedServer"
      selfHostedServerApiConfig = { apiUrl = var.prefect_api_url }
      config = {
        workPool        = "riverlake-kubernetes"
        type            = "kubernetes"
        baseJobTemplate = { configuration = local.job_template }
      }
      podSecurityContext       = { runAsNonRoot = true, runAsUser = 10001, fsGroup = 10001, seccompProfile = { type = "RuntimeDefault" } }
      containerSecurityContext = { runAsNonRoot = true, runAsUser = 10001, readOnlyRootFilesystem = true, allowPrivilegeEscalation = false, capabilities = { drop = ["ALL"] } }
      resources                = { requests = { cpu = "100m", memory = "256Mi" }, limits = { cpu = "500m", memory = "512Mi" } }
    }
  })]
  depends_on = [kustomization_resource.p0]
}
