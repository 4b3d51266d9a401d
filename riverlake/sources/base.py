"""What every connector shares: the quarantine record, a unit's output, the source
error, and the typing of rows against a declared schema.

The connectors (files, http, sql, stream) import this module; the ingestion driver
(:mod:`riverlake.sources.ingest`) imports the connectors. Nothing here imports either.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from riverlake import lake
from riverlake.errors import RiverlakeError
from riverlake.settings import Settings

#: The platform's quarantine of what a source could not read, with the reason.
SOURCE_QUARANTINE_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("unit", pa.string()),
        ("reason", pa.string()),
        ("original", pa.binary()),
        ("batch", pa.string()),
        ("quarantined_at", pa.timestamp("us", tz="UTC")),
    ]
)

log = logging.getLogger(__name__)

Mapper = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]


class SourceError(RiverlakeError):
    """A source cannot be read at all (unreachable, credentials refused): the run fails."""


@dataclass
class Bad:
    """One quarantined thing: a file, a page, a record or a message, as it arrived."""

    unit: str
    reason: str
    original: bytes


@dataclass
class UnitOut:
    """What reading one unit gave: rows, quarantined things, and the unit's state."""

    table: pa.Table | None = None
    bad: list[Bad] = field(default_factory=list)
    rows_in: int = 0
    state: Any = None
    adds: list[dict[str, Any]] = field(default_factory=list)
    rows_loaded: int = 0
    info: dict[str, Any] = field(default_factory=dict)


def batch_id(source: str, state: Any, units: Sequence[Any]) -> str:
    h = hashlib.sha256(
        json.dumps([source, state, list(units)], sort_keys=True, default=str).encode()
    )
    return h.hexdigest()[:16]


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def conform(table: pa.Table, schema: pa.Schema | None, unit: str) -> tuple[pa.Table, list[Bad]]:
    """Cast ``table`` to ``schema``; the rows that do not cast are quarantined, one by one."""
    if schema is None:
        return table, []
    try:
        return table.select(schema.names).cast(schema), []
    except KeyError:  # a declared column is missing: every row is quarantined, whole
        rows = table.to_pylist()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        rows = table.select(schema.names).to_pylist()
    return records_to_table(rows, schema, unit)


def records_to_table(
    records: Sequence[dict[str, Any]], schema: pa.Schema | None, unit: str
) -> tuple[pa.Table, list[Bad]]:
    """JSON-like records as a table of ``schema``; records that do not fit are quarantined.

    A record that lacks a declared field does not fit (it is never loaded with a null).
    """
    if schema is None:
        return pa.Table.from_pylist(list(records)), []
    names = schema.names
    if all(n in rec for rec in records for n in names):
        try:
            return pa.Table.from_pylist(list(records), schema=schema), []
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            pass
    good, bad = [], []
    for rec in records:
        missing = [n for n in names if n not in rec]
        if missing:
            reason = f"missing field {missing[0]!r}"
        else:
            try:
                good.append(pa.Table.from_pylist([rec]).select(names).cast(schema))
                continue
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
                reason = one_line(e)
        bad.append(Bad(unit, reason, json.dumps(rec, default=str).encode()))
    return (pa.concat_tables(good) if good else schema.empty_table()), bad


def quarantine(source: str, bad: Sequence[Bad], batch: str, settings: Settings) -> int:
    """Merge quarantined things into the quarantine table (idempotent on source+unit+original)."""
    if not bad:
        return 0
    now = datetime.now(UTC)
    rows = {}
    for b in bad:
        key = f"{b.unit}#{hashlib.sha256(b.original).hexdigest()[:12]}"
        rows[key] = {"source": source, "unit": key, "reason": b.reason, "original": b.original,
                     "batch": batch, "quarantined_at": now}  # fmt: skip
    table = pa.Table.from_pylist(list(rows.values()), schema=SOURCE_QUARANTINE_SCHEMA)
    log.warning("source %s: %d quarantined (first: %s: %s)", source, len(bad), bad[0].unit,
                bad[0].reason)  # fmt: skip
    lake.merge_table(lake.SOURCE_QUARANTINE, table, ["source", "unit"], partition_by=["source"],
                     settings=settings)  # fmt: skip
    return len(bad)
