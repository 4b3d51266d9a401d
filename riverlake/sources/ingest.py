"""One ingestion run of a source: plan, read in parallel, quarantine, commit with state.

Every connector (files, http, sql) has the same three steps:

- ``plan(spec, state, settings)``: the units of work still to read, given the state
  the source last committed (a file manifest, a cursor). Runs on the driver; an
  unreachable source or refused credentials raise :class:`SourceError` here, before
  anything is written.
- ``read(spec, settings, unit)``: read one unit (a file, a page range, a key range)
  into an Arrow table, or into quarantine records for what cannot be read. Runs on the
  Dask workers, in parallel.
- ``next_state(spec, state, units, outs)``: the state after this batch.

A keyed source's rows with a null in a key column are quarantined (``null key column
'x'``): a merge never matches a null key, so it would insert such a row on every run.

The driver then commits: quarantine first (a merge on (source, unit): idempotent),
then the data *with the new state in the same commit* (Delta commit metadata), so a
run killed at any point either committed both or neither. The batch id is a hash of
the state before and the plan, so a re-run after a crash re-reads the same units and
its commit is recognised (Delta application transaction) if it had landed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import pyarrow as pa

from riverlake import lake
from riverlake.errors import RiverlakeError
from riverlake.settings import Settings, get_settings
from riverlake.sources import files, http, sql, stream
from riverlake.sources.base import Bad, Mapper, UnitOut, batch_id, conform, quarantine

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    source: str
    table: str
    batch: str | None
    rows_in: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    rows_deduplicated: int = 0
    version: int | None = None
    skipped: bool = False
    state: Any = None
    units: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source, "table": self.table, "batch": self.batch,
            "units": self.units, "rows_in": self.rows_in, "rows_loaded": self.rows_loaded,
            "rows_quarantined": self.rows_quarantined,
            "rows_deduplicated": self.rows_deduplicated,
            "version": self.version, "skipped": self.skipped,
        }  # fmt: skip


def thread_map(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """Run ``fn`` over ``items`` on local threads (no cluster: tests, small sources)."""
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        return list(pool.map(fn, items))


def _run_unit(connector, spec, settings: Settings, unit: Any) -> UnitOut:
    """Read one unit on a worker; type its rows; write them unless the sink merges."""
    out = connector.read(spec, settings, unit)
    if out.table is not None:
        table, bad = conform(out.table, spec.arrow_schema(), _unit_name(unit))
        out.bad.extend(bad)
        out.table = table
        out.rows_loaded = table.num_rows
        if not spec.key and getattr(spec, "sink", "table") == "table" and table.num_rows:
            uri = lake.table_uri(spec.table, settings)
            out.adds = lake.write_fragments(table, uri, spec.partition_by, settings)
            out.table = None
    return out


def _refuse_null_keys(keys: Sequence[str], unit: Any, out: UnitOut) -> None:
    """Move the rows of ``out`` with a null key column to its quarantined things."""
    if out.table is None or not out.table.num_rows:
        return
    present = [k for k in keys if k in out.table.column_names]  # merge_table names the others
    out.table, refused = lake.null_key_rows(out.table, present)
    for row, reason in refused:
        original = json.dumps(row, sort_keys=True, default=str).encode()
        out.bad.append(Bad(_unit_name(unit), reason, original))
    out.rows_loaded -= len(refused)


def _unit_name(unit: Any) -> str:
    if isinstance(unit, dict):
        return str(unit.get("path") or unit.get("name") or json.dumps(unit, sort_keys=True))
    return str(unit)


# --------------------------------------------------------------------------- the run


def connector_for(kind: str):
    connectors = {"files": files, "http": http, "sql": sql}
    if kind not in connectors:
        raise RiverlakeError(f"source kind {kind!r} is not batch-ingestible (streams: consume())")
    return connectors[kind]


def reach_sources(specs, settings: Settings) -> dict[str, int]:
    """Reach every source before anything is written: plan each batch source (files
    listed, the API probed, the SQL table counted) and connect to each stream. An
    unreachable source or refused credentials raise SourceError naming it (the first
    such source in declaration order); the result is the number of units each batch
    source would read now (0: nothing new, or only a batch its table already holds).

    The sources are reached side by side (threads: each waits on its network round
    trips), so a pipeline of many sources costs about its slowest one."""
    import asyncio

    def reach(spec) -> int | None:
        if spec.kind == "stream":

            async def probe() -> None:
                nc = await stream.connect(spec)
                await nc.close()

            asyncio.run(probe())
            return None
        return len(_pending(spec, settings).units)

    if not specs:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(specs))) as pool:
        reached = [(spec, pool.submit(reach, spec)) for spec in specs]
        counts = [(spec, f.result()) for spec, f in reached]  # the first failure, in order
    return {spec.name: n for spec, n in counts if n is not None}


class Pending(NamedTuple):
    """What a run of a source would read now (see :func:`_pending`)."""

    conn: Any  # the source kind's connector module
    table: Any  # its table (None before the first commit)
    state: Any  # the state its table holds for the source
    units: list  # the units to read: none when nothing is new or the batch is in
    batch: str | None  # the batch those units make (None: nothing new)


def _pending(spec, settings: Settings) -> Pending:
    """What a run of ``spec`` would read now. No units when nothing is new (no batch
    either), or when what is new is a batch the table already holds (a run that
    committed it and died after). Read only."""
    conn = connector_for(spec.kind)
    table = lake.table(spec.table, settings)
    state = None if table is None else table.state(spec.name)
    units = conn.plan(spec, state, settings)
    if not units:
        return Pending(conn, table, state, [], None)
    batch = batch_id(spec.name, state, units)
    if table is not None and table.batch_version(f"{spec.name}:{batch}") is not None:
        return Pending(conn, table, state, [], batch)
    return Pending(conn, table, state, units, batch)


def ingest(
    spec,
    settings: Settings | None = None,
    mapper: Mapper = thread_map,
    commit_state: bool = True,
) -> IngestResult:
    """Read what is new in ``spec``'s source and commit it with the source's new state.

    ``commit_state=False`` (a landing sink) returns the new state without committing
    it: the caller commits it together with the table built from the landed files.
    """
    settings = settings or get_settings()
    uri = lake.table_uri(spec.table, settings)
    conn, table, state, units, batch = _pending(spec, settings)
    if not units and batch is None:
        log.info("source %s: nothing new", spec.name)
        return IngestResult(spec.name, spec.table, None, skipped=True, state=state)
    if not units:  # the batch is already in the table
        return IngestResult(spec.name, spec.table, batch, skipped=True, state=state,
                            version=table.version)  # fmt: skip
    app_id = f"{spec.name}:{batch}"
    outs: list[UnitOut] = mapper(partial(_run_unit, conn, spec, settings), units)
    new_state = conn.next_state(spec, state, units, outs)
    if spec.key and getattr(spec, "sink", "table") == "table":
        for unit, out in zip(units, outs, strict=True):
            _refuse_null_keys(spec.key, unit, out)
    bad = [b for o in outs for b in o.bad]
    if new_state == state and not any(o.rows_in for o in outs):
        return IngestResult(spec.name, spec.table, batch, skipped=True, state=state)
    res = IngestResult(
        spec.name, spec.table, batch, units=len(units), state=new_state,
        rows_in=sum(o.rows_in for o in outs), rows_quarantined=len(bad),
        info={k: v for o in outs for k, v in o.info.items()},
    )  # fmt: skip
    loaded = sum(o.rows_loaded for o in outs)
    quarantine(spec.name, bad, batch, settings)
    tables = [o.table for o in outs if o.table is not None and o.table.num_rows]
    commit_batch = lake.Batch(app_id, state={spec.name: new_state})
    schema = spec.arrow_schema()
    if getattr(spec, "sink", "table") == "landing":
        res.rows_loaded = loaded
    elif spec.key:
        table = pa.concat_tables(tables) if tables else None
        if table is not None:
            before = table.num_rows
            table = lake.last_per_key(table, spec.key)
            res.rows_deduplicated = before - table.num_rows
            res.rows_loaded = table.num_rows
            c = lake.merge_table(spec.table, table, spec.key, partition_by=spec.partition_by,
                                 app_id=app_id, settings=settings,
                                 state={spec.name: new_state})  # fmt: skip
        else:
            c = lake.commit(uri, [], schema or pa.schema([]), partition_by=spec.partition_by,
                            batch=commit_batch, settings=settings)  # fmt: skip
        res.version, res.skipped = c.version, c.skipped
    else:
        adds = [a for o in outs for a in o.adds]
        res.rows_loaded = loaded
        if commit_state:
            c = lake.commit(uri, adds, schema, partition_by=spec.partition_by,
                            batch=commit_batch, settings=settings)  # fmt: skip
            res.version, res.skipped = c.version, c.skipped
    log.info("source %s: %s", spec.name, res.summary())
    if res.rows_in != res.rows_loaded + res.rows_quarantined + res.rows_deduplicated:
        raise RiverlakeError(
            f"source {spec.name!r}: row accounting broken: {res.rows_in} in != "
            f"{res.rows_loaded} loaded + {res.rows_quarantined} quarantined + "
            f"{res.rows_deduplicated} deduplicated"
        )
    return res
