"""The generic pipeline flow: any declared pipeline, end to end, on the Dask cluster.

A declaration (riverlake/pipelines/pipelines.yaml, or your own) says what to read and
what to build; this flow does it with the same guarantees for every pipeline:

1. Reach every source before anything is written (one line on failure) and count what
   each would read now, in the flow's own process. When nothing is new and the lake's
   logs say every month of the window was built from exactly its landed files and
   every gold table holds its batch, the run stops there: no data work, and the Dask
   cluster (started by the first task submitted to it) never starts. Otherwise the
   cluster's versions are checked against this client's first.
2. Ingest the sources that load tables (dimensions), each with its cursor in the same
   commit as its rows.
3. Land the new or changed files of the landing source under
   ``landing/<table>/year=/month=/`` (their manifest is committed later, with the data).
4. Curate every (year, month) those files touched, one task per month on the workers:
   only its new files, merged on the natural key into the rows it holds, when that
   cannot differ from a whole rebuild (:func:`plan_month`, :func:`joins_changed`), else
   all its landed files: type (quarantining what does not parse), deduplicate on the
   natural key (last landed wins), run the declared steps (joins, the user's
   functions), check the contract (quarantining what fails, with the check).
5. Commit quarantine, quality report and curated partitions (the curated commit last,
   carrying the batch id and the landing manifest): ``rows_in = loaded + quarantined +
   merged`` is enforced before anything is committed.
6. Recompute the gold tables' touched partitions, each write skipped when the table's
   log shows it already holds the batch.

The batch id is a hash of the landed files it read, so a run with nothing new is
recognised from the lake's log and does no work, and a run that died before its commit
writes its batch exactly once when re-run.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache, partial
from typing import Any

import pandas as pd
import pyarrow as pa
from prefect import Flow, flow, get_run_logger, task
from prefect.tasks import exponential_backoff

from riverlake import lake, pipelines
from riverlake.analytics import declared
from riverlake.analytics.analysis import is_dask
from riverlake.analytics.contracts import quality_report, split
from riverlake.flows.runner import export_storage_credentials, pipeline_task_runner, verify_cluster
from riverlake.pipelines.model import (
    Function,
    Join,
    Pipeline,
    import_path,
    partials_table,
    quarantine_table,
)
from riverlake.settings import LIBRARY_LOGGER, get_settings
from riverlake.sources.ingest import ingest, reach_sources

#: Retry delays of the I/O tasks: 2, 4, 8 s (exponential backoff), with jitter.
BACKOFF = exponential_backoff(backoff_factor=2)

#: Rows that failed typing or the contract, with the check and the original record.
QUARANTINE_SCHEMA = pa.schema(
    [
        ("year", pa.int32()),
        ("month", pa.int32()),
        ("source_file", pa.string()),
        ("failed_check", pa.string()),
        ("record", pa.string()),
    ]
)
QUARANTINE_PARTITION_BY = ["year", "month"]

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


def get_dask_client():
    """prefect-dask's client of the run's cluster (imported here: a run with no data work
    never imports Dask's distributed); outside a Prefect run (a notebook, a benchmark
    calling the gold step), the current Dask client, left open."""
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        from contextlib import nullcontext

        from distributed import get_client

        return nullcontext(get_client())
    from prefect_dask import get_dask_client as client

    return client()


def _log():
    """The run's logger (its lines reach the run in Prefect), or the library's outside
    a run."""
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(f"{LIBRARY_LOGGER}.flows")


def cluster_map(fn, items):
    """Map ``fn`` over ``items`` on the Dask cluster, from a task on a worker or the flow."""
    from distributed import worker_client

    try:
        with worker_client() as client:  # on a worker: secede while the units run
            return client.gather(client.map(fn, list(items), pure=False))
    except ValueError:  # not on a worker
        with get_dask_client() as client:
            return client.gather(client.map(fn, list(items), pure=False))


def _declaration(name: str) -> Pipeline:
    return pipelines.pipeline(name, get_settings())


@cache
def _functions(paths: tuple[str, ...]) -> dict[str, Any]:
    return {p: import_path(p) for p in paths}


def curated_types(p: Pipeline) -> dict[str, str]:
    """The curated table's columns and types (joins' columns take the joined table's)."""
    types = p.curated_types()
    unknown = [c for c, t in types.items() if t == "?"]
    if unknown:
        settings = get_settings()
        for step in p.curated.steps:
            if isinstance(step, Join):
                schema = lake.table(step.join, settings).schema
                for src, new in step.renames().items():
                    if types.get(new) == "?":
                        types[new] = _declared_type(schema.field(src).type)
    return types


def _declared_type(t: pa.DataType) -> str:
    for name, arrow in declared.ARROW.items():
        if t == arrow:
            return name
    if pa.types.is_integer(t):
        return "int64"
    if pa.types.is_floating(t):
        return "float64"
    if pa.types.is_timestamp(t):
        return "timestamp"
    return "string"


# --------------------------------------------------------------------------- tasks


@task(name="check-sources", persist_result=False)
def check_sources(name: str) -> dict[str, int]:
    """Reach every source before anything is written (an unreachable source or refused
    credentials fail the run here, with one line) and count what each would read now:
    0 is nothing new, or only a batch its table already holds. Read only, and called in
    the flow's own process, so a run with nothing new starts no Dask cluster."""
    settings = get_settings()
    return reach_sources(pipelines.pipeline_sources(name, settings), settings)


@task(name="check-cluster", persist_result=False)
def check_cluster() -> None:
    """Refuse a cluster whose scheduler or workers run other package versions than this
    client, before the run's first write (the cluster starts with this task)."""
    verify_cluster()


@task(name="ingest-source", persist_result=False, task_run_name="ingest-{source}")
def ingest_source(name: str, source: str) -> dict[str, Any]:
    """Ingest one source into its table, its cursor advancing in the same commit."""
    settings = get_settings()
    res = ingest(pipelines.source(name, source, settings), settings, mapper=cluster_map)
    get_run_logger().info("%s: %s", source, res.summary())
    return res.summary()


@task(name="land-files", persist_result=False, task_run_name="land-{source}")
def land_files(name: str, source: str) -> dict[str, Any]:
    """Ingest the new or changed files into landing; their manifest is returned, to be
    committed with the curated table the landed files become."""
    settings = get_settings()
    res = ingest(pipelines.source(name, source, settings), settings, mapper=cluster_map,
                 commit_state=False)  # fmt: skip
    months = sorted({tuple(int(x) for x in m.split("-")) for ms in res.info.values() for m in ms})
    get_run_logger().info("%s: %s", source, res.summary())
    return {"months": months, "state": res.state or {"files": {}}, **res.summary()}


def month_files(table: str, year: int, month: int) -> dict[str, str]:
    """Landed files of one month: path -> what the file is (:func:`file_identity`)."""
    settings = get_settings()
    fs = lake.filesystem(settings)
    root = lake.strip_scheme(lake.landing_uri(table, settings))
    pattern = f"{root}/year={year}/month={month:02d}/*.csv"
    return {p: file_identity(info) for p, info in fs.glob(pattern, detail=True).items()}


def file_identity(info: dict[str, Any]) -> str:
    """A landed file's size and content tag (S3's ETag; a local file's modification
    time): a file corrected to the same size is another file."""
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or ""
    return f"{int(info['size'])}:{str(tag).strip(chr(34))}"


def landing_order(path: str) -> list[Any]:
    """Landed files are read in name order, numbers by value: ``x.update-10.csv`` after
    ``x.update-2.csv`` (the last record of a key wins)."""
    name = _name(path)
    parts = [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
    return [parts, name]  # equal numbers (f1, f01): the name decides, always the same way


def months_state_key(source: str) -> str:
    """The curated table's state key for what each month was built from."""
    return f"{source}:months"


def current_months(built: dict[str, Any], fingerprints: dict[str, str]) -> dict[str, list[str]]:
    """The batches that built ``fingerprints``' months from exactly those landed files
    (batch -> months), or {} when any month was built from other files or never (pure)."""
    out: dict[str, list[str]] = {}
    for ym, fp in fingerprints.items():
        done = built.get(ym)
        if not done or done.get("files") != fp:
            return {}
        out.setdefault(done["batch"], []).append(ym)
    return out


@dataclass(frozen=True)
class MonthPlan:
    """How a touched month is curated: from every landed file (``new`` None: rebuilt
    whole, for the reason ``why``), or from its ``new`` files only, whose rows are merged
    on the key into the rows the month holds (``[]``: nothing new, the month is kept)."""

    files: list[str]  # every landed file of the month (a whole rebuild reads them all)
    new: list[str] | None
    why: str


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def plan_month(built: dict[str, Any] | None, files: dict[str, Any], quarantined: str | None,
               row_wise: bool, declaration: str | None = None) -> MonthPlan:  # fmt: skip
    """Merge only what cannot differ from a whole rebuild (pure): every step row-wise, the
    month built with a list of its files and from the same ``declaration`` (the curated
    table's and its functions' fingerprint), its quarantine written from those same files
    (a run that died between the two commits leaves them out of step), no built file
    changed or gone, and every new file after every built one in landing order (the last
    landed record of a key wins). The joins are checked against the data, in the task."""
    every = sorted(files, key=landing_order)

    def whole(why: str) -> MonthPlan:
        return MonthPlan(every, None, why)

    if not row_wise:
        return whole("a step is not row-wise")
    if not built:
        return whole("never built")
    landed = built.get("landed")
    if landed is None:
        return whole("built with no list of its files (before they were kept)")
    if built.get("declared") != declaration:
        return whole("its declaration (key, steps, contract, functions) changed since")
    if quarantined != built.get("files"):
        return whole("its quarantine holds other files than its curated rows (a run died "
                     "between their commits)")  # fmt: skip
    now = {_name(path): size for path, size in files.items()}
    gone = sorted(set(landed) - set(now))
    if gone:
        return whole(f"built file {gone[0]} is gone")
    changed = sorted(n for n in landed if now[n] != landed[n])
    if changed:
        return whole(f"built file {changed[0]} changed")
    new = [path for path in every if _name(path) not in landed]
    if not new:
        return MonthPlan(every, [], "nothing new")
    last = max(landed, key=landing_order)
    if landing_order(new[0]) < landing_order(last):
        return whole(f"new file {_name(new[0])} sorts before built file {last}")
    return MonthPlan(every, new, f"{len(new)} new file(s)")


def curated_fingerprint(p: Pipeline) -> str:
    """What a curated month is built by: the curated declaration (key, event time, steps,
    columns, contract), the landing source's schema, the code of the step functions."""
    import inspect

    h = hashlib.sha256(p.curated.model_dump_json().encode())
    h.update(json.dumps(p.landing_source()["schema"], sort_keys=True).encode())
    for step in p.curated.steps:
        if isinstance(step, Function):
            fn = import_path(step.function)
            try:
                h.update(inspect.getsource(fn).encode())
            except (OSError, TypeError):  # no source at hand: its compiled code
                code = getattr(fn, "__code__", None)
                h.update(code.co_code if code is not None else repr(fn).encode())
    return h.hexdigest()[:16]


def landed_batch_id(files: dict[str, Any]) -> str:
    """A batch is named by the landed files it reads: same files, same batch."""
    h = hashlib.sha256()
    for path, size in sorted(files.items()):
        h.update(f"{path}\0{size}\n".encode())
    return h.hexdigest()[:16]


def _quarantine_rows(bad: pd.DataFrame, source: str, year: int, month: int) -> pd.DataFrame:
    records = bad.drop(columns=["failed_check"]).astype("string")
    return pd.DataFrame(
        {
            "year": pd.array([year] * len(bad), dtype="int32"),
            "month": pd.array([month] * len(bad), dtype="int32"),
            "source_file": pd.array([source] * len(bad), dtype="string"),
            "failed_check": bad["failed_check"].astype("string").to_numpy(),
            "record": [
                json.dumps({k: (None if pd.isna(v) else v) for k, v in r.items()}, default=str)
                for r in records.to_dict("records")
            ],
        }
    )


def _join_tables(p: Pipeline):
    """The tables the steps join with (small: read whole, once per task), and the
    versions read."""
    settings = get_settings()
    out, read = {}, {}
    for step in p.curated.steps:
        if isinstance(step, Join) and step.join not in out:
            table = lake.table(step.join, settings)
            if table is None:
                raise RuntimeError(f"pipeline {p.name}: table {step.join!r} to join with is "
                                   "missing (its source never loaded)")  # fmt: skip
            out[step.join], read[step.join] = declared.to_frame(table.to_arrow()), table.version
    return out, read


def curate(p: Pipeline, typed: pa.Table, types: dict[str, str],
           tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, int]:  # fmt: skip
    """Typed landed rows (in landing order) -> deduplicated, transformed curated rows."""
    c = p.curated
    functions = _functions(tuple(s.function for s in c.steps if isinstance(s, Function)))
    return declared.curate(c, typed, types, tables, functions)


def joins_changed(p: Pipeline, held: pd.DataFrame, then: dict[str, int],
                  now: dict[str, int], tables: dict[str, pd.DataFrame]) -> str | None:  # fmt: skip
    """Why rows a month holds would join differently now (None: they would not). A joined
    table that moved since the month was built is read at that version too, and the
    month's own join keys are looked up in both: any row whose brought columns differ
    (a new, changed or removed match) makes the month rebuild whole."""
    for step in p.curated.steps:
        if not isinstance(step, Join) or then.get(step.join) == now[step.join]:
            continue
        if step.join not in then:
            return f"no record of the version of {step.join!r} it was joined with"
        missing = [k for k in step.keys if k not in held.columns]
        if missing:
            return f"join key {missing[0]!r} is not kept in the curated table"
        try:
            table = lake.table(step.join, get_settings(), version=then[step.join])
            before = declared.to_frame(table.to_arrow())
        except Exception as e:  # the old version is no longer readable (log cleaned up)
            return f"{step.join!r} version {then[step.join]} is unreadable ({type(e).__name__})"
        keys = held[list(step.keys)].drop_duplicates().reset_index(drop=True)
        a = declared.join(keys, before, step.keys, step.renames())
        b = declared.join(keys, tables[step.join], step.keys, step.renames())
        if not a.equals(b):
            return (f"{step.join!r} changed (version {then[step.join]} -> {now[step.join]}) "
                    "for rows the month holds")  # fmt: skip
    return None


def _key_tuples(frame: pd.DataFrame, key: list[str]) -> set[tuple]:
    """The keys of ``frame``'s rows with no null part, as text (how quarantine records
    hold them)."""
    text = frame[key].astype("string")
    text = text[text.notna().all(axis=1)]
    return set(text.itertuples(index=False, name=None))


def _superseded_records(quarantine: pd.DataFrame, key: list[str], keys: set[tuple]) -> pd.Series:
    """Quarantine records of rows a later record of their key replaces (what a whole
    rebuild would have deduplicated away before its contract): contract and month
    failures only; a row that failed typing has no key and stays."""

    def replaced(source: str, record: str) -> bool:
        if source not in ("contract", "landing"):
            return False
        r = json.loads(record)
        return tuple(r.get(k) for k in key) in keys

    return pd.Series(
        [
            replaced(s, r)
            for s, r in zip(quarantine["source_file"], quarantine["record"], strict=True)
        ],
        index=quarantine.index,
        dtype=bool,
    )


class _KeyMoved(Exception):
    """A step changed a key value: the month's parts no longer hold whole keys."""


def _sizes(fs, paths: list[str]) -> dict[str, int]:
    """Each file's size in bytes, from one listing per folder (a store's LIST, not a
    request per file)."""
    out: dict[str, int] = {}
    for folder in sorted({p.rsplit("/", 1)[0] for p in paths}):
        for entry in fs.ls(folder, detail=True, refresh=True):  # not a cached listing
            out[fs._strip_protocol(entry["name"])] = int(entry.get("size") or 0)
    return {p: out.get(fs._strip_protocol(p)) or fs.size(p) for p in paths}


def _month_parts(fs, paths: list[str], key: list[str],
                 part_bytes: int) -> tuple[int, list[list[str]]]:  # fmt: skip
    """How many parts a month is curated in (one without a ``key`` to split by), and its
    files in landing order, in groups read together (all at once for one part; for more,
    about ``part_bytes`` at a time)."""
    ordered = sorted(paths, key=landing_order)
    sizes = _sizes(fs, ordered) if key and ordered else {}
    parts = min(MAX_PARTS, max(1, -(-sum(sizes.values()) // part_bytes)))
    if parts == 1:
        return 1, [ordered]
    groups: list[list[str]] = [[]]
    held = 0
    for path in ordered:
        if groups[-1] and held + sizes[path] > part_bytes:
            groups.append([])
            held = 0
        groups[-1].append(path)
        held += sizes[path]
    return parts, groups


def _typed_files(fs, groups: list[list[str]], raw_types: dict[str, str],
                 zones: dict[str, str], year: int, month: int):  # fmt: skip
    """Each landed file of ``groups`` in order, typed as the landing schema declares:
    (its typed rows, the quarantine records of its rows that failed typing or None)."""
    for group in groups:
        blobs = {fs._strip_protocol(k): v for k, v in (fs.cat(group) if group else {}).items()}
        for path in map(fs._strip_protocol, group):  # named as the store names it
            blob = blobs.pop(path)
            try:
                table = declared.read_csv_typed(blob, raw_types, zones)
                bad = pd.DataFrame()
            except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError):
                try:
                    text = declared.read_csv_text(blob)
                except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError, ValueError) as e:
                    # not a CSV at all (a line with extra fields, not UTF-8): the whole file
                    # is one quarantined record, with its first bytes
                    head = bytes(blob[:4096]).decode("utf-8", "replace")
                    reason = f"file:unreadable ({str(e).splitlines()[0][:120]})"
                    text = pd.DataFrame({"file_head": [head]})
                    table, bad = pa.schema([]).empty_table(), text.assign(failed_check=reason)
                else:
                    table, bad = declared.type_text(text, raw_types, zones)
            yield table, (_quarantine_rows(bad, path, year, month) if len(bad) else None)


#: At most this many parts a month (each an open file while the month is read).
MAX_PARTS = 256


def _month_pieces(typed, key: list[str], parts: int, types: dict[str, str],
                  quarantined: list[pd.DataFrame], counts: dict[str, int]):  # fmt: skip
    """A month's typed rows in landing order, as (part, rows): one part, or ``parts``
    parts by a hash of ``key`` (:func:`declared.key_parts`, the curated ``types``), each
    file's rows appended to their part's Arrow file on local disk as it is read (Dask's
    temporary directory: the workers' spill volume), the parts then read back one at a
    time. Rows that failed typing go to ``quarantined``; ``counts["rows_in"]`` counts
    every row."""
    if parts == 1:
        tables = []
        for table, bad in typed:
            counts["rows_in"] += table.num_rows + (0 if bad is None else len(bad))
            quarantined += [] if bad is None else [bad]
            tables += [table] if table.num_columns else []
        if tables:
            yield 0, pa.concat_tables(tables)
        return
    import dask
    import numpy as np

    with tempfile.TemporaryDirectory(
        prefix="riverlake-month-", dir=dask.config.get("temporary-directory", None)
    ) as spill:
        with ExitStack() as files:  # every part's file closed, whatever fails
            writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
            for table, bad in typed:
                counts["rows_in"] += table.num_rows + (0 if bad is None else len(bad))
                quarantined += [] if bad is None else [bad]
                if not table.num_rows:
                    continue
                which = declared.key_parts(table, key, parts, types)
                order = np.argsort(which, kind="stable")  # by part, landing order within
                table, which = table.take(order), which[order]
                bounds = np.searchsorted(which, np.arange(parts + 1))
                for part in range(parts):
                    start, end = int(bounds[part]), int(bounds[part + 1])
                    if start == end:
                        continue
                    if part not in writers:
                        writers[part] = files.enter_context(
                            pa.ipc.new_file(f"{spill}/{part}.arrow", table.schema))  # fmt: skip
                    writers[part].write_table(table.slice(start, end - start))
            table = None
        for part in sorted(writers):
            with pa.memory_map(f"{spill}/{part}.arrow") as source:
                rows = pa.ipc.open_file(source).read_all()
            yield part, rows
            del rows  # (the mapped part) before the next is read


def _discard(adds: list[dict[str, Any]], uri: str, settings) -> None:
    """Remove Parquet files a task wrote and will not commit (a file this misses is an
    orphan no reader sees, which ``vacuum --full`` removes)."""
    base = lake.strip_scheme(uri)
    try:
        lake.filesystem(settings).rm([f"{base}/{a['path']}" for a in adds])
    except Exception as e:  # the task's own error is the one to report
        _log().warning("could not remove %d uncommitted file(s): %s", len(adds), e)


def _check_month_rows(rows: pd.DataFrame, schema, year: int, month: int):
    """Curated rows checked against the contract: (the good rows, quarantine records,
    failures per check)."""
    checked = split(rows, schema)
    quarantined = []
    if len(checked.bad):
        quarantined.append(_quarantine_rows(checked.bad, "contract", year, month))
    good = checked.good
    # A row belongs to the month it was landed in; one that does not (it cannot, landing
    # and curation read the same time) would replace another month's partition: refused.
    elsewhere = (good["year"] != year) | (good["month"] != month)
    if elsewhere.any():
        stray = good[elsewhere].assign(failed_check=f"landing:month ({year}-{month:02d})")
        quarantined.append(_quarantine_rows(stray, "landing", year, month))
        good = good[~elsewhere]
    return good, quarantined, checked.failures


def _month_of(table: str, year: int, month: int, version: int | None, settings) -> pa.Table:
    """What month (``year``, ``month``) of ``table`` held at ``version`` (Arrow)."""
    t = None if version is None else lake.table(table, settings, version=version)
    if t is None:
        return pa.table({})
    return t.to_arrow(partition={"year": year, "month": month})


@task(name="transform-month", persist_result=False, retries=2, retry_delay_seconds=BACKOFF,
      task_run_name="transform-{year}-{month:02d}")  # fmt: skip
def transform_month(name: str, year: int, month: int, files: list[str],
                    new: list[str] | None = None, base: dict[str, Any] | None = None,
                    ) -> dict[str, Any]:  # fmt: skip
    """Read a month of landed CSVs; type, dedupe, run the steps; check the contract; write.

    Runs on a Dask worker. Good rows are written as the curated table's Parquet files
    (invisible until the commit task); rows that fail a check come back as quarantine
    records, with the check's name. With ``new`` (see :func:`plan_month`) only those
    files are read, and their rows are merged on the key into the rows the month held at
    ``base["curated"]`` (a later record of a key replaces the held one, also when it
    fails the contract), its quarantine records kept likewise; the month is rebuilt
    whole instead when a joined table changed for rows it holds or the curated table's
    columns changed.
    """
    return curate_month(_declaration(name), year, month, files, new, base)


def curate_month(p: Pipeline, year: int, month: int, files: list[str],
                 new: list[str] | None = None, base: dict[str, Any] | None = None,
                 in_parts: bool = True) -> dict[str, Any]:  # fmt: skip
    """The body of :func:`transform_month` (a merge that turns out unsafe calls it again,
    whole). A whole month of more than ``settings.curate_part_bytes`` landed bytes whose
    steps are row-wise is curated in parts by its key (5 million flights in one part took
    4 GB and more; a production worker has 4 GiB) (see :func:`_month_pieces`) unless
    ``in_parts`` is false."""
    c = p.curated
    settings = get_settings()
    tables, versions = _join_tables(p)

    def whole(why: str, in_parts: bool = True) -> dict[str, Any]:
        _log().info("%d-%02d: rebuilt whole: %s", year, month, why)
        return curate_month(p, year, month, files, in_parts=in_parts)

    held = held_quarantine = None
    if new is not None:
        arrow = _month_of(c.table, year, month, base["curated"], settings)
        held = declared.to_frame(arrow)
        held_quarantine = _month_of(quarantine_table(c.table), year, month,
                                    base["quarantine"], settings).to_pandas()  # fmt: skip
        moved = any(base["joins"].get(t) != v for t, v in versions.items())
        if arrow.schema != declared.arrow_schema(curated_types(p)):
            return whole("the curated table's columns changed since it was built")
        if moved and len(held_quarantine) and held_quarantine["source_file"].isin(
                ["contract", "landing"]).any():  # fmt: skip
            # a quarantined row could now join, and pass, differently: only a whole
            # rebuild re-joins it
            return whole("a joined table changed and rows of the month are quarantined")
        why = joins_changed(p, held, base["joins"], versions, tables)
        if why:
            return whole(why)
    read = files if new is None else new
    raw_types = dict(p.landing_source()["schema"])
    zones = {c.event_time.column: c.event_time.time_zone} if c.event_time else {}
    fs = lake.filesystem(settings)
    types = curated_types(p)
    key = [k for k in c.key if k in raw_types and k in types]  # landed: parts by them
    parts, groups = _month_parts(fs, read, key if new is None and in_parts and c.row_wise else [],
                                 settings.curate_part_bytes)  # fmt: skip
    typed = _typed_files(fs, groups, raw_types, zones, year, month)
    quarantined: list[pd.DataFrame] = []
    counts = {"rows_in": 0}
    adds, merged, checked, failures, schema = [], 0, 0, {}, None
    rows = good = None  # the one part's rows (a merge needs them)
    moved = False
    try:
        for part, piece in _month_pieces(typed, key, parts, types, quarantined, counts):
            rows, n = curate(p, piece, types, tables)
            del piece
            keys = {k: types[k] for k in key}
            if parts > 1 and (declared.key_parts(declared.to_table(rows, keys), key, parts,
                                                 types) != part).any():  # fmt: skip
                # a step changed a key: rows of one key could sit in two parts
                raise _KeyMoved
            schema = schema or declared.contract(c.contract, types, c.key, c.table)
            good, bad, fails = _check_month_rows(rows, schema, year, month)
            quarantined += bad
            merged, checked = merged + n, checked + len(rows)
            failures = {k: failures.get(k, 0) + fails.get(k, 0) for k in failures | fails}
            if parts > 1:  # written now: the month's rows are never all in memory at once
                adds += lake.write_fragments(declared.to_table(good, types),
                                             lake.table_uri(c.table, settings),
                                             c.partition_by, settings)  # fmt: skip
                rows = good = bad = None  # gone before the next part is read
    except BaseException as e:
        if adds:  # a part's files, never to be committed
            _discard(adds, lake.table_uri(c.table, settings), settings)
        if not isinstance(e, _KeyMoved):
            raise
        moved = True
    if moved:  # (outside the handler: nothing of the parted attempt is held)
        return whole("a step changed key values, so it is curated in one part", in_parts=False)
    if rows is None:  # no file had rows
        rows = good = pd.DataFrame(columns=list(types))
    rows_in = counts["rows_in"]
    fresh = pd.concat(quarantined, ignore_index=True) if quarantined else None
    quarantine, replaced = fresh, 0
    loaded = len(good) if parts == 1 else sum(a["rows"] for a in adds)
    if new is not None:  # merge into what the month holds
        if len(c.key) > 1 and len(rows) and rows[list(c.key)].isna().any(axis=1).any():
            # the contract's uniqueness of a key with a null part looks across all of the
            # month's rows (held ones too): only a whole rebuild checks it
            return whole("a new row's key has a null part")
        keys = _key_tuples(rows, list(c.key))
        kept = held[~pd.Series([k in keys for k in held[list(c.key)].astype("string")
                                .itertuples(index=False, name=None)], index=held.index,
                               dtype=bool)]  # fmt: skip
        replaced = len(held) - len(kept)
        good = pd.concat([declared.conform(kept, types), good], ignore_index=True)
        old = held_quarantine
        if len(old):
            old = old[~_superseded_records(old, list(c.key), keys)][QUARANTINE_SCHEMA.names]
            quarantine = pd.concat([x for x in (old, fresh) if x is not None],
                                   ignore_index=True)  # fmt: skip
    if parts == 1:
        adds = lake.write_fragments(declared.to_table(good, types),
                                    lake.table_uri(c.table, settings), c.partition_by,
                                    settings)  # fmt: skip
    return {
        "mode": "whole" if new is None else "merge",
        "parts": parts,
        "adds": adds,
        "rows_in": rows_in,
        "merged": merged,
        "rows_loaded": loaded,
        "rows_replaced": replaced,
        "quarantine": quarantine,
        "rows_quarantined": 0 if fresh is None else len(fresh),
        "quarantine_checks": {}
        if fresh is None
        else fresh["failed_check"].value_counts().to_dict(),
        "failures": failures,
        "checked": checked,
        "joins": versions,
    }


@task(name="commit-curated", persist_result=False)
def commit_curated(
    name: str,
    results: list[dict[str, Any]],
    months: list[tuple[int, int]],
    batch: str,
    landing_state: dict[str, Any] | None = None,
    month_files: dict[str, str] | None = None,
    landed: dict[str, dict[str, int]] | None = None,
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Quarantine and quality report first, then the curated table (all idempotent).

    ``month_files`` ("YYYY-MM" -> the fingerprint of the landed files the month was built
    from) rides in the curated commit with the batch, with ``landed`` (the files' names
    and identities: size and content tag) and the versions of the joined tables, so a
    later run with nothing new can learn from the log that a month is current whatever
    window it was committed with,
    and a later run with new files can curate only those (:func:`plan_month`). The
    quarantine commit records the same fingerprints: a run that dies between the two
    leaves them out of step, and the next run rebuilds those months whole.

    Each commit is atomic; the curated commit carries the batch id and the landing
    manifest and comes last, so a run that dies in between is re-run whole, and the
    earlier commits then replace (quarantine) or skip (quality report) what they wrote.
    Months merged into what they held commit only on the versions they read (``base``):
    another writer in between raises :class:`lake.CommitConflict`, nothing committed to
    that table.
    """
    p = _declaration(name)
    c = p.curated
    settings = get_settings()
    types = curated_types(p)
    rows_in = sum(r["rows_in"] for r in results)
    loaded = sum(r["rows_loaded"] for r in results)
    merged = sum(r["merged"] for r in results)
    n_quarantined = sum(r["rows_quarantined"] for r in results)
    if rows_in != loaded + n_quarantined + merged:
        raise RuntimeError(
            f"pipeline {name}: row accounting broken: {rows_in} in != {loaded} loaded + "
            f"{n_quarantined} quarantined + {merged} merged"
        )
    changed = [ym for ym, r in zip(months, results, strict=True) if r["mode"] != "kept"]
    merging = any(r["mode"] == "merge" for r in results)
    base = base or {}
    fps = {ym: fp for ym, fp in (month_files or {}).items()
           if tuple(map(int, ym.split("-"))) in changed}  # fmt: skip
    source = p.landing_source()["name"]
    key = months_state_key(source)
    # Quarantine partitions of the changed months are replaced, like the curated ones.
    qname = quarantine_table(c.table)
    uri = lake.table_uri(qname, settings)
    q = [r["quarantine"] for r in results if r["quarantine"] is not None]
    adds = []
    if q:
        table = pa.Table.from_pandas(pd.concat(q, ignore_index=True), schema=QUARANTINE_SCHEMA,
                                     preserve_index=False)  # fmt: skip
        adds = lake.write_fragments(table, uri, QUARANTINE_PARTITION_BY, settings)
    # The months' state is read and written back on one version of each table (another
    # writer in between: CommitConflict), so no commit carries a state read before
    # another's; a merge also needs the version it merged with.
    q = lake.table(qname, settings)
    qstate = dict((q.state(key) if q is not None else None) or {})
    _check_base(qname, q, base.get("quarantine") if merging else None)
    lake.commit(
        uri, adds, QUARANTINE_SCHEMA, partition_by=QUARANTINE_PARTITION_BY,
        mode="overwrite_partitions",
        batch=lake.Batch(f"quarantine:{batch}" + (":merge" if merging else ""),
                         state={key: {**qstate, **fps}} if fps else None),
        replace_partitions=[{"year": y, "month": m} for y, m in changed], table=q,
        expect_version=None if q is None else q.version, settings=settings,
    )  # fmt: skip
    schema = declared.contract(c.contract, types, c.key, c.table)
    report = []
    for (y, m), r in zip(months, results, strict=True):
        rep = quality_report(r["checked"], r["failures"], schema)
        report.append(rep.assign(table=c.table, year=y, month=m, batch=batch))
    report = pd.concat(report, ignore_index=True)[QUALITY_SCHEMA.names]
    lake.write_table(lake.QUALITY_REPORT, report, schema=QUALITY_SCHEMA,
                     app_id=f"quality:{batch}", settings=settings)  # fmt: skip
    state = {source: landing_state} if landing_state is not None else {}
    t = lake.table(c.table, settings)
    _check_base(c.table, t, base.get("curated") if merging else None)
    if fps:
        built = dict((t.state(key) if t is not None else None) or {})
        fingerprint = curated_fingerprint(p)
        for (y, m), r in zip(months, results, strict=True):
            ym = f"{y}-{m:02d}"
            if ym in fps:
                built[ym] = {"files": fps[ym], "batch": batch, "landed": (landed or {})[ym],
                             "joins": r["joins"], "declared": fingerprint}  # fmt: skip
        state[key] = built
    # Every changed month is replaced, also one whose rows all went to quarantine.
    months_replaced = [{"year": y, "month": m} for y, m in changed]
    curated = lake.commit(
        lake.table_uri(c.table, settings), [a for r in results for a in r["adds"]],
        declared.arrow_schema(types), partition_by=c.partition_by, mode="overwrite_partitions",
        replace_partitions=months_replaced,  # by year and month: every day under it too
        batch=lake.Batch(f"{c.table}:{batch}", state=state or None), table=t,
        expect_version=None if t is None else t.version, settings=settings,
    )  # fmt: skip
    checks: dict[str, int] = {}
    for r in results:
        for check, n in r["quarantine_checks"].items():
            checks[check] = checks.get(check, 0) + n
    return {
        "rows_in": rows_in,
        "rows_loaded": loaded,
        "rows_quarantined": n_quarantined,
        "rows_merged": merged,
        "rows_replaced": sum(r["rows_replaced"] for r in results),
        "months_merged": [f"{y}-{m:02d}" for (y, m), r in zip(months, results, strict=True)
                          if r["mode"] == "merge"],
        "months_kept": [f"{y}-{m:02d}" for (y, m), r in zip(months, results, strict=True)
                        if r["mode"] == "kept"],
        "curated_version": curated.version,
        "curated_skipped": curated.skipped,
        "quarantine_checks": checks,
        "quality": report.groupby("check", sort=False)[["rows_checked", "rows_passed",
                                                        "rows_failed"]].sum().reset_index()
        .to_dict("records"),
    }  # fmt: skip


def _check_base(name: str, table, version: int | None) -> None:
    """A merge commits only on the version it merged with: raise CommitConflict else."""
    if version is not None and (table is None or table.version != version):
        raise lake.CommitConflict(
            f"table {name!r} moved past version {version} that the merge read (another "
            "writer committed); nothing committed to it"
        )


def _gold_filters(months: list[tuple[int, int]], partition_by: list[str]) -> list:
    years = sorted({y for y, _ in months})
    if not partition_by:
        return []  # the whole table
    if partition_by[:2] == ["year", "month"]:
        return [("year", "in", years), ("month", "in", sorted({m for _, m in months}))]
    return [("year", "in", years)]


def _in_months(frame: pd.DataFrame, months, columns=("year", "month")) -> pd.DataFrame:
    """The rows of ``frame`` whose (year, month) is one of ``months`` (a read filtered by
    years and by months holds their cross product)."""
    wanted = {(int(y), int(m)) for y, m in months}
    pairs = zip(frame[columns[0]], frame[columns[1]], strict=True)
    return frame[[(int(y), int(m)) in wanted for y, m in pairs]]


def _touched(frame: pd.DataFrame, months: list[tuple[int, int]], partition_by: list[str]):
    if partition_by[:2] != ["year", "month"] or frame.empty:
        return frame
    return _in_months(frame, months)


@task(name="build-gold", persist_result=False)
def build_gold(name: str, months: list[tuple[int, int]], batch: str) -> dict[str, Any]:
    """Recompute the gold partitions whose inputs changed: a table partitioned by year
    and month, the touched months; by year, the touched years; unpartitioned, all of it.
    Tables that already hold the batch (their logs say so) are not recomputed."""
    p = _declaration(name)
    settings = get_settings()
    if not p.gold or not _curated_has_rows(p, settings):  # only quarantine so far
        return {}
    todo = gold_pending(p, batch, settings)
    if not todo:
        get_run_logger().info("gold tables already hold batch %s: nothing to rebuild", batch)
        return {g.table: 0 for g in p.gold}
    out = write_gold(gold_writes(p, todo, months, batch, settings), months, batch, settings)
    return {g.table: out.get(g.table, 0) for g in p.gold}


def gold_writes(p: Pipeline, golds, months: list[tuple[int, int]], batch: str,
                settings) -> dict[str, tuple]:  # fmt: skip
    """The gold tables ``golds`` of the months touched, computed (not written): table ->
    (frame, partition columns, schema). Aggregates over a year or all time from their
    stored monthly partials (:func:`_gold_from_partials`), the rest from the curated rows
    of their touched partitions (:func:`_gold_from_rows`)."""
    types = curated_types(p)
    direct = [g for g in golds if not p.incremental(g)]
    kept = [g for g in golds if p.incremental(g)]
    writes: dict[str, tuple] = {}
    if direct:
        writes |= _gold_from_rows(p, direct, months, types, settings)
    if kept:
        writes |= _gold_from_partials(p, kept, months, batch, types, settings)
    return writes


def write_gold(writes: dict[str, tuple], months: list[tuple[int, int]], batch: str,
               settings) -> dict[str, int]:  # fmt: skip
    """Write :func:`gold_writes`' tables, each replacing its touched partitions, the
    batch in its log; rows written per table."""
    years = sorted({y for y, _ in months})
    scope = {  # every touched partition is replaced, also one that has no rows any more
        ("year", "month"): [{"year": y, "month": m} for y, m in months],
        ("year",): [{"year": y} for y in years],
    }

    def write(table: str) -> int:
        frame, partition_by, schema = writes[table]
        data = declared.gold_table(frame, schema) if schema is not None else frame
        return lake.write_table(
            table, data, partition_by=partition_by,
            mode="overwrite_partitions",  # unpartitioned: the whole table
            replace_partitions=scope.get(tuple(partition_by[:2]), ()),
            app_id=f"{table}:{batch}", schema=schema, settings=settings,
        ).rows  # fmt: skip

    return dict(zip(writes, in_threads(write, [(t,) for t in writes]), strict=True))


def _columns_needed(golds, types: dict[str, str], partition_by: list[str]) -> list[str]:
    need: set[str] = set(partition_by)
    for g in golds:
        if g.function is not None:
            if g.columns is None:  # a function that does not say: every column
                return list(types)
            need |= set(g.columns)
            continue
        need |= set(g.group_keys()) - ({g.time_bin.output} if g.time_bin else set())
        need |= {g.time_bin.column} if g.time_bin else set()
        for m in g.measures.values():
            need |= {x for x in (m.column, m.of) if x}
            for cond in (m.rate, m.count_where):
                if cond:
                    need.add(declared.parse_condition(cond)[0])
    return [x for x in types if x in need]


def _gold_from_rows(p: Pipeline, golds, months, types, settings) -> dict[str, tuple]:
    """Gold tables recomputed from the curated rows of their touched partitions: by
    month, the touched months; functions by year, the touched years."""
    c = p.curated
    scopes = [p.gold_partition_by(g) for g in golds]
    widest = min(scopes, key=len)  # the fewest partition columns: the most rows to read
    years = sorted({y for y, _ in months})
    writes = {}
    with _curated_rows(c.table, _columns_needed(golds, types, c.partition_by),
                       _gold_filters(months, widest), settings) as frame:  # fmt: skip
        # A dask frame is not persisted: each table's graph reads its own columns a file at
        # a time, so the gold step's memory does not grow with the rows (held, the columns
        # of 60M rows took 5.5 GB).
        for g, part in zip(golds, scopes, strict=True):
            scoped = frame  # each table from the rows of its touched partitions only
            if part and len(widest) < 1:
                scoped = scoped[scoped["year"].isin(years)]
            if len(part) >= 2 and len(widest) < 2:
                scoped = scoped[scoped["month"].isin(sorted({m for _, m in months}))]
            if g.function is not None:
                out = import_path(g.function)(scoped)
                schema = None
            else:
                out = declared.gold_frame(scoped, g, _zone(p))
                schema = declared.gold_schema(g, types)
            writes[g.table] = (_touched(out, months, part), part, schema)
    return writes


@contextmanager
def _curated_rows(table: str, columns: list[str], filters: list, settings):
    """The curated rows the gold step reads: a pandas frame when their files are small
    (``settings.gold_in_pandas_bytes``: a daily run's month), else a dask frame, inside
    the run's Dask client."""
    schema, _, files = lake.table_files(table, filters, settings=settings)
    size = sum(f["size"] for f in files)
    small = size <= settings.gold_in_pandas_bytes
    _log().info("gold reads %d curated file(s), %.1f MB, %s", len(files), size / 1e6,
                "into pandas" if small else "as a dask frame")  # fmt: skip
    if small:
        yield lake.read_files(schema, files, columns, filters, settings)
        return
    with get_dask_client():
        yield lake.read_table(table, columns=columns, filters=filters, settings=settings)


#: The partition columns of a partials table: the curated month each partial is of (not
#: year/month, which a gold table may use for keys of its own, e.g. a time bin "month").
PART = ["part_year", "part_month"]


def _months_of(table: str, settings, columns=("year", "month")) -> set[tuple[int, int]]:
    t = lake.table(table, settings)
    return set() if t is None else _file_months(t, columns)


def _file_months(t: lake.Table, columns) -> set[tuple[int, int]]:
    """The (year, month) partitions of a table's live files."""
    y, m = columns
    return {(int(f["partition_values"][y]), int(f["partition_values"][m]))
            for f in t.files() if f["partition_values"].get(y) is not None}  # fmt: skip


def _partials_state(table: str, settings) -> tuple[set[tuple[int, int]], str | None,
                                                  lake.Table | None]:  # fmt: skip
    """A partials table's months, the batch of its last commit of ours (None when it does
    not exist) and the table as read (None: no such table)."""
    t = lake.table(table, settings)
    if t is None:
        return set(), None, None
    ours = [c["batch"] for c in t.commits(limit=10) if c["batch"]]  # not optimize or vacuum
    return _file_months(t, PART), ours[0].split(":", 1)[-1] if ours else None, t


def _zone(p: Pipeline) -> str:
    """The zone of a pipeline's time bins: its event time's (local days and months)."""
    return p.curated.event_time.time_zone if p.curated.event_time else "UTC"


def _month_partials(frame: pd.DataFrame, gold, zone: str) -> tuple:
    """A frame's partials per curated month (keys plus the month it is of)."""
    return declared.partials(frame.assign(part_year=frame["year"], part_month=frame["month"]),
                             gold, zone)  # fmt: skip


def _arrow(frame: pd.DataFrame) -> pa.Table:
    t = pa.Table.from_pandas(frame, preserve_index=False)
    fields = [pa.field(f.name, pa.string()) if pa.types.is_large_string(f.type) else f
              for f in t.schema]  # fmt: skip
    return t.cast(pa.schema(fields))


def _replace_months(table: str, frame: pd.DataFrame, months, app_id: str, settings,
                    existing: lake.Table | None = None) -> None:  # fmt: skip
    """Replace ``months`` of a partials table with ``frame``'s rows in one commit (a month
    with no rows now is emptied). ``existing``: the table as read earlier in the run (None:
    read it now, also when it was absent then: another run may have made it since). An
    overwrite commits against the version it read: if another writer committed since, it
    reads the log again."""
    if existing is None:
        existing = lake.table(table, settings)
    if not len(frame) and existing is None:
        return  # nothing to keep, nothing to empty
    data = _arrow(frame) if len(frame) else existing.schema.empty_table()
    uri = lake.table_uri(table, settings)
    adds = lake.write_fragments(data, uri, PART, settings) if len(frame) else []
    lake.commit(uri, adds, data.schema, partition_by=PART, mode="overwrite_partitions",
                batch=lake.Batch(app_id), table=existing,
                replace_partitions=[dict(zip(PART, ym, strict=True)) for ym in sorted(months)],
                settings=settings)  # fmt: skip


def _gold_from_partials(p: Pipeline, golds, months, batch, types, settings) -> dict[str, tuple]:
    """Gold tables over a year or all time, from mergeable partial states: the touched
    months' partials are recomputed from their rows (and any month of the scope missing
    from one of its partial tables: on the first run, or after a failed one), stored per
    month, then the stored partials of the scope are combined. Exact: sums, counts and
    value counts add up."""
    c = p.curated
    curated_months = _months_of(c.table, settings)
    years = {y for y, _ in months}
    recompute = set(months)
    tables = [t for g in golds for t in p.partial_tables(g)]
    state = dict(zip(tables, in_threads(lambda t: _partials_state(t, settings),
                                        [(t,) for t in tables]), strict=True))  # fmt: skip
    for g in golds:
        scope = {ym for ym in curated_months if not p.gold_partition_by(g) or ym[0] in years}
        # Each of its partial tables (a quantile's value counts have their own) is its
        # own commit, so a run that failed between them can leave one without a month
        # another holds (a month whose values are all null has no counts, so it is
        # recomputed each time), or with a month's rows from before the run: a
        # successful run commits every existing one, so their last batches then differ.
        for table in p.partial_tables(g):
            recompute |= scope - state[table][0]
        if len({state[t][1] for t in p.partial_tables(g) if state[t][0]}) > 1:
            recompute |= scope
    recompute = sorted(recompute)
    zone = _zone(p)
    models = [g.model_copy(update={"by": [*g.by, *PART]}) for g in golds]
    with _curated_rows(c.table, _columns_needed(golds, types, c.partition_by),
                       _gold_filters(recompute, ["year", "month"]), settings) as frame:  # fmt: skip
        if is_dask(frame):  # each file's partials on the workers, combined there in a tree
            import dask

            parts = frame.to_delayed()
            computed = dask.compute(*[declared.combine_tree(
                [dask.delayed(_month_partials)(x, gm, zone) for x in parts], gm)
                for gm in models])  # fmt: skip
        else:
            computed = [declared.combine([_month_partials(frame, gm, zone)], gm)
                        for gm in models]  # fmt: skip
    partials = []  # (partials table, its rows of the recomputed months)
    for g, (wide, counts) in zip(golds, computed, strict=True):
        for name in [None, *counts]:
            f = _in_months(wide if name is None else counts[name], recompute, PART)
            partials.append((partials_table(g, name), f))
    # Independent tables, each its own commit: their S3 round trips overlap.
    in_threads(lambda table, f: _replace_months(
        table, f, recompute, f"{table}:{batch}", settings,
        state[table][2] if table in state else None), partials)  # fmt: skip

    # Every partial table of every gold read at once (route_stats has 7): None where the
    # table does not exist yet (no curated row in the scope, or no value of a measure).
    reads = [(t, [(PART[0], "in", sorted(years))] if p.gold_partition_by(g) else [])
             for g in golds for t in p.partial_tables(g)]  # fmt: skip
    del computed, partials  # every gold's partial states: no longer needed
    read = partial(lake.read_pandas, missing_ok=True, settings=settings)
    frames = dict(zip(tables, in_threads(lambda t, filters: read(t, filters=filters), reads),
                      strict=True))  # fmt: skip

    def stored(g) -> tuple | None:
        """The gold table from the stored partials of its scope."""
        rows = frames[partials_table(g)]
        if rows is None:
            return None  # no curated row in its scope yet
        stored_counts = {}
        for name, m in g.measures.items():
            if m.how != "quantile":
                continue
            counts = frames[partials_table(g, name)]
            stored_counts[name] = (
                pd.DataFrame(columns=[*g.group_keys(), "__value", "__count"])
                if counts is None else counts.drop(columns=PART))  # fmt: skip
        combined = declared.combine([(rows.drop(columns=PART), stored_counts)], g)
        return declared.finish(combined, g), p.gold_partition_by(g), declared.gold_schema(g, types)

    built = [stored(g) for g in golds]
    return {g.table: w for g, w in zip(golds, built, strict=True) if w is not None}


def in_threads(fn, calls: list[tuple]) -> list:
    """``fn(*args)`` for each of ``calls`` at once, in threads (independent S3 round trips
    overlap); each thread runs in a copy of this context, so log lines reach the task
    run in Prefect. At most 8 at once (a pipeline may declare many gold tables and
    measures). Results in order; the first error is raised once every call has ended."""
    contexts = [contextvars.copy_context() for _ in calls]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(calls)))) as pool:
        return list(pool.map(lambda ctx, args: ctx.run(fn, *args), contexts, calls))


# --------------------------------------------------------------------------- the flow


def _months(start: date, end: date) -> list[tuple[int, int]]:
    days = (start + timedelta(days=i) for i in range((end - start).days + 1))
    return sorted({(d.year, d.month) for d in days})


def _as_date(value: date | str | None) -> date | None:
    return value if value is None or isinstance(value, date) else date.fromisoformat(value)


def _report_artifacts(name: str, summary: dict[str, Any]) -> None:
    """The run's quality report (a table) and its accounting (markdown) in Prefect."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = name.replace("_", "-")
    if summary.get("quality"):
        create_table_artifact(
            key=f"{key}-quality", table=summary["quality"],
            description=f"{name}: rows checked, passed and failed per contract check",
        )  # fmt: skip
    lines = [
        f"# {name}: batch `{summary.get('batch')}`",
        "",
        "| table | in | loaded | quarantined | merged |",
        "|---|---:|---:|---:|---:|",
    ]
    land = summary.get("landing") or {}
    if land:
        lines.append(f"| {land['source']} (landed) | {land['rows_in']} | {land['rows_loaded']} "
                     f"| {land['rows_quarantined']} | 0 |")  # fmt: skip
    for src, s in summary.get("sources", {}).items():
        lines.append(f"| {src} | {s['rows_in']} | {s['rows_loaded']} | {s['rows_quarantined']} "
                     f"| {s['rows_in'] - s['rows_loaded'] - s['rows_quarantined']} |")  # fmt: skip
    if summary.get("curated_table"):
        lines.append(f"| {summary['curated_table']} | {summary['rows_in']} | "
                     f"{summary['rows_loaded']} | {summary['rows_quarantined']} | "
                     f"{summary['rows_merged']} |")  # fmt: skip
    for table, n in summary.get("gold_rows", {}).items():
        lines.append(f"| {table} (gold) | | {n} | | |")
    checks = summary.get("quarantine_checks") or {}
    if checks:
        lines += ["", "Quarantined by check: " + ", ".join(f"`{k}` {v}" for k, v in checks.items())]
    if summary.get("dashboard"):
        lines += ["", f"Dask dashboard: {summary['dashboard']}"]
    create_markdown_artifact(key=f"{key}-accounting", markdown="\n".join(lines),
                             description=f"{name}: the run's accounting")  # fmt: skip


def _dashboard_link() -> str | None:
    try:
        with get_dask_client() as client:
            return client.dashboard_link
    except Exception:
        return None


@dataclass
class Window:
    """What the landed files say about a run's months, before anything is read."""

    months: list[tuple[int, int]]  # the new drops' months and the run's window
    files: dict[tuple[int, int], dict[str, str]]  # landed files of each month: path -> identity
    batch: str  # named by those files and the landing manifest
    fingerprints: dict[str, str]  # "YYYY-MM" -> the fingerprint of its landed files
    built: dict[str, Any]  # "YYYY-MM" -> what built it (files, batch, ...), from the log
    current: dict[str, list[str]]  # batch -> months it built from exactly these files
    version: int | None = None  # the curated table's version ``built`` was read at


def _window(p: Pipeline, landing: dict[str, Any], drops: dict[str, Any],
            start: date | None, end: date | None) -> Window:  # fmt: skip
    """The months a run covers and what each holds (landed files listed, the curated
    table's state read; nothing else)."""
    table = p.curated.table
    window = _months(start, end) if start is not None and end is not None else []
    months = sorted({*map(tuple, drops["months"]), *window})
    files = {ym: month_files(table, *ym) for ym in months}
    landed = {path: s for f in files.values() for path, s in f.items()}
    # The batch: the landed files it reads and the landing manifest it commits.
    landed["manifest:" + landed_batch_id(drops["state"]["files"])] = 0
    fingerprints = {f"{y}-{m:02d}": landed_batch_id(files[(y, m)]) for y, m in months}
    built, current, version = {}, {}, None
    if months and any(files.values()):
        t = lake.table(table, get_settings())
        if t is not None:
            built, version = t.state(months_state_key(landing["name"])) or {}, t.version
        if drops["units"] == 0 and all(files.values()):
            current = current_months(built, fingerprints)
    return Window(months, files, landed_batch_id(landed), fingerprints, built, current, version)


def _plans(p: Pipeline, w: Window, landing: dict[str, Any], settings,
           whole: bool = False) -> tuple[list[MonthPlan], dict[str, Any]]:  # fmt: skip
    """How each month of ``w`` is curated (:func:`plan_month`), and the versions of the
    curated and quarantine tables a merge reads (``whole``: every month rebuilt)."""
    key = months_state_key(landing["name"])
    quarantined, qversion = {}, None
    if not whole and p.curated.row_wise and any("landed" in b for b in w.built.values()):
        q = lake.table(quarantine_table(p.curated.table), settings)
        if q is not None:
            quarantined, qversion = q.state(key) or {}, q.version
    plans, fingerprint = [], curated_fingerprint(p)
    for y, m in w.months:
        ym = f"{y}-{m:02d}"
        if whole:
            files = sorted(w.files[(y, m)], key=landing_order)
            plans.append(MonthPlan(files, None, "another writer committed while it merged"))
        else:
            plans.append(plan_month(w.built.get(ym), w.files[(y, m)], quarantined.get(ym),
                                    p.curated.row_wise, fingerprint))  # fmt: skip
    return plans, {"curated": w.version, "quarantine": qversion}


def _gold_batches(w: Window) -> list[tuple[list[tuple[int, int]], str]]:
    """The (months, batch) gold is built for when no month needs transforming: every
    month each current batch built (not only this window's: its gold is one commit), or
    the window's own batch already committed."""
    if w.current:
        return [([tuple(map(int, ym.split("-"))) for ym in sorted(
            ym for ym, d in w.built.items() if d["batch"] == done)], done)
            for done in w.current]  # fmt: skip
    return [(w.months, w.batch)]


def _curated_has_rows(p: Pipeline, settings) -> bool:
    """False while the curated table does not exist or holds only quarantine so far:
    there is no gold to build then."""
    curated = lake.table(p.curated.table, settings)
    return curated is not None and curated.rows() > 0


def gold_pending(p: Pipeline, batch: str, settings) -> list:
    """The gold tables whose log does not hold ``batch`` yet (their logs read at once)."""
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(p.gold)))) as pool:
        held = pool.map(lambda g: lake.committed(g.table, f"{g.table}:{batch}", settings), p.gold)
        return [g for g, done in zip(p.gold, list(held), strict=True) if not done]


SKIPPED = {"rows_in": 0, "rows_loaded": 0, "rows_quarantined": 0, "rows_merged": 0,
           "curated_skipped": True, "curated_version": None}  # fmt: skip
NOTHING = {"rows_in": 0, "rows_loaded": 0, "rows_quarantined": 0}


def _nothing_to_do(p: Pipeline, landing, start, end, settings) -> dict[str, Any] | None:
    """When no source has anything new: the summary of a run with no data work (every
    month of the window built from exactly its landed files, every gold table holding
    its batch), or None when something is left to do (a run that died between commits).
    Learnt from the lake's logs and a listing, in the flow's process."""
    logger = get_run_logger()
    if landing is None:
        return {}
    state = lake.read_state(p.curated.table, landing["name"], settings) or {"files": {}}
    w = _window(p, landing, {"months": [], "state": state, "units": 0}, start, end)
    out = {"batch": w.batch, "curated_table": p.curated.table,
           "months": [f"{y}-{m:02d}" for y, m in w.months], **SKIPPED,
           "landing": {"source": landing["name"], "units": 0, **NOTHING}}  # fmt: skip
    if not any(w.files.values()):
        logger.info("%s: nothing new and nothing landed for %s: nothing to do", p.name, w.months)
        return {**out, "gold_rows": {}}
    if not w.current and not lake.committed(p.curated.table, f"{p.curated.table}:{w.batch}",
                                            settings):  # fmt: skip
        return None
    has_gold = bool(p.gold) and _curated_has_rows(p, settings)  # as build_gold decides
    if has_gold and any(gold_pending(p, batch, settings) for _, batch in _gold_batches(w)):
        return None
    logger.info("%s: nothing new; months %s already hold exactly their landed files "
                "(batches %s) and every gold table holds its batch: no data work, no cluster",
                p.name, sorted(w.fingerprints), sorted(w.current or [w.batch]))  # fmt: skip
    return {**out, "gold_rows": {g.table: 0 for g in p.gold} if has_gold else {}}


def _curate(p: Pipeline, w: Window, landing, drops, settings, whole: bool = False) -> dict:
    """Transform the window's months on the workers (each whole, or only its new files
    merged into what it holds) and commit them."""
    logger = get_run_logger()
    plans, base = _plans(p, w, landing, settings, whole)
    futures = []
    for (y, m), plan in zip(w.months, plans, strict=True):
        if plan.new == []:  # nothing new: the month is kept as it is, no task
            logger.info("%d-%02d: nothing new, kept", y, m)
            futures.append(None)
        elif plan.new is None:
            logger.info("%d-%02d: curated whole (%s)", y, m, plan.why)
            futures.append(transform_month.submit(p.name, y, m, plan.files))
        else:
            logger.info("%d-%02d: %s merged into its rows", y, m, plan.why)
            futures.append(transform_month.submit(p.name, y, m, plan.files, plan.new,
                                                  {**base, "joins": w.built[f"{y}-{m:02d}"]
                                                   .get("joins", {})}))  # fmt: skip
    landed = {f"{y}-{m:02d}": {_name(path): size for path, size in w.files[(y, m)].items()}
              for y, m in w.months}  # fmt: skip
    results = [KEPT if f is None else f.result() for f in futures]
    return commit_curated(p.name, results, w.months, w.batch, drops["state"], w.fingerprints,
                          landed, base)  # fmt: skip


#: What a month with nothing new gives the commit: nothing read, nothing replaced.
KEPT = {"mode": "kept", "adds": [], "rows_in": 0, "merged": 0, "rows_loaded": 0,
        "rows_replaced": 0, "quarantine": None, "rows_quarantined": 0, "quarantine_checks": {},
        "failures": {}, "checked": 0, "joins": {}}  # fmt: skip


def run_pipeline(name: str, start: date | str | None = None,
                 end: date | str | None = None) -> dict[str, Any]:  # fmt: skip
    """Run declared pipeline ``name``: its sources, its curated table, its gold tables."""
    logger = get_run_logger()
    export_storage_credentials()
    start, end = _as_date(start), _as_date(end)
    if start is not None and end is not None and end < start:
        raise ValueError(f"end {end} is before start {start}")
    settings = get_settings()
    lake.check_store(settings)
    p = pipelines.pipeline(name, settings)
    landing = p.landing_source()
    table_sources = [s["name"] for s in p.sources if s is not landing]
    summary: dict[str, Any] = {"pipeline": name, "batch": None}
    pending = check_sources(name)  # in this process, before anything is written
    if not any(pending.values()):
        quiet = _nothing_to_do(p, landing, start, end, settings)
        if quiet is not None:  # no data work: the cluster is never started
            summary.update(sources={s: dict(NOTHING) for s in table_sources}, **quiet,
                           dashboard=None)  # fmt: skip
            logger.info("%s run: %s", name, summary)
            _report_artifacts(name, summary)
            return summary
    check_cluster.submit().result()  # the cluster's versions, before the first write
    futures = [ingest_source.submit(name, s) for s in table_sources]
    if landing is not None:  # landed while the table sources load
        drops = land_files.submit(name, landing["name"]).result()
    dims = {d["source"]: d for d in (f.result() for f in futures)}  # the steps join them
    del futures  # held futures would be recomputed when the worker holding them dies
    summary["sources"] = {k: {f: v[f] for f in ("rows_in", "rows_loaded", "rows_quarantined")}
                          for k, v in dims.items()}  # fmt: skip
    if landing is None:
        logger.info("%s run: %s", name, summary)
        _report_artifacts(name, summary)
        return summary
    table = p.curated.table
    w = _window(p, landing, drops, start, end)
    months, batch = w.months, w.batch
    if drops["units"] == 0 and not any(w.files.values()):
        # Nothing new arrived and nothing landed for the window: no table to touch.
        logger.info("%s: nothing new and nothing landed for %s: nothing to do", name, months)
        counts, gold = SKIPPED, {}
    elif w.current or lake.committed(table, f"{table}:{batch}", settings):
        # Nothing new, and every month of the window was built from exactly the files it
        # has landed (whatever window built it), or this batch is committed: only gold
        # may lag (a run that died between the commits), and its tables' logs say so.
        if w.current:
            logger.info("months %s already hold exactly their landed files (batches %s)",
                        sorted(w.fingerprints), sorted(w.current))  # fmt: skip
        else:
            logger.info("batch %s is already committed; nothing to transform", batch)
        counts, gold = SKIPPED, {}
        for yms, done in _gold_batches(w):
            part = build_gold.submit(name, yms, done).result()
            gold = {t: gold.get(t, 0) + rows for t, rows in part.items()}
    else:
        try:
            counts = _curate(p, w, landing, drops, settings)
        except lake.CommitConflict as e:  # another writer committed since we read
            logger.warning("%s; months %s are planned again, whole", e, months)
            w = _window(p, landing, drops, start, end)
            if lake.committed(table, f"{table}:{batch}", settings):  # it was this batch
                counts = SKIPPED
            else:
                counts = _curate(p, w, landing, drops, settings, whole=True)
        gold = build_gold.submit(name, months, batch).result()
    summary.update(
        batch=batch,
        curated_table=table,
        months=[f"{y}-{m:02d}" for y, m in months],
        **counts,
        landing={"source": landing["name"],
                 **{k: drops[k] for k in ("units", "rows_in", "rows_loaded", "rows_quarantined")}},
        gold_rows=gold,
        dashboard=_dashboard_link(),
    )  # fmt: skip
    logger.info("%s run: %s", name, {k: v for k, v in summary.items() if k != "quality"})
    _report_artifacts(name, summary)
    return summary


def run_name_of(name: str):
    """A run is named after its pipeline and window: ``flights 2013-02-05``,
    ``flights 2013-01-01..2013-12-31``, or ``flights new data`` without a window."""

    def run_name() -> str:
        from prefect.runtime import flow_run

        params = flow_run.parameters
        start, end = params.get("start"), params.get("end")
        if start is None or end is None:
            return f"{name} new data"
        start, end = str(start), str(end)
        return f"{name} {start}" if start == end else f"{name} {start}..{end}"

    return run_name


@cache
def declared_flow(name: str) -> Flow:
    """The Prefect flow of declared pipeline ``name``: the generic flow under the
    pipeline's name, its task runner sized by the declaration, its retries declared."""
    p = pipelines.pipeline(name, get_settings())

    def body(start: date | None = None, end: date | None = None) -> dict[str, Any]:
        return run_pipeline(name, start, end)

    body.__name__ = body.__qualname__ = name
    body.__doc__ = p.description or f"The declared pipeline {name}."
    return flow(
        name=name,
        flow_run_name=run_name_of(name),
        task_runner=pipeline_task_runner(name),  # the edge of a deployment's run
        log_prints=True,
        retries=p.retries,
        retry_delay_seconds=30,
        persist_result=True,  # the run summary, on the lake (see flows.runner)
    )(body)


def __getattr__(attr: str) -> Flow:
    """``riverlake.flows.pipeline:<name>``: a deployment's entrypoint for any declared
    pipeline (Prefect imports the module and takes the attribute)."""
    if attr.startswith("__"):
        raise AttributeError(attr)
    try:
        return declared_flow(attr)
    except Exception as e:
        raise AttributeError(f"no declared pipeline {attr!r}: {e}") from None
