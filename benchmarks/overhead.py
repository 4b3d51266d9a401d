"""Overhead of the smallest end-to-end run: one day of flights, stack already up.

Times the real command a user types, ``riverlake run flights --start D --end D``, in a
subprocess (Python start-up and imports, the checks, the Prefect flow run against the
server, LocalCluster start, the sources, curation, commits, gold, cluster shutdown), on
a new lake, then the next day on the same lake.

Baseline, in the same run and also a new Python process each time: the same work with
no orchestration: the same pipeline code called in order in one process (no Prefect
server or flow run, no Dask cluster): the demo upstream's drop, the four dimension
sources and the landing ingested, the month curated with its contract, the quarantine,
the quality report and the curated table committed, the five gold tables computed from
the curated rows with pandas and written. The two lakes are then compared table by
table, value by value (dimensions, curated rows, quarantine, gold; the quality report is
a log of what each run checked, so the next day's differs by design).
What the baseline leaves out is the overhead measured: Prefect's flow and task runs,
the cluster, the checks before the first write (sources reached, cluster versions), the
months' and gold's incremental state (partials, manifests), the run's summary. The
stage functions live in the flow module, so the baseline imports Prefect too (about
0.9 s of its time). On the next day the baseline re-curates the month whole (what a
plain script does); the command merges the new file into it.

The command is timed twice: as typed (the stack's warm runner serves it: its imports
were done ahead, the run is forked from it) and cold (``RIVERLAKE_WARM=0``: a new
process importing everything), each on its own lake. Rounds rotate which side goes
first. Writes benchmarks/results/overhead.json.
Target (issue 15): 4 s or less of command wall time for one day on the 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import record  # noqa: E402

DAY = "2013-03-05"
NEXT_DAY = "2013-03-06"
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
TARGET_S = 4.0


#: The environment every side runs under: this process's, as the stack's warm runner was
#: started with it (``stack.up`` restarts a runner started under another).
ENV: dict[str, str] = {}


def run_cli(lake_url: str, day: str, warm: bool = True) -> tuple[float, float]:
    """The command's wall time and the flow's own (from its last line). ``warm``: through
    the stack's warm runner (a refusal fails the benchmark instead of timing a cold run);
    else in a new process with every import of its own (``RIVERLAKE_WARM=0``)."""
    env = {**ENV, "RIVERLAKE_LAKE_URL": lake_url, "RIVERLAKE_DASHBOARD_PORT": "0",
           "RIVERLAKE_WARM": "require" if warm else "0"}  # fmt: skip
    command = [str(Path(sys.executable).parent / "riverlake"), "run", "flights",
               "--start", day, "--end", day]  # fmt: skip
    t0 = time.perf_counter()
    res = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"run failed: {res.stderr[-2000:]}")
    flow = float(re.search(r"pipeline flights done in ([0-9.]+)s", res.stderr).group(1))
    return wall, flow


def run_baseline(lake_url: str, day: str) -> float:
    """The baseline's wall time: a new Python process running :func:`baseline`."""
    env = {**ENV, "RIVERLAKE_LAKE_URL": lake_url}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, __file__, "--baseline", day], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=600)  # fmt: skip
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"baseline failed: {res.stderr[-2000:]}")
    return wall


def baseline(day: str) -> None:
    """The command's work for ``day``, the pipeline's own functions called in order, in
    this process (the lake from RIVERLAKE_LAKE_URL)."""
    import pandas as pd

    from riverlake import lake, pipelines
    from riverlake.analytics import declared
    from riverlake.analytics.contracts import quality_report
    from riverlake.flows import pipeline as flow
    from riverlake.ops import stack
    from riverlake.pipelines.model import import_path, quarantine_table
    from riverlake.settings import get_settings
    from riverlake.sources.ingest import ingest

    settings = get_settings()
    d = date.fromisoformat(day)
    stack.deliver_demo_data(settings, "flights", d, d)
    p = pipelines.pipeline("flights", settings)
    c = p.curated
    landing = p.landing_source()
    specs = {s.name: s for s in pipelines.pipeline_sources("flights", settings)}
    for s in p.sources:  # the dimensions (their cursors commit with them)
        if s is not landing:
            ingest(specs[s["name"]], settings)
    drops = ingest(specs[landing["name"]], settings, commit_state=False)
    months = sorted({(d.year, d.month)} | {tuple(int(x) for x in m.split("-"))
                                           for ms in drops.info.values() for m in ms})  # fmt: skip
    results = [flow.curate_month(p, y, m, sorted(flow.month_files(c.table, y, m),
                                                 key=flow.landing_order))
               for y, m in months]  # fmt: skip
    replaced = [{"year": y, "month": m} for y, m in months]
    quarantined = [r["quarantine"] for r in results if r["quarantine"] is not None]
    quri = lake.table_uri(quarantine_table(c.table), settings)
    qadds = []
    if quarantined:
        import pyarrow as pa

        q = pa.Table.from_pandas(pd.concat(quarantined, ignore_index=True),
                                 schema=flow.QUARANTINE_SCHEMA, preserve_index=False)  # fmt: skip
        qadds = lake.write_fragments(q, quri, flow.QUARANTINE_PARTITION_BY, settings)
    lake.commit(quri, qadds, flow.QUARANTINE_SCHEMA, partition_by=flow.QUARANTINE_PARTITION_BY,
                mode="overwrite_partitions", replace_partitions=replaced,
                settings=settings)  # fmt: skip
    types = flow.curated_types(p)
    schema = declared.contract(c.contract, types, c.key, c.table)
    report = pd.concat([quality_report(r["checked"], r["failures"], schema)
                        .assign(table=c.table, year=y, month=m, batch=f"baseline:{day}")
                        for (y, m), r in zip(months, results, strict=True)],
                       ignore_index=True)[flow.QUALITY_SCHEMA.names]  # fmt: skip
    lake.write_table(lake.QUALITY_REPORT, report, schema=flow.QUALITY_SCHEMA, settings=settings)
    lake.commit(lake.table_uri(c.table, settings), [a for r in results for a in r["adds"]],
                declared.arrow_schema(types), partition_by=c.partition_by,
                mode="overwrite_partitions", replace_partitions=replaced,
                batch=lake.Batch(f"{c.table}:baseline:{day}",
                                 state={landing["name"]: drops.state}),
                settings=settings)  # fmt: skip
    columns = flow._columns_needed(p.gold, types, c.partition_by)
    rows = declared.to_frame(lake.table(c.table, settings).to_arrow(columns))
    for g in p.gold:  # each from all the curated rows (one or two months here)
        if g.function is not None:
            out, gschema = import_path(g.function)(rows), None
        else:
            gschema = declared.gold_schema(g, types)
            out = declared.gold_table(declared.gold_frame(rows, g, flow._zone(p)), gschema)
        lake.write_table(g.table, out, partition_by=p.gold_partition_by(g),
                         mode="overwrite_partitions",
                         schema=gschema, settings=settings)  # fmt: skip


# --------------------------------------------------------------------------- the check


def _records(frame, root: str) -> list[dict]:
    """Rows as plain values (dates and times as ISO text, missing as None, the lake's
    root left out of paths)."""
    import pandas as pd

    def plain(v):
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            return None
        if isinstance(v, str):
            return v.replace(root, "<lake>")
        return v.isoformat() if hasattr(v, "isoformat") else v.item() if hasattr(v, "item") else v

    return [{k: plain(v) for k, v in r.items()} for r in frame.to_dict("records")]


def lake_contents(lake_url: str) -> dict[str, list[dict]]:
    """Every table the two sides both write, as records (bookkeeping columns left out:
    the batch ids and load times differ by design)."""
    from riverlake import lake, pipelines
    from riverlake.pipelines.model import quarantine_table
    from riverlake.settings import get_settings

    settings = get_settings(lake_url=lake_url)
    p = pipelines.pipeline("flights", settings)
    # Not the quality report: a log of what each run checked (the command's merge checks
    # the new day's rows, the baseline's rebuild the month's), written by both.
    names = [*(s["name"] for s in p.sources if s is not p.landing_source()), p.curated.table,
             quarantine_table(p.curated.table), *(g.table for g in p.gold)]  # fmt: skip
    out = {}
    for name in names:
        t = lake.table(name, settings)
        frame = t.to_arrow().to_pandas() if t is not None else None
        if frame is not None:
            frame = frame.drop(columns=[c for c in frame.columns if c.startswith("_")
                                        or c in ("batch", "quarantined_at")])  # fmt: skip
        out[name] = [] if frame is None else _records(frame, lake.strip_scheme(lake_url))
    return out


def same_lakes(a_url: str, b_url: str) -> dict[str, int]:
    """Rows per table when the two lakes hold the same rows (numbers within 1e-9), else
    SystemExit with the first difference."""
    from benchmarks.transform import GOLD_KEYS, same_records

    a, b = lake_contents(a_url), lake_contents(b_url)
    if set(a) != set(b):
        raise SystemExit(f"tables differ: {sorted(a)} against {sorted(b)}")
    for name in a:
        keys = GOLD_KEYS.get(name) or (sorted(a[name][0]) if a[name] else [])
        diff = same_records(name, keys, a[name], b[name])
        if diff:
            raise SystemExit(f"the command's lake and the baseline's differ: {diff}")
    return {name: len(rows) for name, rows in a.items()}


# --------------------------------------------------------------------------- harness


def main() -> None:
    from riverlake.ops import stack
    from riverlake.ops.progress import Screen
    from riverlake.settings import get_settings

    screen = Screen()
    settings = get_settings()
    with screen.step("the local stack: starting what is not running"):
        stack.up(settings)  # no-op when it is already running (the runner: under this env)
    ENV.update(os.environ)
    bucket = settings.lake_url.split("/")[2] if settings.lake_is_s3 else None
    prefix = f"s3://{bucket}/bench-overhead" if bucket else str(ROOT / "benchmarks/data/lake")
    with screen.step("warm-up: each side once (first imports, disk caches, the drops)"):
        run_cli(f"{prefix}/warmup-{uuid.uuid4().hex[:6]}", DAY)
        run_cli(f"{prefix}/warmup-{uuid.uuid4().hex[:6]}", DAY, warm=False)
        run_baseline(f"{prefix}/warmup-{uuid.uuid4().hex[:6]}", DAY)
    sides = ("warm", "cold", "base")
    times: dict[str, list[float]] = {f"{k}{s}": [] for k in (*sides, "flow_warm", "flow_cold")
                                      for s in ("", "_next")}  # fmt: skip
    tables = {}
    for i in range(REPEATS):
        lakes = {side: f"{prefix}/{side}-{uuid.uuid4().hex[:8]}" for side in sides}
        order = sides[i % 3 :] + sides[: i % 3]  # each side first once in three rounds
        for day, suffix in ((DAY, ""), (NEXT_DAY, "_next")):
            for side in order:
                with screen.step(f"round {i + 1}/{REPEATS}: {side} {day}"):
                    if side == "base":
                        wall = run_baseline(lakes[side], day)
                    else:
                        wall, flow = run_cli(lakes[side], day, warm=side == "warm")
                        times[f"flow_{side}{suffix}"].append(flow)
                    times[f"{side}{suffix}"].append(wall)
            with screen.step(
                f"round {i + 1}/{REPEATS}: the three lakes after {day}, value by value"
            ):
                tables = same_lakes(lakes["warm"], lakes["base"])  # each day's (the next
                same_lakes(lakes["cold"], lakes["base"])  # rewrites March)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "what": f"riverlake run flights --start {DAY} --end {DAY}",
        "includes": "python start-up, checks, flow run, LocalCluster start and stop; "
        "stack already up",
        "warm": "the command as typed, served by the stack's warm runner (imports done "
        "ahead, the run forked from it; riverlake.ops.warm)",
        "cold": "the same command with RIVERLAKE_WARM=0: a new process that imports everything",
        "baseline": "the same tables written by the pipeline's functions in order in a new "
        "process: no flow run, no cluster, no incremental state (months' manifests, gold "
        "partials); the next day it rebuilds the month, the command merges",
        "repeats": REPEATS,
        "order": "rotating: warm, cold, baseline; then cold first; then the baseline first",
        "command_wall_s": record.spread(times["warm"]),
        "flow_run_s": record.spread(times["flow_warm"]),
        "next_day_command_wall_s": record.spread(times["warm_next"]),
        "next_day_flow_run_s": record.spread(times["flow_warm_next"]),
        "cold_command_wall_s": record.spread(times["cold"]),
        "cold_flow_run_s": record.spread(times["flow_cold"]),
        "next_day_cold_command_wall_s": record.spread(times["cold_next"]),
        "baseline_s": record.spread(times["base"]),
        "next_day_baseline_s": record.spread(times["base_next"]),
        "overhead_s": med["warm"] - med["base"],
        "next_day_overhead_s": med["warm_next"] - med["base_next"],
        "checked": f"every round, after each day: each command's lake equal to the "
        f"baseline's, table by table, value by value: {tables}",
        "target_s": TARGET_S,
        "meets_target": med["warm"] <= TARGET_S,
    }
    record.write("overhead", result)


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--baseline", metavar="DAY", help="run the baseline for DAY (internal)")
    args = cli.parse_args()
    if args.baseline:
        baseline(args.baseline)
    else:
        main()
