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

from tests.conftest import need
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


def prefect_at(url: str):
    """Prefect's settings pointed at ``url`` for the block: Prefect reads its settings once
    per process (an earlier test's import fixes them), so os.environ is not enough."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings(updates={PREFECT_API_URL: url})


async def _flow_run_pod(t, start: str, end: str) -> tuple[str, dict]:
    """Create a run of the flights-kubernetes deployment and render its pod as Prefect's
    Kubernetes worker would (its own job configuration class, the pool's job template)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Pending
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration as JobConfig

    with prefect_at(t.host_env["PREFECT_API_URL"]):
        async with get_client() as client:
            dep = await client.read_deployment_by_name("flights/flights-kubernetes")
            # The run joins the scheduler played from the operator's objects (an address
            # profile) instead of asking an API server for a KubeCluster of its own.
            # Created Pending: claimed, as a worker claims a run before it creates the Job
            # (the Prefect worker Deployment polls this pool too, and cannot create Jobs).
            run = await client.create_flow_run_from_deployment(
                dep.id,
                parameters={"start": start, "end": end},
                job_variables={"env": {"RIVERLAKE_CLUSTER": t.scheduler_address}},
                state=Pending(),
            )
            pool = await client.read_work_pool("riverlake-kubernetes")
            # The worker in the cluster hands the pod its own API URL: the Service's name.
            with prefect_at(t.config["PREFECT_API_URL"]):
                config = await JobConfig.resolve_for_flow_run(
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
    rendered = pod
    pod = tp.for_podman(pod, image=t.image, namespace=NAMESPACE,
                        configmaps={"riverlake-config": t.config}, secrets=t.secrets)  # fmt: skip
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
    return {"run_id": run_id, "pod": pod, "rendered": rendered, "seconds": seconds,
            "logs": logs, "acted": acted, "info": info}  # fmt: skip


async def _run_state_and_logs(t, run_id: str) -> tuple[str, list[str], int]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with prefect_at(t.host_env["PREFECT_API_URL"]):
        async with get_client() as client:
            run = await client.read_flow_run(run_id)
            runs = LogFilterFlowRunId(any_=[run_id])
            logs = await client.read_logs(LogFilter(flow_run_id=runs))
    return run.state.type.value, [entry.message for entry in logs], run.run_count


@pytest.fixture(scope="module")
def first_run(topo):
    res = run_flights(topo, *FIRST)
    topo.timings["containerised_run_s"] = res["seconds"]
    return res


def read(t, table: str) -> pd.DataFrame:
    from riverlake import lake

    with environ(t.host_env):
        return lake.read_pandas(table)


KEY = ["year", "month", "day", "carrier", "flight", "origin", "sched_dep_time"]


def assert_flights_truths(t, src: pd.DataFrame) -> None:
    """Every source row once (the key sets equal, no duplicate), and the daily gold table
    equal, group by group, to pandas straight from the source rows."""
    curated = read(t, "flights")
    assert len(curated) == len(src) and not curated.duplicated(KEY).any()
    got_keys = set(map(tuple, curated[KEY].astype(str).to_numpy()))
    assert got_keys == set(map(tuple, src[KEY].astype(str).to_numpy()))
    assert int(curated["cancelled"].sum()) == int(src["dep_time"].isna().sum())
    src = src.assign(date=pd.to_datetime(src[["year", "month", "day"]].astype("int64")))
    g = src.groupby(["date", "carrier", "origin"])
    want = pd.DataFrame({"flights": g.size(), "mean_arr_delay": g["arr_delay"].mean()})
    got = read(t, "carrier_origin_daily").set_index(["flight_date", "carrier", "origin"])
    got.index = got.index.set_names(["date", "carrier", "origin"])
    got = got.sort_index()
    assert list(got.index) == list(want.index)
    joined = got.join(want.add_suffix("_want"))
    assert (joined["flights"] == joined["flights_want"]).all()
    np.testing.assert_allclose(joined["mean_arr_delay"], joined["mean_arr_delay_want"])


def test_the_pods_run_as_non_root_with_a_read_only_root(topo):
    image_id = topo.podman("image", "inspect", "--format", "{{.Id}}", topo.image).strip()
    for _, spec, name in topo.containers():
        info = topo.podman.inspect(name)
        assert info["State"]["Running"], name
        assert info["Image"] == image_id, name  # the image built from this checkout
        assert info["Config"]["User"].split(":")[0] == "10001", name
        assert info["HostConfig"]["ReadonlyRootfs"] is True, name
        assert spec["securityContext"]["readOnlyRootFilesystem"] is True
        # what only the manifests ask for: no capability, no privilege escalation
        assert info["EffectiveCaps"] in (None, []), name
        assert "no-new-privileges" in " ".join(info["HostConfig"]["SecurityOpt"] or []), name
        uid = topo.podman("exec", name, "python", "-c", "import os; print(os.getuid())").strip()
        assert uid == "10001", name
        wrote = topo.podman("exec", name, "python", "-c",
                            "import os\ntry:\n open('/opt/x','w')\nexcept OSError as e:\n print(e)",
                            check=False)  # fmt: skip
        assert "Read-only file system" in wrote, name
    # /tmp is each pod's own (an emptyDir), not shared between pods
    a, b = (tp.container_name(w, "worker") for w in topo.workers())
    topo.podman("exec", a, "python", "-c", "open('/tmp/mine', 'w').write('a')")
    seen = topo.podman("exec", b, "python", "-c", "import os; print(os.path.exists('/tmp/mine'))")
    assert seen.strip() == "False"


def test_every_probe_answers(topo):
    probed = []
    for _, spec, name in topo.containers():
        ip = topo.podman.ip(name)
        for kind in ("readinessProbe", "livenessProbe"):
            if kind in spec:  # as the kubelet makes it, from outside the container
                target = tp.probe_target(spec, kind, ip)
                assert tp.probe_ok(target), f"{name} {kind} {target}"
                probed.append((name, kind))
        if "livenessProbe" in spec:  # podman's own healthcheck of it, inside the container
            topo.podman("healthcheck", "run", name)  # raises unless healthy
    # the scheduler, both workers, the apps, the exporter and the Prefect worker
    assert len({n for n, _ in probed}) == len(topo.containers()) == 6
    assert sum(kind == "livenessProbe" for _, kind in probed) == 6


def test_flights_run_in_a_flow_run_pod_on_the_operators_cluster(topo, first_run):
    with environ(topo.host_env):
        state, messages, run_count = asyncio.run(_run_state_and_logs(topo, first_run["run_id"]))
    assert state == "COMPLETED" and run_count == 1
    # the version check ran against the containerised scheduler and both workers
    checked = [m for m in messages if m.startswith("the scheduler and ")]
    assert checked and checked[0].startswith("the scheduler and 2 workers match the client: ")
    src = source_rows(*FIRST)
    assert len(src) > 2000
    assert_flights_truths(topo, src)
    # the pod ran the job template's image (the image built here) as the template says
    (rendered,) = first_run["rendered"]["spec"]["containers"]
    assert rendered["image"] == "ghcr.io/riverlake/riverlake:0.1.0"  # the deployment's
    info = first_run["info"]
    assert info["Config"]["User"].split(":")[0] == "10001"
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    # it reached Prefect by the Service's name the worker gave it, not by an address
    env = {e["name"]: e.get("value") for e in rendered["env"]}
    assert env["PREFECT_API_URL"] == topo.config["PREFECT_API_URL"]


def _metric(url: str, family: str, **labels) -> float:
    """The sum of ``family``'s samples matching ``labels`` at a Prometheus endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(s.value for fam in text_string_to_metric_families(text)
               for s in fam.samples
               if s.name in (family, f"{family}_total") and all(s.labels.get(k) == v for k, v in labels.items()))  # fmt: skip


def test_a_worker_killed_mid_run_and_the_run_still_completes_exactly_once(topo, first_run):
    worker = topo.workers()[0]
    name = tp.container_name(worker, "worker")
    ip = topo.podman.ip(name)
    restarts = topo.podman.inspect(name)["RestartCount"]
    scheduler = topo.podman.ip(tp.container_name(topo.find("Deployment", "scheduler"), "scheduler"))
    suspicious = f"http://{scheduler}:8787/metrics"
    before = _metric(suspicious, "dask_scheduler_tasks_suspicious")

    def kill_when_busy(pod_container: str) -> dict:
        pid = topo.podman.inspect(name)["State"]["Pid"]  # read first: the kill follows at once
        worker_metrics = f"http://{ip}:8788/metrics"
        busy = tp.wait_for(lambda: _metric(worker_metrics, "dask_worker_tasks", state="executing")
                           or None, 300, "the worker to execute a task", every=0.1)  # fmt: skip
        # SIGKILL from outside podman, as the kernel's OOM killer or a node failure would
        # end it (`podman kill` counts as a user's stop and suppresses the restart).
        os.kill(pid, signal.SIGKILL)
        pod_state = topo.podman.inspect(pod_container)["State"]["Status"]
        return {"executing": busy, "flow_run_pod": pod_state}

    res = run_flights(topo, *SECOND, during=kill_when_busy)
    # the kill landed while the worker executed a task and the run was still going, and
    # the scheduler counted the task it lost with the worker (then ran it elsewhere)
    assert res["acted"]["executing"] >= 1 and res["acted"]["flow_run_pod"] == "running"
    assert _metric(suspicious, "dask_scheduler_tasks_suspicious") > before
    tp.wait_for(lambda: topo.podman.inspect(name)["RestartCount"] > restarts, 60,
                "the killed worker's container to restart")  # fmt: skip
    with environ(topo.host_env):
        state, _, run_count = asyncio.run(_run_state_and_logs(topo, res["run_id"]))
    assert state == "COMPLETED" and run_count == 1  # no flow retry was needed
    assert_flights_truths(topo, pd.concat([source_rows(*FIRST), source_rows(*SECOND)]))
    topo.timings["killed_run_s"] = res["seconds"]


def test_the_apps_render_in_chromium_through_the_published_port_with_sign_in(topo, first_run):
    import re

    from playwright.sync_api import sync_playwright

    from tests.browser.oidc_idp import sign_in
    from tests.browser.test_apps import ARGS, ARTIFACTS, CHROMIUM

    need(os.path.exists(CHROMIUM), f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    rows = len(read(topo, "flights"))
    base = f"http://127.0.0.1:{topo.apps_port}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        try:
            page.goto(f"{base}/pipeline_health")
            page.get_by_text("Test IdP sign-in").wait_for(timeout=60000)
            assert page.url.startswith(topo.idp_url)  # not signed in: the provider's page
            sign_in(page, "ada")
            page.get_by_text("Table freshness").wait_for(timeout=90000)
            assert page.url.startswith(base)
            assert topo.idp_app.state.logins == ["ada"]
            # the page read the lake the flow runs wrote: the flights table's row count
            count = re.compile(rf"^({rows}|{rows:,})$")
            page.get_by_text(count).first.wait_for(timeout=60000)
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "containers_apps.png"), full_page=True)
            browser.close()


def test_prometheus_scrapes_the_metrics_exporter(topo, first_run, tmp_path):
    import shutil
    import subprocess
    import urllib.parse

    from riverlake.ops.stack import free_port

    need(shutil.which("prometheus") is not None, "prometheus is not installed")
    apps = topo.find("Deployment", "riverlake-apps")
    ip = topo.podman.ip(tp.container_name(apps, "metrics"))
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    # The exporter computes at scrape time (every table's log read: 0.7 s for 20 tables on a
    # quiet machine, seconds in loaded containers): Prometheus's own default timeout, 10 s,
    # as in production (kube-prometheus-stack). A 2 s interval capped the timeout at 2 s,
    # and every scrape of a loaded CI run timed out.
    cfg.write_text(json.dumps({
        "global": {"scrape_interval": "10s", "scrape_timeout": "10s"},
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

    try:
        try:
            rows = tp.wait_for(lambda: query('riverlake_table_rows{table="flights"}'), 90,
                               "Prometheus to scrape the exporter")  # fmt: skip
        except TimeoutError as e:  # say why: the target's last scrape, as Prometheus saw it
            url = f"http://127.0.0.1:{port}/api/v1/targets"
            try:
                with urllib.request.urlopen(url, timeout=3) as r:
                    targets = [{k: t.get(k) for k in ("health", "lastError",
                                                      "lastScrapeDuration")}
                               for t in json.loads(r.read())["data"]["activeTargets"]]  # fmt: skip
            except OSError as err:
                targets = f"Prometheus did not answer: {err}"
            raise TimeoutError(f"{e}; targets: {targets}") from None
        up = query('up{job="riverlake"}')
    finally:
        prom.terminate()
        prom.wait(10)
    assert up and up[0]["value"][1] == "1"
    assert int(float(rows[0]["value"][1])) == len(read(topo, "flights"))
