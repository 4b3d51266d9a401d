"""Transform and gold stage times at the ETL benchmark's scale (6 million rows), with a
profile of the slowest stage.

Uses the CSVs benchmarks/etl.py generates (same seed and size). Stages, each timed on
a LocalCluster of the default local profile (a thread worker per core):

* transform: per CSV file, one Dask future: read, type, dedupe, UTC times, derive,
  enrich (the dimensions are scattered to the workers once: a broadcast join),
  check the contract, write the curated files; then one commit;
* gold: each gold table from the curated table (read_table).

Then the slowest stage's per-file work is profiled in-process with pyinstrument.
Writes benchmarks/results/transform.json and transform_profile.txt, and leaves the lake
in benchmarks/data/bench-lake for benchmarks/apps.py. The result goes to stdout, the
stage being run (a spinner on a terminal, a line per finished stage elsewhere) to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import record  # noqa: E402
from benchmarks.etl import CSV_TYPES, DATA, RESULTS, generate  # noqa: E402


def flights_declaration():
    """The flights declaration, its curated types, its steps' functions and its gold tables."""
    from riverlake import pipelines
    from riverlake.pipelines.model import Function, import_path

    p = pipelines.pipeline("flights")
    steps = {s.function: import_path(s.function) for s in p.curated.steps
             if isinstance(s, Function)}  # fmt: skip
    return p, p.curated_types(), steps


def transform_file(path: str, uri: str, dims: dict, settings) -> dict:
    """One landed file through the flights declaration, as a transform task runs it."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from riverlake import lake
    from riverlake.analytics import declared
    from riverlake.analytics.contracts import split

    p, types, steps = flights_declaration()
    c = p.curated
    raw_types = dict(p.landing_source()["schema"])
    read = {k: pa.type_for_alias(v) for k, v in CSV_TYPES.items()}
    raw = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=read))
    typed = raw.select(list(raw_types)).cast(declared.arrow_schema(raw_types))
    curated, merged = declared.curate(c, typed, types, dims, steps)
    checked = split(curated, declared.contract(c.contract, types, c.key, c.table))
    adds = lake.write_fragments(declared.to_table(checked.good, types), uri, c.partition_by,
                                settings)  # fmt: skip
    return {"adds": adds, "rows": raw.num_rows, "loaded": len(checked.good),
            "quarantined": len(checked.bad), "merged": merged}  # fmt: skip


def main() -> None:
    import pandas as pd
    from distributed import Client, LocalCluster

    from riverlake import lake
    from riverlake.analytics import declared
    from riverlake.analytics.flights import daily_on_time, delay_by_weather
    from riverlake.demo import data as demo_data
    from riverlake.ops.progress import Screen
    from riverlake.settings import get_settings

    screen = Screen()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=6_000_000)
    p.add_argument("--files", type=int, default=100)
    p.add_argument("--seed", type=int, default=13)
    args = p.parse_args()
    with screen.step(f"data: {args.rows} rows in {args.files} CSV files (cached)"):
        csv_dir = generate(args.rows, args.files, args.seed)
    files = sorted(str(f) for f in csv_dir.glob("*.csv"))
    out = DATA / "bench-lake"  # kept: benchmarks/apps.py serves the dashboard from it
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    settings = get_settings(lake_url=str(out))
    uri = lake.table_uri("flights", settings)
    dims = {n: pd.read_csv(demo_data.source_path(n)) for n in ("weather", "planes", "airports")}
    cores = os.cpu_count() or 1
    stages: dict[str, float] = {}
    with (
        LocalCluster(n_workers=cores, threads_per_worker=1, processes=False,
                     dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        t0 = time.perf_counter()
        with screen.step(f"transform: {len(files)} files on {cores} workers, one commit"):
            dims_f = client.scatter(dims, broadcast=True)
            results = client.gather(client.map(transform_file, files, uri=uri, dims=dims_f,
                                               settings=settings, pure=False))  # fmt: skip
            types = flights_declaration()[1]
            lake.commit(uri, [a for r in results for a in r["adds"]], declared.arrow_schema(types),
                        partition_by=["year", "month"], batch=lake.Batch("bench:transform"),
                        settings=settings)  # fmt: skip
        stages["transform"] = time.perf_counter() - t0
        # ~130 files of ~46k rows: compact to one file per month before the gold stage
        # (fewer, larger partitions cost far less scheduling on 2 cores).
        t0 = time.perf_counter()
        with screen.step("optimize: compacting the curated table"):
            lake.optimize("flights", settings=settings)
        stages["optimize"] = time.perf_counter() - t0
        cols = ["year", "month", "flight_date", "carrier", "origin", "dest", "flight", "hour",
                "cancelled", "dep_delay", "arr_delay", "distance", "delayed_15", "visib",
                "wind_speed", "precip"]  # fmt: skip
        t0 = time.perf_counter()
        with screen.step("gold: reading the curated table"):
            flights = lake.read_table("flights", columns=cols, settings=settings).persist()
        stages["gold:read_curated"] = time.perf_counter() - t0
        gold = {g.table: g for g in flights_declaration()[0].gold}

        def declared_gold(name):
            return lambda f: declared.gold_frame(f, gold[name])

        for name, fn in [("carrier_origin_daily", declared_gold("carrier_origin_daily")),
                         ("route_stats", declared_gold("route_stats")),
                         ("delay_by_hour", declared_gold("delay_by_hour")),
                         ("delay_by_weather", delay_by_weather),
                         ("daily_on_time", daily_on_time)]:  # fmt: skip
            t0 = time.perf_counter()
            with screen.step(f"gold: {name}"):
                frame = fn(flights)
                lake.write_table(name, frame, settings=settings)
            stages[f"gold:{name}"] = time.perf_counter() - t0
    rows = sum(r["rows"] for r in results)
    accounted = sum(r["loaded"] + r["quarantined"] + r["merged"] for r in results)
    assert rows == accounted == args.rows, (rows, accounted)
    gold_total = sum(v for k, v in stages.items() if k.startswith("gold:"))
    slowest = max(("transform", stages["transform"]), ("gold", gold_total), key=lambda kv: kv[1])

    # Profile: the slowest stage's work for one file (or the gold calls), in this process.
    import pyinstrument

    prof = pyinstrument.Profiler()
    with screen.step(f"profiling the slowest stage ({slowest[0]})"):
        prof.start()
        if slowest[0] == "transform":
            transform_file(files[0], lake.table_uri("profile", settings), dims, settings)
        else:
            f = lake.read_table("flights", columns=cols, settings=settings).compute()
            declared_gold("route_stats")(f), declared_gold("carrier_origin_daily")(f)
            delay_by_weather(f)
        prof.stop()
    profile = prof.output_text(unicode=False, color=False, show_all=False)
    result = {
        "rows": rows,
        "rows_loaded": sum(r["loaded"] for r in results),
        "rows_quarantined": sum(r["quarantined"] for r in results),
        "rows_merged": sum(r["merged"] for r in results),
        "stages_s": stages,
        "transform_s": stages["transform"],
        "gold_s": gold_total,
        "transform_rows_per_s": rows / stages["transform"],
        "slowest_stage": slowest[0],
        "profile": f"benchmarks/results/transform_profile.txt ({slowest[0]}, one file)",
    }
    record.write("transform", result)
    (RESULTS / "transform_profile.txt").write_text(profile)
    print(profile[:4000])


if __name__ == "__main__":
    main()
