"""Overhead of the smallest end-to-end run: one day of flights, stack already up.

Times the real command a user types, ``riverlake run flights --start D --end D``, in a
subprocess (Python start-up, Prefect flow run against the server, LocalCluster start,
extract, transform, commit, gold, cluster shutdown), each repetition on a fresh lake
prefix so no batch is skipped. Baseline, in the same run: the same work done by a
plain in-process script (pandas + deltalake, no Prefect, no Dask).

Writes benchmarks/results/overhead.json. Target: 6 s or less on the 2-core machine.
The result goes to stdout; the run being timed (a spinner on a terminal, a line per
finished run elsewhere) to stderr.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import record  # noqa: E402

DAY = "2013-03-05"
NEXT_DAY = "2013-03-06"
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
TARGET_S = 6.0


def run_cli(lake_url: str, day: str = DAY) -> tuple[float, float]:
    env = {**os.environ, "RIVERLAKE_LAKE_URL": lake_url, "RIVERLAKE_DASHBOARD_PORT": "0"}
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "riverlake.ops.cli", "run", "flights", "--start", day, "--end", day],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"run failed: {res.stderr[-2000:]}")
    flow = float(re.search(r"pipeline flights done in ([0-9.]+)s", res.stderr).group(1))
    return wall, flow


def baseline(lake_url: str) -> float:
    """The same day, no orchestration: pandas reads, types, deltalake writes, pandas aggregates."""
    from riverlake import lake, pipelines
    from riverlake.analytics import declared
    from riverlake.analytics.flights import DAILY_KPI_SCHEMA, prepare_flights, to_pandas
    from riverlake.demo import data as demo_data
    from riverlake.settings import get_settings

    settings = get_settings(lake_url=lake_url)
    t0 = time.perf_counter()
    import pyarrow as pa
    from deltalake import write_deltalake

    src = demo_data.load("flights")
    y, m, d = (int(x) for x in DAY.split("-"))
    day = src[(src["year"] == y) & (src["month"] == m) & (src["day"] == d)]
    fs = lake.filesystem(settings)
    path = lake.strip_scheme(f"{lake.landing_uri('flights', settings)}/{DAY}.csv")
    fs.pipe(path, day.to_csv(index=False).encode())
    import io

    import pandas as pd

    raw = pd.read_csv(io.BytesIO(fs.cat(path)))
    cur = prepare_flights(raw)
    opts = lake.storage_options(settings)
    write_deltalake(
        lake.table_uri("flights", settings),
        cur,
        partition_by=["year", "month"], storage_options=opts,
    )  # fmt: skip
    daily = next(g for g in pipelines.pipeline("flights").gold if g.table == "carrier_origin_daily")
    gold = declared.gold_frame(to_pandas(cur), daily)
    write_deltalake(
        lake.table_uri("carrier_origin_daily", settings),
        pa.Table.from_pandas(gold, schema=DAILY_KPI_SCHEMA, preserve_index=False),
        partition_by=["year", "month"], storage_options=opts,
    )  # fmt: skip
    return time.perf_counter() - t0


def main() -> None:
    from riverlake.ops import stack
    from riverlake.ops.progress import Screen
    from riverlake.settings import get_settings

    screen = Screen()
    settings = get_settings()
    with screen.step("the local stack: starting what is not running"):
        stack.up(settings)  # no-op when it is already running
    bucket = settings.lake_url.split("/")[2] if settings.lake_is_s3 else None
    prefix = f"s3://{bucket}/bench-overhead" if bucket else str(ROOT / "benchmarks/data/lake")
    with screen.step("warm-up run (first imports, disk caches)"):
        run_cli(f"{prefix}/warmup-{uuid.uuid4().hex[:6]}")
    walls, flows, bases, next_walls, next_flows = [], [], [], [], []
    for i in range(REPEATS):
        lake_url = f"{prefix}/{uuid.uuid4().hex[:8]}"
        with screen.step(f"repeat {i + 1}/{REPEATS}: run {DAY} on a new lake"):
            w, f = run_cli(lake_url)  # a new lake: the dimensions are ingested too
        walls.append(w)
        flows.append(f)
        with screen.step(f"repeat {i + 1}/{REPEATS}: run {NEXT_DAY}, the next day"):
            w, f = run_cli(lake_url, NEXT_DAY)  # only the new drop is read
        next_walls.append(w)
        next_flows.append(f)
        with screen.step(f"repeat {i + 1}/{REPEATS}: baseline in process"):
            bases.append(baseline(f"{prefix}/base-{uuid.uuid4().hex[:8]}"))
    result = {
        "what": f"riverlake run flights --start {DAY} --end {DAY}",
        "includes": "python start-up, flow run, LocalCluster start and stop; stack already up",
        "repeats": REPEATS,
        "command_wall_s": record.spread(walls),
        "flow_run_s": record.spread(flows),
        "next_day_command_wall_s": record.spread(next_walls),
        "next_day_flow_run_s": record.spread(next_flows),
        "baseline_in_process_s": record.spread(bases),
        "ratio_command_to_baseline": statistics.median(walls) / statistics.median(bases),
        "target_s": TARGET_S,
        "meets_target": statistics.median(walls) <= TARGET_S,
    }
    record.write("overhead", result)


if __name__ == "__main__":
    main()
