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

import time

import pytest

from riverlake import lake
from riverlake.analytics.flights import CURATED_TABLE, DAILY_TABLE
from tests.integration.faults import (
    TRACE_ENV,
    CliRun,
    check_truths,
    lake_settings,
    task_events,
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
    took = time.monotonic() - t0
    assert rc == 0, again.tail()
    summary = again.summary()
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
    running = {run: task for run, (task, _) in started.items() if run not in finished}
    curated = lake.table(CURATED_TABLE, settings)
    gold = lake.table(DAILY_TABLE, settings)
    # Where the kill landed, from the run's own log (everything it wrote before dying)
    # and from the lake's Delta logs.
    if point == "extract":
        assert "transform-month" not in {t for t, _ in started.values()}
        assert set(running.values()) & set(EXTRACT_TASKS), (started, finished)
        assert curated is None  # neither the manifest nor a row is committed
    elif point == "transform":
        assert list(running.values()) == ["transform-month"], (started, finished)
        assert curated is None and lake.table("quality_report", settings) is None
    else:
        assert curated is not None and curated.version == 0 and curated.rows() > 0
        assert gold is None or not gold.commits()[0]["batch"].endswith(
            curated.commits()[0]["batch"].split(":", 1)[1]
        )  # the gold commit of this batch is not there
        assert not [r for r in finished if r.startswith("build-gold")]
    print(f"\nkilled at {point}: running {sorted(running)}; curated "
          f"{None if curated is None else curated.version}; gold {gold is not None}")  # fmt: skip
    recover(lake_url, "CLI SIGKILL", point)
