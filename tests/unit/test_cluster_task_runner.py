"""The flows' task runner starts the Dask cluster, and imports Dask's distributed, only
when a run submits its first task (flows.runner.ClusterTaskRunner): a run with no data
work costs neither. Real Prefect flows and a real LocalCluster, no mocks."""

from __future__ import annotations

import subprocess
import sys

import cloudpickle
import pytest
from prefect import flow, task

from riverlake.cluster import cluster_options
from riverlake.flows.runner import ClusterTaskRunner, pipeline_task_runner
from riverlake.settings import get_settings

pytestmark = pytest.mark.unit


def test_a_flow_and_its_runner_are_made_without_importing_distributed():
    code = (
        "import sys\n"
        "from riverlake.flows import pipeline\n"
        "f = pipeline.declared_flow('flights')\n"
        "print(type(f.task_runner).__name__, 'distributed' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ClusterTaskRunner", "False"], out.stderr[-2000:]


def test_the_runner_pickles_duplicates_and_compares_by_its_options(settings):
    runner = pipeline_task_runner("flights", settings, profile="local")
    again = cloudpickle.loads(cloudpickle.dumps(runner))  # a flow pickles its task runner
    assert again == runner == runner.duplicate()
    assert runner.options == cluster_options(settings, profile="local", worker_profile="standard")


SEEN: dict[str, object] = {}


@task
def where() -> str:
    from distributed import get_worker

    return get_worker().address


def quiet() -> None:
    from prefect.context import FlowRunContext

    SEEN["quiet"] = FlowRunContext.get().task_runner._dask  # nothing started


def busy() -> list[str]:
    from prefect.context import FlowRunContext

    from riverlake.flows.pipeline import get_dask_client

    runner = FlowRunContext.get().task_runner
    first = where.submit().result()
    SEEN["dask"] = runner._dask
    with get_dask_client() as client:  # the flow's own code finds the same cluster
        SEEN["workers"] = sorted(client.scheduler_info()["workers"])
    return [first, where.submit().result()]


def test_no_cluster_until_the_first_task_then_one_for_the_run(settings, monkeypatch):
    monkeypatch.setenv("RIVERLAKE_WORKERS", "1")
    options = cluster_options(get_settings(), profile="local", worker_profile="standard")
    flow(task_runner=ClusterTaskRunner(options))(quiet)()
    assert SEEN["quiet"] is None
    addresses = flow(task_runner=ClusterTaskRunner(options))(busy)()
    assert SEEN["dask"] is not None and type(SEEN["dask"]).__name__ == "DaskTaskRunner"
    assert addresses[0] == addresses[1] and SEEN["workers"] == [addresses[0]]
