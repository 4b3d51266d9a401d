"""The kustomize overlays, the Prefect job template and the Dockerfile, checked as data,
against the Kubernetes schemas (kubernetes-validate), and by checkov."""

from __future__ import annotations

import json
import subprocess

import jsonschema
import pytest
import yaml

from riverlake import cluster
from riverlake.settings import get_settings
from tests.conftest import ROOT
from tests.deploy.conftest import KUSTOMIZE, checkov, render
from tests.unit.test_cluster_and_settings import crd_schema

pytestmark = pytest.mark.deploy

K8S_VERSION = "1.31.0"
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
JOB_TEMPLATE = ROOT / "deploy" / "prefect" / "kubernetes-job-template.json"


def pod_specs(objs: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out.append((f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]))
    return out


def test_every_object_is_valid_kubernetes(overlay):
    import kubernetes_validate

    _name, objs = overlay
    kinds = {o["kind"] for o in objs}
    assert {"Namespace", "Deployment", "Service", "Ingress", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "NetworkPolicy", "Role", "RoleBinding", "ServiceAccount",
            "ConfigMap"} | MONITORING_KINDS <= kinds  # fmt: skip
    for o in objs:
        if o["kind"] in MONITORING_KINDS:  # CRDs of kube-prometheus-stack: checked below
            assert o["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == "riverlake", o["metadata"]["name"]


def test_namespace_enforces_the_restricted_pod_security_standard(overlay):
    (ns,) = [o for o in overlay[1] if o["kind"] == "Namespace"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def _restricted(where: str, spec: dict) -> None:
    sc = spec["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] >= 10000, where
    assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
    for c in spec["containers"]:
        csc = c["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False, (where, c["name"])
        assert csc["capabilities"]["drop"] == ["ALL"], (where, c["name"])
        assert csc["readOnlyRootFilesystem"] is True, (where, c["name"])
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), (where, c["name"])
        assert {"cpu", "memory"} <= set(c["resources"]["limits"]), (where, c["name"])


def test_every_pod_is_restricted_limited_and_probed(overlay):
    specs = pod_specs(overlay[1])
    assert {w for w, _ in specs} == {"Deployment/riverlake-apps", "Deployment/prefect-worker"}
    for where, spec in specs:
        _restricted(where, spec)
        for c in spec["containers"]:
            assert "livenessProbe" in c and "readinessProbe" in c, (where, c["name"])


def test_only_the_apps_are_exposed_and_never_the_dask_scheduler(overlay):
    objs = overlay[1]
    assert all(o["spec"].get("type", "ClusterIP") == "ClusterIP" for o in objs
               if o["kind"] == "Service")  # fmt: skip
    (ing,) = [o for o in objs if o["kind"] == "Ingress"]
    backends = {p["backend"]["service"]["name"] for r in ing["spec"]["rules"]
                for p in r["http"]["paths"]}  # fmt: skip
    assert backends == {"riverlake-apps"}
    assert not any("8786" in json.dumps(o) or "8787" in json.dumps(o) for o in objs
                   if o["kind"] in ("Ingress", "Service"))  # fmt: skip


def test_network_policies_deny_by_default_and_open_only_named_flows(overlay):
    pols = {o["metadata"]["name"]: o["spec"] for o in overlay[1] if o["kind"] == "NetworkPolicy"}
    deny = pols.pop("default-deny-all")
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for name, spec in pols.items():
        rules = spec.get("ingress", []) + spec.get("egress", [])
        assert rules, name
        for r in spec.get("ingress", []):
            assert r.get("from"), f"{name}: an ingress rule without a source opens to all"
    # Dask pods take connections from other namespaces only from Prometheus and (the
    # scheduler's dashboard port) the dask-kubernetes operator; who exactly may reach them
    # is evaluated in test_network_policies.py.
    for name, others in (("dask-scheduler-ingress", {"monitoring", "dask-operator"}),
                         ("dask-worker-ingress", {"monitoring"})):  # fmt: skip
        peers = [p for r in pols[name]["ingress"] for p in r.get("from", [])]
        assert {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                for p in peers if "namespaceSelector" in p} == others  # fmt: skip


def test_rbac_is_namespaced_and_grants_no_wildcards_or_secrets(overlay):
    objs = overlay[1]
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for role in (o for o in objs if o["kind"] == "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], role["metadata"]
            assert "secrets" not in rule["resources"], role["metadata"]


def test_overlays_differ_where_they_should():
    dev = {(o["kind"], o["metadata"]["name"]): o for o in render(KUSTOMIZE / "overlays/dev")}
    prod = {(o["kind"], o["metadata"]["name"]): o for o in render(KUSTOMIZE / "overlays/prod")}
    hpa = ("HorizontalPodAutoscaler", "riverlake-apps")
    assert (dev[hpa]["spec"]["minReplicas"], prod[hpa]["spec"]["minReplicas"]) == (1, 3)
    cfg = ("ConfigMap", "riverlake-config")
    assert dev[cfg]["data"]["RIVERLAKE_LAKE_URL"] == "s3://riverlake-dev-lake/lake"
    assert prod[cfg]["data"]["RIVERLAKE_LAKE_URL"] == "s3://riverlake-prod-lake/lake"
    image = prod[("Deployment", "riverlake-apps")]["spec"]["template"]["spec"]["containers"][0]
    assert image["image"] == "ghcr.io/riverlake/riverlake:0.1.0"


def test_monitoring_objects_select_what_exists(base):
    objs = {(o["kind"], o["metadata"]["name"]): o for o in base}
    sm = objs[("ServiceMonitor", "riverlake-apps")]["spec"]
    svc = objs[("Service", "riverlake-apps")]
    assert sm["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    pm = objs[("PodMonitor", "riverlake-dask")]["spec"]
    spec = cluster.make_dask_cluster_spec(cluster.cluster_options(get_settings()), name="x")
    ports = {p["name"] for r in ("worker", "scheduler")
             for p in spec["spec"][r]["spec"]["containers"][0]["ports"]}  # fmt: skip
    assert pm["podMetricsEndpoints"][0]["port"] in ports
    dashboard = objs[("ConfigMap", "riverlake-grafana-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["riverlake-dashboard.json"])["panels"]


def test_the_flow_run_job_template_owns_its_dask_cluster_through_the_downward_api():
    tpl = json.loads(JOB_TEMPLATE.read_text())
    pod = tpl["job_configuration"]["job_manifest"]["spec"]["template"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "flow-run"
    (c,) = pod["spec"]["containers"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
           for e in c["env"] if "fieldRef" in e.get("valueFrom", {})}  # fmt: skip
    assert env == {"RIVERLAKE_POD_NAME": "metadata.name", "RIVERLAKE_POD_UID": "metadata.uid",
                   "RIVERLAKE_NAMESPACE": "metadata.namespace"}  # fmt: skip
    # a SQL URL with a password reaches the run from the Secret the Dask pods use too
    (sql,) = [e for e in c["env"] if e["name"] == cluster.SQL_URL_ENV]
    assert sql["valueFrom"]["secretKeyRef"] == {
        "name": cluster.SQL_SECRET, "key": cluster.SQL_URL_ENV, "optional": True
    }  # fmt: skip
    assert tpl["variables"]["properties"]["service_account_name"]["default"] == "riverlake-runner"
    # the run's Dask cluster uses the flow-run pod's own image
    assert {"name": "RIVERLAKE_IMAGE", "value": "{{ image }}"} in c["env"]
    assert c["image"] == "{{ image }}"
    _restricted("job template", {**pod["spec"], "containers": [
        {**c, "resources": {"requests": {"cpu": 1, "memory": 1}, "limits": {"cpu": 1, "memory": 1}}}
    ]})  # fmt: skip
    # The env the pod gets is what cluster.owner_reference reads:
    settings = get_settings(pod_name="flights-x", pod_uid="u-1")
    spec = cluster.make_dask_cluster_spec(cluster.cluster_options(settings), name="x")
    jsonschema.validate(spec, crd_schema("daskcluster"))
    assert spec["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_dask_pods_run_restricted_in_the_namespace():
    spec = cluster.make_dask_cluster_spec(cluster.cluster_options(get_settings()), name="x")
    for role in ("worker", "scheduler"):
        _restricted(role, spec["spec"][role]["spec"])
    worker = spec["spec"]["worker"]["spec"]
    assert worker["tolerations"] == [{"key": "riverlake.io/dask", "operator": "Equal",
                                      "value": "true", "effect": "NoSchedule"}]  # fmt: skip
    assert worker["serviceAccountName"] == "riverlake-runner"


def test_checkov_passes_the_rendered_manifests_and_the_dockerfile(tmp_path):
    for name in ("dev", "prod"):
        docs = render(KUSTOMIZE / "overlays" / name)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(docs))
    (tmp_path / "Dockerfile").write_text((ROOT / "Dockerfile").read_text())
    res = subprocess.run(
        [checkov(), "-d", str(tmp_path), "--framework", "kubernetes", "dockerfile",
         "--compact", "--skip-download", "--output", "json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    reports = json.loads(res.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [(r["check_type"], c["check_id"], c["resource"]) for r in reports
              for c in r["results"]["failed_checks"]]  # fmt: skip
    assert failed == []
    assert {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}
    assert all(r["summary"]["passed"] > 10 for r in reports)


def test_dockerfile_runs_as_a_non_root_user_from_one_image():
    text = (ROOT / "Dockerfile").read_text()
    assert "USER 10001:10001" in text
    froms = [ln.split()[1] for ln in text.splitlines() if ln.startswith("FROM ")]
    assert froms == ["${BASE}", "deps", "${BASE}"]  # one base, a build argument
    (default,) = [ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith("ARG BASE=")]
    assert ":" in default and "latest" not in default


def test_the_apps_container_has_all_that_riverlake_serve_needs(overlay, monkeypatch):
    """The apps Deployment as rendered: its command line is one `riverlake serve` accepts,
    and its environment (the ConfigMap, the values, Secrets as placeholders) is enough for
    the OAuth sign-in it turns on: `panel_command` refuses anything less (the pods would
    crash-loop)."""
    import typer

    from riverlake.ops.cli import app, panel_command

    name, objs = overlay
    config = next(o for o in objs if o["kind"] == "ConfigMap"
                  and o["metadata"]["name"] == "riverlake-config")["data"]  # fmt: skip
    dep = next(o for o in objs if o["kind"] == "Deployment"
               and o["metadata"]["name"] == "riverlake-apps")  # fmt: skip
    (c,) = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "apps"]
    assert c["args"][:2] == ["riverlake", "serve"]
    serve = typer.main.get_command(app).commands["serve"]
    known = {opt for p in serve.params for opt in p.opts}
    assert [a for a in c["args"][2:] if a.startswith("--") and a not in known] == []
    env = dict(config)
    for e in c["env"]:
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]  # secrets as references only
            env[e["name"]] = f"{ref['name']}/{ref['key']}"
        else:
            env[e["name"]] = e["value"]
    for k in [k for k in __import__("os").environ if k.startswith("RIVERLAKE_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = get_settings()
    assert settings.app_auth == "oauth", name
    cmd, panel_env = panel_command(settings, 5006)
    assert panel_env["PANEL_OAUTH_KEY"] == "riverlake-apps-auth/oauth-key"
    params = json.loads(cmd[cmd.index("--oauth-extra-params") + 1])
    assert {"AUTHORIZE_URL", "TOKEN_URL", "USER_URL"} <= set(params), name
    assert cmd[cmd.index("--oauth-redirect-uri") + 1].startswith("https://"), name


def test_prefect_kubernetes_accepts_the_job_template_and_renders_the_flow_run_pod():
    """The worker's own job configuration class validates the template (it refused it, for
    lack of parallelism/completions, until the containers tier ran a flow-run pod) and
    renders a pod of the given image with the Secrets' references. The values are applied
    as the worker applies them (prefect.utilities.templating), without a server."""
    from prefect.utilities.templating import apply_values
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration as Config

    tpl = json.loads(JOB_TEMPLATE.read_text())
    values = Config._get_base_config_defaults(tpl["variables"]["properties"])
    values |= {"image": "registry.example/riverlake:1", "env": {"RIVERLAKE_CLUSTER": "kubernetes"}}
    config = Config(**apply_values(tpl["job_configuration"], values))
    job = config.job_manifest
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "registry.example/riverlake:1"
    assert (
        job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "flow-run"
    )
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}  # fmt: skip
    assert refs == {cluster.SQL_URL_ENV: cluster.SQL_SECRET,
                    "RIVERLAKE_S3_ACCESS_KEY": cluster.S3_SECRET,
                    "RIVERLAKE_S3_SECRET_KEY": cluster.S3_SECRET}  # fmt: skip


def test_the_dask_workers_of_a_run_report_to_the_clusters_prefect(overlay, monkeypatch):
    """A run's settings come from the ConfigMap: its Dask workers get the cluster's Prefect
    API, not the local default (they got 127.0.0.1:4200 until the ConfigMap set
    RIVERLAKE_PREFECT_API_URL; found by the containers tier)."""
    _, objs = overlay
    (cm,) = [
        o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "riverlake-config"
    ]
    for k, v in cm["data"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RIVERLAKE_PREFECT_PORT", raising=False)
    env = get_settings().worker_env()
    assert env["PREFECT_API_URL"] == cm["data"]["PREFECT_API_URL"]
    assert "127.0.0.1" not in env["PREFECT_API_URL"]


def test_the_metrics_exporter_is_probed_on_its_health_endpoint(overlay):
    """Its readiness probe (1 s timeout) must not wait for a scrape of the whole lake: an
    unready exporter takes the apps container's pod out of the Service with it."""
    _name, objs = overlay
    found = 0
    for where, spec in pod_specs(objs):
        for c in spec["containers"]:
            if c.get("args", [])[:2] == ["riverlake", "metrics"]:
                found += 1
                for probe in ("readinessProbe", "livenessProbe"):
                    assert c[probe]["httpGet"]["path"] == "/healthz", (where, probe, c[probe])
    assert found == 1
