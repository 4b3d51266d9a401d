"""`riverlake deploy`: the deployment is registered with its schedule and concurrency limit,
the local worker runs it, and the Dask workers' task logs reach Prefect."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import date

import pytest

from riverlake import lake
from riverlake.demo import data as demo_data
from riverlake.ops import stack
from riverlake.settings import get_settings
from tests.conftest import riverlake_cli

pytestmark = pytest.mark.integration


def api(path: str, body: dict | None = None):
    url = f"{get_settings().prefect_api_url}{path}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    for attempt in range(5):  # Prefect answers 503 while its SQLite database is busy
        try:
            return json.loads(urllib.request.urlopen(req, timeout=15).read())
        except urllib.error.HTTPError as e:
            if e.code != 503 or attempt == 4:
                raise
            time.sleep(2)


LAKE = "s3://riverlake-test/deploy"  # its own lake: the other tests count their rows


def test_deploy_registers_and_the_worker_runs_a_flow(stack_env):
    res = riverlake_cli("deploy", env={"RIVERLAKE_LAKE_URL": LAKE})  # the worker inherits it
    assert res.returncode == 0, res.stderr[-2000:]
    assert "deployed flights/flights-local to work pool riverlake-local" in res.stderr
    assert "deployed flight_events/flight_events-local to work pool riverlake-local" in res.stderr
    (events,) = api("/deployments/filter",
                    {"deployments": {"name": {"any_": ["flight_events-local"]}}})  # fmt: skip
    assert [s["schedule"]["interval"] for s in events["schedules"]] == [60.0]
    (dep,) = api("/deployments/filter", {"deployments": {"name": {"any_": ["flights-local"]}}})
    assert dep["work_pool_name"] == "riverlake-local"
    assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 6 * * *"]
    assert dep["global_concurrency_limit"]["limit"] == 1
    # The local stack's demo upstream drops the day (a deployment run reads what arrived).
    dropped = stack.deliver_demo_data(get_settings(lake_url=LAKE), "flights",
                                      date(2013, 5, 5), date(2013, 5, 5))  # fmt: skip
    assert len(dropped) == 1
    run = api(f"/deployments/{dep['id']}/create_flow_run",
              {"parameters": {"start": "2013-05-05", "end": "2013-05-05"}})  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        state = api(f"/flow_runs/{run['id']}")["state_type"]
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(2)
    assert state == "COMPLETED"
    logs = api("/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200})
    # the library's own log lines (riverlake.*) are in the run's logs: the curated commit
    mine = [log["message"] for log in logs if log["name"] == "riverlake.lake.write"]
    assert any(m.startswith("table flights created at version 0") for m in mine), mine
    raw = demo_data.load("flights")
    want = int(((raw["month"] == 5) & (raw["day"] == 5)).sum())
    settings = get_settings(lake_url=LAKE)
    got = lake.read_pandas("flights", filters=[("month", "=", 5)], settings=settings)
    assert int((got["day"] == 5).sum()) == want
    # the run's summary is persisted on the lake
    fs = lake.filesystem(settings)
    assert fs.find(lake.strip_scheme(lake.lake_root(settings)) + "/_prefect/results")
    status = riverlake_cli("status")
    assert (
        "worker" in status.stdout and "running" in status.stdout.split("worker")[1].split("\n")[0]
    )
