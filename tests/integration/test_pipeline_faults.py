"""The flights pipeline as a whole under real faults: the CLI SIGKILLed at measured points,
a Dask worker process killed mid-transform, the S3 store and the Prefect server stopped
mid-run, and a command-line run overlapping a scheduled deployment run.

Real processes and services, no mocks. Each scenario has its own lake
(s3://riverlake-test/faults-<scenario>), proves where its fault landed, then checks the
flights truths (tests/integration/faults.py: check_truths): every source row of the
run's days exactly once in the curated table, no natural key twice, the run's row
accounting, and gold equal to a recomputation from the curated table.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import time
from datetime import date

import pytest

from riverlake import lake
from riverlake.analytics.flights import CURATED_TABLE, DAILY_TABLE
from riverlake.settings import get_settings
from tests.integration.faults import (
    GOLD_TABLES,
    TRACE_ENV,
    CliRun,
    check_truths,
    children,
    cmdline,
    lake_settings,
    stack_health,
    start_service,
    stop_service,
    task_events,
    unfinished,
)

pytestmark = pytest.mark.integration

START, END = "2013-03-04", "2013-03-05"  # two days, one month partition
EXTRACT_TASKS = ("extract-flights", "ingest-source")
REPORT: list[dict] = []


def fresh_lake(scenario: str) -> str:
    """The scenario's own lake, empty."""
    url = f"s3://riverlake-test/faults-{scenario}"
    settings = lake_settings(url)
    fs = lake.filesystem(settings)
    root = lake.strip_scheme(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)
    fs.invalidate_cache()
    return url


def run(lake_url: str, start: str = START, end: str = END, **env: str) -> CliRun:
    return CliRun(
        "run", "flights", "--json", "--start", start, "--end", end,
        env={"RIVERLAKE_LAKE_URL": lake_url, **TRACE_ENV, **env},
    )  # fmt: skip


def recover(lake_url: str, fault: str, case: str, start: str = START, end: str = END) -> dict:
    """Re-run to completion; check the truths; record the figures for the report."""
    t0 = time.monotonic()
    again = run(lake_url, start, end)
    rc = again.wait()
    assert rc == 0, again.tail()
    return record(fault, case, lake_url, again, time.monotonic() - t0, start, end)


def record(
    fault: str, case: str, lake_url: str, done: CliRun, took: float, start=START, end=END
) -> dict:
    """Check the truths after ``done``, a completed run; record the figures for the report."""
    summary = done.summary()
    truths = check_truths(lake_url, start, end, summary)
    row = {"fault": fault, "case": case, **truths, "recovery_s": round(took, 1),
           "rerun_skipped_curated": summary["curated_skipped"]}  # fmt: skip
    REPORT.append(row)
    print(f"\nFAULT {fault} | {case} | lost {truths['lost']} | doubled {truths['doubled']} "
          f"| recovery {took:.1f}s | {summary['curated_skipped']=}")  # fmt: skip
    return summary


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print("\n| fault | case | source rows | lost | doubled | recovery (s) |")
    for r in REPORT:
        print(f"| {r['fault']} | {r['case']} | {r['source']} | {r['lost']} | {r['doubled']} "
              f"| {r['recovery_s']} |")  # fmt: skip


# ------------------------------------------------------------------ a. the CLI SIGKILLed

KILL_POINTS = {
    # the first source committed or landed: the extract tasks are under way
    "extract": r"riverlake\.sources\.ingest - source \w+: ",
    # the transform task's body has begun (Prefect's task engine, DEBUG)
    "transform": r"Executing task 'transform-month'",
    # the curated commit is in the log; the gold tables come next
    "curated-gold": r"riverlake\.lake\.write - table flights created at version 0",
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_cli_sigkilled_then_rerun(stack_env, point):
    lake_url = fresh_lake(f"kill-{point}")
    settings = lake_settings(lake_url)
    victim = run(lake_url)
    victim.wait_line(KILL_POINTS[point])
    victim.kill_group()  # the whole group: flow process, its Dask workers, any child
    lines = [line for _, line in victim.lines]
    started, finished = task_events(lines)
    running = unfinished(lines)
    curated = lake.table(CURATED_TABLE, settings)
    gold = lake.table(DAILY_TABLE, settings)
    # Where the kill landed, from the run's own log (everything it wrote before dying)
    # and from the lake's Delta logs.
    if point == "extract":
        assert "transform-month" not in {task for _, task, _ in started}
        assert set(running.values()) & set(EXTRACT_TASKS), (started, finished)
        assert curated is None  # neither the manifest nor a row is committed
        # every dimension commit the run logged is in the lake (the kill lost none)
        logged = {m[1] for m in map(re.compile(r"table (\w+) created").search, lines) if m}
        assert all(lake.table(name, settings) is not None for name in logged), logged
    elif point == "transform":
        assert list(running.values()) == ["transform-month"], (started, finished)
        assert curated is None and lake.table("quality_report", settings) is None
    else:
        assert curated is not None and curated.version == 0 and curated.rows() > 0
        batch = curated.commits()[0]["batch"].split(":", 1)[1]
        for name in GOLD_TABLES:  # no gold table holds this batch yet
            table = lake.table(name, settings)
            assert table is None or not table.has_batch(f"{name}:{batch}"), name
        assert not [r for r, _, _ in finished if r.startswith("build-gold")]
    print(f"\nkilled at {point}: running {sorted(running)}; curated "
          f"{None if curated is None else curated.version}; gold {gold is not None}")  # fmt: skip
    recover(lake_url, "CLI SIGKILL", point)


# ------------------------------------------------ b. a Dask worker process killed mid-transform


def test_dask_worker_killed_mid_transform(stack_env):
    lake_url = fresh_lake("worker")
    settings = lake_settings(lake_url)
    victim = run(lake_url, RIVERLAKE_LOCAL_PROCESSES="true")  # workers are processes
    _, line = victim.wait_line(r"Executing task 'transform-month'")
    pid = int(re.search(r"pid (\d+)", line)[1])
    # The transform runs in a worker process: a child of the run's process, not the run.
    assert pid != victim.proc.pid and pid in children(victim.proc.pid), cmdline(pid)
    worker_cmd = cmdline(pid)
    assert "multiprocessing" in worker_cmd, worker_cmd  # a worker process the nanny spawned
    os.kill(pid, signal.SIGKILL)
    killed_at, t_kill = time.time(), time.monotonic()
    # Dask saw its worker die (the nanny's log line, in the run's stderr)
    victim.wait_line(rf"Worker process {pid} was killed by signal 9", timeout=60)
    rc = victim.wait()
    recovered_in = time.monotonic() - t_kill
    started, finished = task_events([line for _, line in victim.lines])
    killed = [r for r, task, p in started if task == "transform-month" and p == pid]
    # The kill landed mid-transform: the dead worker had begun it and never finished it.
    assert len(killed) == 1, (started, finished)
    assert not [r for r, _, p in finished if p == pid and r == killed[0]], (started, finished)
    print(f"\nkilled Dask worker {pid} ({worker_cmd[:60]}...) running {killed[0]}; "
          f"run exit {rc}")  # fmt: skip
    if rc != 0:  # the run may fail (one line); a re-run completes
        assert first_line_error(victim).startswith("riverlake: error: pipeline flights failed")
        recover(lake_url, "Dask worker SIGKILL", "mid-transform, run failed")
        return
    # Dask rescheduled the transform on a live worker and the run completed.
    transforms = {r for r, task, _ in started if task == "transform-month"}
    redone = [
        r for r, state, p in finished if r in transforms and p != pid and state == "Completed"
    ]
    assert len(redone) == 1, (started, finished)
    table = lake.table(CURATED_TABLE, settings)
    assert table.commits()[0]["timestamp"] / 1000 > killed_at  # committed after the kill
    record("Dask worker SIGKILL", "mid-transform, rescheduled", lake_url, victim, recovered_in)


# ------------------------------------------------- c. SeaweedFS, then Prefect, stopped mid-run

#: The services every other test of the session relies on.
SERVICES = ("seaweedfs", "prefect", "nats", "weather-api", "event-replayer", "metrics")


@pytest.fixture
def shared_stack(stack_env):
    """The session's stack is whole again after the test, whatever happened in it."""
    yield
    for name in SERVICES[:2]:
        if stack_health()[name] == "stopped":
            start_service(name)
    health = stack_health()
    assert all(health[s] == "running" for s in SERVICES), health


def first_line_error(victim: CliRun) -> str:
    """A failed run ends with one line, ``riverlake: error: ...``, and exit status 1 (the
    lines above it are the run's logs, the failed task's traceback among them)."""
    last = victim.stderr.strip().splitlines()[-1]
    assert last.startswith("riverlake: error: "), victim.tail()
    assert victim.proc.returncode == 1
    return last


@pytest.mark.parametrize("service", ["seaweedfs", "prefect"])
def test_service_stopped_mid_run(shared_stack, service):
    lake_url = fresh_lake(f"{service}-down")
    settings = lake_settings(lake_url)
    victim = run(lake_url)
    victim.wait_line(r"Executing task 'transform-month'")  # mid-run: the transform began
    t_stop, wall_stop = time.monotonic(), time.time()
    stopped = stop_service(service)  # SIGTERM, then SIGKILL at 15 s; ports free again
    assert stack_health()[service] == "stopped"
    assert victim.proc.poll() is None  # the run is still going when the service is gone
    time.sleep(3)  # the outage
    back = start_service(service)
    assert stack_health()[service] == "running"
    rc = victim.wait()
    outcome = "completed" if rc == 0 else first_line_error(victim)
    print(f"\n{service} stopping took {stopped - t_stop:.1f}s, down {back - stopped:.1f}s; "
          f"run ended {victim.t_end - back:+.1f}s after it was back: {outcome}")  # fmt: skip
    curated = lake.table(CURATED_TABLE, settings)
    if rc == 0:  # it rode the outage out: its curated commit came after the service stopped
        assert curated.commits()[-1]["timestamp"] / 1000 > wall_stop
        if service == "prefect":  # and its final state reached the restarted server
            assert flow_run(victim)["state"] == "COMPLETED"
        record(f"{service} stopped", "run completed", lake_url, victim, victim.t_end - stopped)
        return
    assert curated is None or curated.commits()[-1]["timestamp"] / 1000 > wall_stop
    recover(lake_url, f"{service} stopped", "run failed, re-run")


# ------------------------------------ d. a command-line run overlapping a deployment run


def flow_run(cli: CliRun) -> dict:
    """The Prefect flow run of a CLI run (its id from the run's 'View at' line)."""
    from riverlake import runs

    _, line = cli.wait_line(r"View at .*/flow-run/[0-9a-f-]+", timeout=1)
    run_id = line.rsplit("/", 1)[1]
    with runs.client(get_settings()) as c:
        fr = c.read_flow_run(run_id)
    return {"id": fr.id, "state": fr.state_type.value, "start": fr.start_time, "end": fr.end_time}


def test_cli_run_overlapping_a_scheduled_deployment_run(stack_env, monkeypatch):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.states import Scheduled

    from riverlake import runs
    from riverlake.flows.runner import result_storage_block
    from riverlake.ops import stack
    from tests.conftest import riverlake_cli

    lake_url = fresh_lake("overlap")
    settings = lake_settings(lake_url)
    worker_was_up = stack_health()["worker"] == "running"
    res = riverlake_cli("deploy", env={"RIVERLAKE_LAKE_URL": lake_url})
    assert res.returncode == 0, res.stderr[-2000:]
    try:
        # The days arrive once, before either run looks (the demo upstream drops them).
        days = [date.fromisoformat(d) for d in (START, END)]
        assert len(stack.deliver_demo_data(settings, "flights", *days)) == 2
        monkeypatch.setenv("RIVERLAKE_LAKE_URL", lake_url)
        _, results = result_storage_block()  # this lake's result storage (saved by deploy)
        monkeypatch.undo()
        job_env = {"RIVERLAKE_LAKE_URL": lake_url, "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": results}
        with runs.client(settings) as c:
            dep = c.read_deployment_by_name("flights/flights-local")
            scheduled = c.create_flow_run_from_deployment(
                dep.id, parameters={"start": START, "end": END}, state=Scheduled(),
                job_variables={"env": job_env},
            )  # fmt: skip
            # the worker picks it up (it polls every 10 s); then the command-line run starts
            deadline = time.monotonic() + 120
            while c.read_flow_run(scheduled.id).state_type.value == "SCHEDULED":
                assert time.monotonic() < deadline, "the worker never picked the run up"
                time.sleep(0.2)
        cli = run(lake_url)
        assert cli.wait() == 0, cli.tail()
        with runs.client(settings) as c:
            deadline = time.monotonic() + 180
            final = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
            while (dep_run := c.read_flow_run(scheduled.id)).state_type.value not in final:
                assert time.monotonic() < deadline
                time.sleep(1)
            # the run's process may send its last log lines after its final state: wait
            # for its summary line (the flow logs it once, before it returns)
            while True:
                logs = c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[scheduled.id])))
                if any(log.message.startswith("flights run: ") for log in logs):
                    break
                assert time.monotonic() < deadline + 60, "the run's summary was never logged"
                time.sleep(1)
    finally:
        if not worker_was_up:
            stop_service("worker")
    mine = flow_run(cli)
    # Both completed, and they ran at the same time (Prefect's own start and end times).
    assert dep_run.state_type.value == "COMPLETED" and mine["state"] == "COMPLETED"
    assert dep_run.start_time < mine["end"] and mine["start"] < dep_run.end_time
    overlap = min(dep_run.end_time, mine["end"]) - max(dep_run.start_time, mine["start"])
    (line,) = [log.message for log in logs if log.message.startswith("flights run: ")]
    theirs = ast.literal_eval(line.removeprefix("flights run: "))  # the flow's own summary
    ours = cli.summary()
    print(
        f"\noverlap {overlap.total_seconds():.1f}s; deployment run curated_skipped="
        f"{theirs['curated_skipped']}, command-line run curated_skipped={ours['curated_skipped']}"
    )
    for summary in (theirs, ours):  # each run accounts for every row it read
        assert summary["rows_in"] == (
            summary["rows_loaded"] + summary["rows_quarantined"] + summary["rows_merged"]
        )
    # Same files, same batch: one of them committed it, the other skipped it.
    assert theirs["batch"] == ours["batch"]
    assert sorted([theirs["curated_skipped"], ours["curated_skipped"]]) == [False, True]
    # Nothing doubled anywhere: the dimensions each loaded once, the quality report once.
    for name in ("weather", "planes", "airports", "airlines"):
        ids = lake.table(name, settings).to_arrow(columns=["id"])["id"].to_pylist()
        loaded = max(s["sources"][name]["rows_loaded"] for s in (theirs, ours))
        assert len(ids) == len(set(ids)) == loaded > 0, name
    report = lake.table("quality_report", settings).to_arrow().to_pandas()
    assert not report.duplicated(["batch", "table", "year", "month", "check"]).any()
    check_truths(lake_url, START, END, theirs if ours["curated_skipped"] else ours)
    record("CLI run overlapping a deployment run", "one committed, one skipped", lake_url, cli,
           (mine["end"] - mine["start"]).total_seconds())  # fmt: skip
