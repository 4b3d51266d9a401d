"""Secrets reach pods as references to Kubernetes Secrets only, never as literals.

Checked over everything that puts an environment into a pod: every object the dev and
prod overlays render (env, envFrom, ConfigMaps, Secrets), the ConfigMap literals the
platform's Terraform adds, the Prefect job template of flow-run pods and the env of the
deployments it runs, and the DaskCluster a run creates (cluster.make_dask_cluster_spec).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import hcl2
import pytest
import yaml

from riverlake import cluster
from riverlake.settings import get_settings
from tests.conftest import ROOT
from tests.deploy.test_manifests import JOB_TEMPLATE

pytestmark = pytest.mark.deploy

#: A variable whose name holds one of these words holds a secret.
SECRET_WORDS = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|KEY|CREDENTIAL", re.IGNORECASE)
#: Names with such a word that hold no secret, each with its reason (none of ours needs
#: one today).
NOT_SECRET: dict[str, str] = {
    # Set by EKS's pod identity webhook (IRSA) should a manifest ever spell it: the path
    # of the projected service account token, a file name, not the token.
    "AWS_WEB_IDENTITY_TOKEN_FILE": "a path",
}

#: Credentials written the way every URL setting would carry them.
CREDENTIALED = {
    "s3_access_key": "AKIAEXAMPLEEXAMPLE",
    "s3_secret_key": "s3-secret-value",
    "sql_url": "postgresql://riverlake:sql-password@db.example.com:5432/dims",
}
CREDENTIALED_URLS = {
    "nats_url": "nats://riverlake:nats-password@nats.example.com:4222",
    "api_url": "https://api.example.com/v1?access_token=api-token",
}


def secret_name(name: str) -> bool:
    return bool(SECRET_WORDS.search(name)) and name not in NOT_SECRET


def literal_leaks(where: str, env: list[dict]) -> list[str]:
    """The literal values among ``env`` that are, or may carry, a secret."""
    out = []
    for e in env:
        if "value" not in e:
            continue
        assert "valueFrom" not in e, (where, e["name"])
        value = str(e["value"])
        if secret_name(e["name"]):
            out.append(f"{where}: {e['name']} is a literal")
        elif "://" in value and cluster.has_password(value):
            out.append(f"{where}: {e['name']} holds a URL with credentials")
    return out


def containers(pod_spec: dict) -> list[dict]:
    return [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]


def pod_spec_of(obj: dict) -> dict | None:
    spec = obj.get("spec", {})
    if obj["kind"] == "Pod":
        return spec
    if obj["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    return spec.get("template", {}).get("spec")


def manifest_leaks(objs: list[dict]) -> list[str]:
    out = []
    for o in objs:
        where = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] == "Secret" and (o.get("data") or o.get("stringData")):
            out.append(f"{where}: a Secret with its data in the manifests")
        if o["kind"] == "ConfigMap":
            keys = [*o.get("data", {}), *o.get("binaryData", {})]
            out += [f"{where}: {k} is a secret's name" for k in keys if secret_name(k)]
            out += [f"{where}: {k} holds a URL with credentials"
                    for k, v in o.get("data", {}).items()
                    if "://" in v and "\n" not in v and cluster.has_password(v)]  # fmt: skip
        spec = pod_spec_of(o)
        for c in containers(spec) if spec else []:
            out += literal_leaks(f"{where}/{c['name']}", c.get("env", []))
            for src in c.get("envFrom", []):
                assert set(src) <= {"configMapRef", "secretRef", "prefix"}, (where, src)
    return out


def test_the_test_finds_what_it_looks_for():
    env = [{"name": "RIVERLAKE_S3_SECRET_KEY", "value": "x"},
           {"name": "PANEL_OAUTH_KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
           {"name": "DB_Password", "value": "x"},
           {"name": "RIVERLAKE_NATS_URL", "value": "nats://u:p@h:4222"},
           {"name": "RIVERLAKE_LAKE_URL", "value": "s3://bucket/lake"},
           {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/token"}]  # fmt: skip
    assert literal_leaks("p", env) == [
        "p: RIVERLAKE_S3_SECRET_KEY is a literal",
        "p: DB_Password is a literal",
        "p: RIVERLAKE_NATS_URL holds a URL with credentials",
    ]
    objs = [{"kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}},
            {"kind": "Secret", "metadata": {"name": "empty"}, "type": "Opaque"},
            {"kind": "ConfigMap", "metadata": {"name": "c"},
             "data": {"API_TOKEN": "x", "URL": "https://u:p@h/"}}]  # fmt: skip
    assert manifest_leaks(objs) == [
        "Secret/s: a Secret with its data in the manifests",
        "ConfigMap/c: API_TOKEN is a secret's name",
        "ConfigMap/c: URL holds a URL with credentials",
    ]


def test_the_overlays_hold_secrets_as_references_only(overlay):
    name, objs = overlay
    assert manifest_leaks(objs) == [], name
    # the apps do get their secrets: as references to the Secret nobody commits
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
            for o in objs if o["kind"] == "Deployment"
            for c in containers(o["spec"]["template"]["spec"]) for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}  # fmt: skip
    auth = "riverlake-apps-auth"
    assert refs["RIVERLAKE_OAUTH_SECRET"] == refs["RIVERLAKE_COOKIE_SECRET"] == auth


def test_the_platform_adds_no_secret_to_the_config_map():
    (overlay,) = hcl2.load((ROOT / "terraform/modules/platform/main.tf").open())["data"][0][
        '"kustomization_overlay"'
    ].values()
    literals = [lit for g in overlay["config_map_generator"] for lit in g["literals"]]
    names = [lit.strip('"').split("=", 1)[0] for lit in literals]
    assert "RIVERLAKE_LAKE_URL" in names
    assert [n for n in names if secret_name(n)] == []


def test_flow_run_pods_hold_secrets_as_references_only():
    tpl = json.loads(JOB_TEMPLATE.read_text())
    pod = tpl["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    job = {"kind": "Job", "metadata": {"name": "flow-run"}, "spec": {"template": {"spec": pod}}}
    assert manifest_leaks([job]) == []
    # Prefect adds each deployment's job_variables env as literals: none may be a secret
    from riverlake.flows import deployments

    targets = yaml.safe_load((ROOT / "prefect.yaml").read_text())["targets"]
    for d in deployments(targets):
        env = d["work_pool"].get("job_variables", {}).get("env", {})
        assert literal_leaks(d["name"], [{"name": k, "value": v} for k, v in env.items()]) == []


def dask_env(**settings) -> list[tuple[str, list[dict]]]:
    options = cluster.cluster_options(get_settings(**settings))
    spec = cluster.make_dask_cluster_spec(options, name="x")
    return [(f"DaskCluster {role}/{c['name']}", c.get("env", []))
            for role in ("scheduler", "worker")
            for c in containers(spec["spec"][role]["spec"])]  # fmt: skip


def test_the_dask_cluster_of_a_run_holds_secrets_as_references_only():
    for where, env in dask_env(**CREDENTIALED):
        assert literal_leaks(where, env) == []
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in env
                if "secretKeyRef" in e.get("valueFrom", {})}  # fmt: skip
        assert refs == {"RIVERLAKE_S3_ACCESS_KEY": cluster.S3_SECRET,
                        "RIVERLAKE_S3_SECRET_KEY": cluster.S3_SECRET,
                        "RIVERLAKE_SQL_URL": cluster.SQL_SECRET}, where  # fmt: skip
        assert "sql-password" not in json.dumps(env) and "s3-secret" not in json.dumps(env)


def test_the_dask_cluster_of_a_run_holds_no_url_with_credentials():
    leaks = [x for where, env in dask_env(**CREDENTIALED_URLS) for x in literal_leaks(where, env)]
    assert leaks == []
    for _, env in dask_env(**CREDENTIALED_URLS):
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
        for var in ("RIVERLAKE_NATS_URL", "RIVERLAKE_API_URL"):
            assert refs[var] == {"name": cluster.SOURCES_SECRET, "key": var}


def test_no_secret_is_committed_as_a_kustomize_secret_generator():
    for k in Path(ROOT / "deploy" / "kubernetes").rglob("kustomization.yaml"):
        doc = yaml.safe_load(k.read_text())
        assert not doc.get("secretGenerator"), k


def declared_token_envs() -> set[str]:
    """The variables the declared HTTP sources read their bearer token from."""
    from riverlake import pipelines

    settings = get_settings()
    return {s.token_env for name in pipelines.pipelines(settings)
            for s in pipelines.pipeline_sources(name, settings)
            if getattr(s, "token_env", None)}  # fmt: skip


def sources_secret_from(container: dict) -> bool:
    return {"secretRef": {"name": cluster.SOURCES_SECRET, "optional": True}} in container.get(
        "envFrom", [])  # fmt: skip


def test_a_source_token_reaches_flow_run_pods_and_workers_from_the_sources_secret(monkeypatch):
    """An API token (a source's token_env, RIVERLAKE_API_TOKEN for the weather API) lives
    in Secret riverlake-sources under its variable's name: flow-run pods (which check
    the sources) and Dask workers (which ingest them) get every key of that Secret, by
    reference; the token is never copied into the DaskCluster, even when the run has it."""
    assert "RIVERLAKE_API_TOKEN" in declared_token_envs()
    tpl = json.loads(JOB_TEMPLATE.read_text())
    (run,) = tpl["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"]
    assert sources_secret_from(run)
    # after the ConfigMap: a key of the Secret wins over the same key of the ConfigMap
    assert [next(iter(s)) for s in run["envFrom"]] == ["configMapRef", "secretRef"]
    monkeypatch.setenv("RIVERLAKE_API_TOKEN", "api-token-value")
    spec = cluster.make_dask_cluster_spec(cluster.cluster_options(get_settings()), name="x")
    (worker,) = containers(spec["spec"]["worker"]["spec"])
    assert sources_secret_from(worker)
    assert "api-token-value" not in json.dumps(spec)
