"""Deployments as data: one per declared pipeline and target, rendered from the
declarations (schedule, concurrency, parameters) and prefect.yaml (work pools)."""

from __future__ import annotations

import pytest
import yaml

from riverlake.flows import deployments, entrypoint
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict]:
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return {d["name"]: d for d in deployments(doc["targets"])}


def test_every_pipeline_has_a_local_and_a_kubernetes_deployment(rendered):
    from riverlake import pipelines

    for pipeline in pipelines.pipelines():
        local, k8s = rendered[f"{pipeline}-local"], rendered[f"{pipeline}-kubernetes"]
        assert local["entrypoint"] == k8s["entrypoint"] == entrypoint(pipeline)
        assert local["work_pool"]["name"] == "riverlake-local"
        assert k8s["work_pool"]["name"] == "riverlake-kubernetes"
        assert k8s["work_pool"]["job_variables"]["env"]["RIVERLAKE_CLUSTER"] == "kubernetes"
        for d in (local, k8s):
            assert d["concurrency_limit"]["limit"] == 1
            assert d["schedules"] == local["schedules"] and d["schedules"][0]["active"]
    # The batch pipeline runs daily and queues; the stream drains every minute and a run
    # that finds the previous one still draining is dropped, not queued.
    assert rendered["flights-local"]["entrypoint"] == "riverlake.flows.pipeline:flights"
    assert rendered["flights-local"]["schedules"][0]["cron"] == "0 6 * * *"
    assert rendered["flights-local"]["concurrency_limit"]["collision_strategy"] == "ENQUEUE"
    assert (
        rendered["flight_events-local"]["entrypoint"] == "riverlake.flows.events:flight_events_flow"
    )
    assert rendered["flight_events-local"]["schedules"][0]["interval"] == 60
    assert rendered["flight_events-local"]["parameters"] == {"max_seconds": 55, "idle_s": 5}
    events_limit = rendered["flight_events-local"]["concurrency_limit"]
    assert events_limit["collision_strategy"] == "CANCEL_NEW"


def test_entrypoints_resolve_to_flows_named_after_their_pipeline(rendered):
    from prefect.flows import load_flow_from_entrypoint

    for d in rendered.values():
        flow = load_flow_from_entrypoint(d["entrypoint"], use_placeholder_flow=False)
        assert flow.name == d["name"].rsplit("-", 1)[0]
        # Dask workers in other processes unpickle the flow's tasks by module name: a file
        # entrypoint made that "pipeline", which no worker can import (the containers tier
        # found it: "No module named 'pipeline'").
        assert flow.fn.__module__.startswith("riverlake.flows."), flow.fn.__module__
        assert flow.retries == 1 and flow.persist_result is True
