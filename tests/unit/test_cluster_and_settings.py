"""Cluster profiles, the DaskCluster spec as data (checked against the operator's CRD), settings."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

import cluster
from riverlake.errors import RiverlakeError
from riverlake.settings import get_settings

pytestmark = pytest.mark.unit


def crd_schema(kind: str) -> dict:
    import dask_kubernetes

    crd = Path(dask_kubernetes.__file__).parent / (
        f"operator/deployment/helm/dask-kubernetes-operator/crds/{kind}.yaml"
    )
    doc = yaml.safe_load(crd.read_text())
    (version,) = [v for v in doc["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def test_dask_cluster_spec_is_valid_and_sized_from_settings(monkeypatch):
    monkeypatch.setenv("RIVERLAKE_WORKERS", "5")
    monkeypatch.setenv("RIVERLAKE_WORKER_MEMORY", "3GiB")
    monkeypatch.setenv("RIVERLAKE_WORKER_CPU", "2")
    monkeypatch.setenv("RIVERLAKE_IMAGE", "registry.example/riverlake:9")
    monkeypatch.setenv("RIVERLAKE_IDLE_TIMEOUT", "120")
    monkeypatch.setenv("RIVERLAKE_S3_SECRET_KEY", "do-not-leak")
    spec = cluster.make_dask_cluster_spec(get_settings(), name="rl-test")
    jsonschema.validate(spec, crd_schema("daskcluster"))
    assert spec["metadata"]["name"] == "rl-test"
    assert spec["spec"]["idleTimeout"] == 120
    worker = spec["spec"]["worker"]
    assert worker["replicas"] == 5
    (c,) = worker["spec"]["containers"]
    assert c["image"] == "registry.example/riverlake:9"
    assert c["resources"]["limits"] == {"cpu": "2", "memory": "3072Mi"}
    env = {e["name"]: e for e in c["env"]}
    assert env["PREFECT_API_URL"]["value"].endswith("/api")
    assert "valueFrom" in env["RIVERLAKE_S3_SECRET_KEY"]  # from a Secret, never inline
    assert "do-not-leak" not in yaml.safe_dump(spec)
    assert spec["spec"]["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == "rl-test"


@pytest.mark.parametrize("profile", ["local", "kubernetes", "tcp://10.1.2.3:8786"])
def test_valid_profiles(profile):
    assert cluster.validate_profile(profile) == profile


def test_unknown_profile_is_one_clear_line():
    with pytest.raises(RiverlakeError, match=r"unknown cluster 'yarn': use local, kubernetes"):
        cluster.validate_profile("yarn")


def test_local_cluster_workers_get_prefect_and_storage_env(monkeypatch):
    from distributed import Client

    monkeypatch.setenv("RIVERLAKE_PREFECT_API_URL", "http://127.0.0.1:1/api")
    monkeypatch.setenv("RIVERLAKE_WORKERS", "1")
    monkeypatch.setenv("RIVERLAKE_LOCAL_PROCESSES", "true")
    monkeypatch.setenv("RIVERLAKE_DASHBOARD_PORT", "0")
    monkeypatch.setenv("RIVERLAKE_LAKE_URL", "s3://b/p")
    with cluster.get_cluster("local") as c, Client(c) as client:
        env = client.run(lambda: {k: __import__("os").environ.get(k) for k in
                                  ("PREFECT_API_URL", "RIVERLAKE_LAKE_URL")})  # fmt: skip
        (worker_env,) = env.values()
    assert worker_env == {
        "PREFECT_API_URL": "http://127.0.0.1:1/api",
        "RIVERLAKE_LAKE_URL": "s3://b/p",
    }


def test_settings_defaults_and_credentials_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RIVERLAKE_HOME", str(tmp_path))
    monkeypatch.setenv("RIVERLAKE_S3_PORT", "9001")
    (tmp_path / "credentials.json").write_text('{"access_key": "a", "secret_key": "s"}')
    s = get_settings()
    assert s.s3_endpoint == "http://127.0.0.1:9001"
    assert s.prefect_api_url == "http://127.0.0.1:4200/api"
    assert s.s3_access_key.get_secret_value() == "a"
    assert "s" not in repr(s.s3_secret_key)
