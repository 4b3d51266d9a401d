"""The production path, run: the image's containers on one podman network, as the
manifests, the dask-kubernetes operator and Prefect's Kubernetes worker define them.

What ran here and what is only checked as data is listed in the README ("What ran in
containers"); the translations podman needs are in topology.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest

from tests.containers import topology as tp
from tests.containers.conftest import NAMESPACE, environ

# The first test pays for the image build (about 8 minutes on a new machine, seconds
# once built) and the topology's start.
pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]

FIRST = ("2013-03-04", "2013-03-06")  # three days in one month
SECOND = ("2013-03-07", "2013-03-12")  # six more: long enough to kill a worker mid-run


def source_rows(start: str, end: str) -> pd.DataFrame:
    from riverlake.demo import data as demo_data

    raw = demo_data.load("flights")
    d = pd.to_datetime(raw[["year", "month", "day"]].astype("int64"))
    return raw[(d >= start) & (d <= end)]


def _deliver(t, start: str, end: str) -> None:
    from datetime import date

    from riverlake.demo.drops import deliver_drops
    from riverlake.settings import get_settings

    with environ(t.host_env):
        deliver_drops(get_settings(), date.fromisoformat(start), date.fromisoformat(end))


async def _flow_run_pod(t, start: str, end: str) -> tuple[str, dict]:
    """Create a run of the flights-kubernetes deployment and render its pod as Prefect's
    Kubernetes worker would (its own job configuration class, the pool's job template)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Pending
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    async with get_client() as client:
        dep = await client.read_deployment_by_name("flights/flights-kubernetes")
        # The run joins the scheduler played from the operator's objects (an address
        # profile) instead of asking an API server for a KubeCluster of its own.
        # Created Pending: claimed, as a worker claims a run before it creates the Job (the
        # Prefect worker Deployment polls this pool too, and cannot create Jobs here).
        run = await client.create_flow_run_from_deployment(
            dep.id,
            parameters={"start": start, "end": end},
            job_variables={"env": {"RIVERLAKE_CLUSTER": t.scheduler_address}},
            state=Pending(),
        )
        pool = await client.read_work_pool("riverlake-kubernetes")
        config = await KubernetesWorkerJobConfiguration.resolve_for_flow_run(
            run, client=client, work_pool=pool, worker_name="containers-tier"
        )
    job = config.job_manifest
    template = job["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{job['metadata']['generateName']}{str(run.id)[:5]}",
            "labels": template["metadata"]["labels"],
        },
        "spec": template["spec"],
    }
    return str(run.id), pod


def run_flights(t, start: str, end: str, during=None) -> dict:
    """Deliver the days' drops, play the flow-run pod, wait for it to finish; ``during``
    (called with the pod's container name while it runs) may act on the cluster."""
    _deliver(t, start, end)
    with environ(t.host_env):
        run_id, pod = asyncio.run(_flow_run_pod(t, start, end))
    pod = tp.for_podman(pod, image=t.image, namespace=NAMESPACE,
                        configmaps={"riverlake-config": t.config})  # fmt: skip
    name = tp.container_name(pod, "prefect-job")
    t0 = time.monotonic()
    t.podman.play([pod], configmaps=(t.configmap_file,))
    try:
        acted = during(name) if during else None
        tp.wait_for(lambda: t.podman.inspect(name)["State"]["Status"] == "exited", 600,
                    "the flow-run pod to finish", every=1)  # fmt: skip
        seconds = time.monotonic() - t0
        info = t.podman.inspect(name)
        state = info["State"]
        logs = t.podman.logs(name)
    finally:
        (t.workdir / f"{pod['metadata']['name']}.log").write_text(t.podman.logs(name))
        t.podman.down([pod])
    assert state["ExitCode"] == 0, logs[-4000:]
    return {"run_id": run_id, "pod": pod, "seconds": seconds, "logs": logs, "acted": acted,
            "info": info}  # fmt: skip


async def _run_state_and_logs(run_id: str) -> tuple[str, list[str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with get_client() as client:
        run = await client.read_flow_run(run_id)
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    return run.state.type.value, [entry.message for entry in logs]


@pytest.fixture(scope="module")
def first_run(topo):
    res = run_flights(topo, *FIRST)
    topo.timings["containerised_run_s"] = res["seconds"]
    return res


def read(t, table: str) -> pd.DataFrame:
    from riverlake import lake

    with environ(t.host_env):
        return lake.read_pandas(table)


def test_the_pods_run_as_non_root_with_a_read_only_root(topo):
    for obj, spec, name in topo.containers():
        info = topo.podman.inspect(name)
        assert info["State"]["Running"], name
        assert info["Config"]["User"].split(":")[0] == "10001", name
        assert info["HostConfig"]["ReadonlyRootfs"] is True, name
        assert spec["securityContext"]["readOnlyRootFilesystem"] is True
        uid = topo.podman("exec", name, "python", "-c", "import os; print(os.getuid())").strip()
        assert uid == "10001", name
        wrote = topo.podman("exec", name, "python", "-c",
                            "import os\ntry:\n open('/opt/x','w')\nexcept OSError as e:\n print(e)",
                            check=False)  # fmt: skip
        assert "Read-only file system" in wrote, name
        # /tmp is the pod's own (an emptyDir), not shared with other pods
        mounts = {m["Destination"]: m for m in info["Mounts"]}
        assert mounts["/tmp"]["Name"].startswith(obj["metadata"]["name"]), name


def test_every_probe_answers(topo):
    probed = []
    for _, spec, name in topo.containers():
        ip = topo.podman.ip(name)
        for kind in ("readinessProbe", "livenessProbe"):
            if kind in spec:
                target = tp.probe_target(spec, kind, ip)
                assert tp.probe_ok(target), f"{name} {kind} {target}"
                probed.append((name, kind))
    # the scheduler, both workers, the apps, the exporter and the Prefect worker
    assert len({n for n, _ in probed}) == len(topo.containers()) == 6
    assert topo.timings["kube_play_to_first_ready_pod_s"] > 0


def test_flights_run_in_a_flow_run_pod_on_the_operators_cluster(topo, first_run):
    src = source_rows(*FIRST)
    with environ(topo.host_env):
        state, messages = asyncio.run(_run_state_and_logs(first_run["run_id"]))
    assert state == "COMPLETED"
    # the version check ran against the containerised scheduler and both workers
    checked = [m for m in messages if m.startswith("the scheduler and ")]
    assert checked and checked[0].startswith("the scheduler and 2 workers match the client: ")
    curated = read(topo, "flights")
    assert len(curated) == len(src) > 2000
    key = ["year", "month", "day", "carrier", "flight", "origin", "sched_dep_time"]
    assert not curated.duplicated(key).any()
    assert int(curated["cancelled"].sum()) == int(src["dep_time"].isna().sum())
    gold = read(topo, "carrier_origin_daily")
    src = src.assign(date=pd.to_datetime(src[["year", "month", "day"]].astype("int64")))
    g = src.groupby(["date", "carrier", "origin"])
    want = pd.DataFrame({"flights": g.size(), "mean_arr_delay": g["arr_delay"].mean()})
    got = gold.set_index(["flight_date", "carrier", "origin"]).sort_index()
    got.index = got.index.set_names(["date", "carrier", "origin"])
    assert len(got) == len(want) and got["flights"].sum() == len(src)
    joined = got.join(want.add_suffix("_want"))
    assert (joined["flights"] == joined["flights_want"]).all()
    np.testing.assert_allclose(joined["mean_arr_delay"], joined["mean_arr_delay_want"])
    # the pod ran the image as the job template says: non-root, read-only root
    info = first_run["info"]
    assert first_run["pod"]["spec"]["containers"][0]["image"] == topo.image
    assert info["Config"]["User"].split(":")[0] == "10001"
    assert info["HostConfig"]["ReadonlyRootfs"] is True


def _executing(ip: str) -> float:
    """Tasks a worker is executing now, from its own Prometheus endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://{ip}:8788/metrics", timeout=3) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    for fam in text_string_to_metric_families(text):
        if fam.name == "dask_worker_tasks":
            return sum(s.value for s in fam.samples if s.labels.get("state") == "executing")
    return 0.0


def test_a_worker_killed_mid_run_and_the_run_still_completes_exactly_once(topo, first_run):
    worker = topo.workers()[0]
    name = tp.container_name(worker, "worker")
    ip = topo.podman.ip(name)
    restarts = topo.podman.inspect(name)["RestartCount"]

    def kill_when_busy(pod_container: str) -> dict:
        busy = tp.wait_for(lambda: _executing(ip) or None, 300, "the worker to execute a task",
                           every=0.2)  # fmt: skip
        # SIGKILL from outside podman, as the kernel's OOM killer or a node failure would
        # end it (`podman kill` counts as a user's stop and suppresses the restart).
        os.kill(topo.podman.inspect(name)["State"]["Pid"], signal.SIGKILL)
        pod_state = topo.podman.inspect(pod_container)["State"]["Status"]
        return {"executing": busy, "flow_run_pod": pod_state}

    res = run_flights(topo, *SECOND, during=kill_when_busy)
    # the kill landed while the worker executed a task and the run was still going
    assert res["acted"]["executing"] >= 1 and res["acted"]["flow_run_pod"] == "running"
    tp.wait_for(lambda: topo.podman.inspect(name)["RestartCount"] > restarts, 60,
                "the killed worker's container to restart")  # fmt: skip
    with environ(topo.host_env):
        state, _ = asyncio.run(_run_state_and_logs(res["run_id"]))
    assert state == "COMPLETED"
    src = pd.concat([source_rows(*FIRST), source_rows(*SECOND)])
    curated = read(topo, "flights")
    key = ["year", "month", "day", "carrier", "flight", "origin", "sched_dep_time"]
    assert len(curated) == len(src) and not curated.duplicated(key).any()
    gold = read(topo, "carrier_origin_daily")
    assert int(gold["flights"].sum()) == len(src)
    topo.timings["killed_run_s"] = res["seconds"]


def test_the_apps_render_in_chromium_through_the_published_port_with_sign_in(topo, first_run):
    from playwright.sync_api import sync_playwright

    from tests.browser.test_apps import ARGS, ARTIFACTS, CHROMIUM

    base = f"http://127.0.0.1:{topo.apps_port}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        try:
            page.goto(f"{base}/pipeline_health")
            page.get_by_text("Test IdP sign-in").wait_for(timeout=60000)
            assert page.url.startswith(topo.idp_url)  # not signed in: the provider's page
            page.fill("input[name=username]", "ada")
            page.fill("input[name=password]", "analytical-engine")
            page.click("button[type=submit]")
            page.get_by_text("Table freshness").wait_for(timeout=90000)
            assert page.url.startswith(base)
            assert topo.idp_app.state.logins == ["ada"]
            # the page reads the lake the flow run wrote: the flights table is listed
            page.get_by_text("flights_quarantine").first.wait_for(timeout=60000)
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "containers_apps.png"), full_page=True)
            browser.close()


def test_prometheus_scrapes_the_metrics_exporter(topo, first_run, tmp_path):
    import shutil
    import subprocess

    from riverlake.ops.stack import free_port

    apps = topo.find("Deployment", "riverlake-apps")
    ip = topo.podman.ip(tp.container_name(apps, "metrics"))
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(json.dumps({
        "global": {"scrape_interval": "2s"},
        "scrape_configs": [{"job_name": "riverlake", "static_configs": [
            {"targets": [f"{ip}:9108"]}]}]}))  # fmt: skip
    prom = subprocess.Popen([shutil.which("prometheus"), f"--config.file={cfg}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def query(q: str):
        url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(q)}"
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                return json.loads(r.read())["data"]["result"]
        except OSError:
            return None

    import urllib.parse

    try:
        rows = tp.wait_for(lambda: query('riverlake_table_rows{table="flights"}'), 90,
                           "Prometheus to scrape the exporter")  # fmt: skip
        up = query('up{job="riverlake"}')
    finally:
        prom.terminate()
        prom.wait(10)
    assert up and up[0]["value"][1] == "1"
    assert int(float(rows[0]["value"][1])) == len(read(topo, "flights"))
