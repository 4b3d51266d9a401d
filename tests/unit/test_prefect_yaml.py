"""prefect.yaml as data: both deployments of every pipeline, with schedule and limits."""

from __future__ import annotations

import pytest
import yaml

from riverlake.flows import PIPELINES
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def deployments() -> dict[str, dict]:
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return {d["name"]: d for d in doc["deployments"]}


def test_every_pipeline_has_a_local_and_a_kubernetes_deployment(deployments):
    for pipeline, target in PIPELINES.items():
        module, attr = target.split(":")
        entry = f"{module.removeprefix('riverlake.').replace('.', '/')}.py:{attr}"
        local, k8s = deployments[f"{pipeline}-local"], deployments[f"{pipeline}-kubernetes"]
        assert local["entrypoint"] == k8s["entrypoint"] == entry
        assert local["work_pool"]["name"] == "riverlake-local"
        assert k8s["work_pool"]["name"] == "riverlake-kubernetes"
        assert k8s["work_pool"]["job_variables"]["env"]["RIVERLAKE_CLUSTER"] == "kubernetes"
        for d in (local, k8s):
            assert d["concurrency_limit"]["limit"] == 1
            assert d["schedules"] == local["schedules"] and d["schedules"][0]["active"]
    # The batch pipeline runs daily and queues; the stream drains every minute and a run
    # that finds the previous one still draining is dropped, not queued.
    assert deployments["flights-local"]["schedules"][0]["cron"] == "0 6 * * *"
    assert deployments["flights-local"]["concurrency_limit"]["collision_strategy"] == "ENQUEUE"
    assert deployments["flight_events-local"]["schedules"][0]["interval"] == 60
    events_limit = deployments["flight_events-local"]["concurrency_limit"]
    assert events_limit["collision_strategy"] == "CANCEL_NEW"


def test_entrypoints_resolve_to_flows(deployments):
    import importlib

    for d in deployments.values():
        path, attr = d["entrypoint"].split(":")
        module = "riverlake." + path.removesuffix(".py").replace("/", ".")
        flow = getattr(importlib.import_module(module), attr)
        assert flow.retries == 1 and flow.persist_result is True
