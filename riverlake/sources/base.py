"""What every connector shares: the quarantine record, a unit's output, the source
error, the typing of rows against a declared schema, and the guard on JSON nesting.

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

import numpy as np
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
        (lake.QUARANTINED_AT, pa.timestamp("us", tz="UTC")),  # what pruning goes by
    ]
)

#: Most bytes of a thing's original that the quarantine keeps when the thing exceeded an
#: input cap (``max_file_bytes``, ``max_response_bytes``): a bounded prefix, so a 2 GB file
#: or a compression bomb never lands whole in the quarantine table.
ORIGINAL_PREFIX_BYTES = 1 << 20

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
    """The error's first non-blank line, stripped, at most 300 characters (the line
    breaks are Python's: \x1c-\x1e and \u2028 too, which a value can carry)."""
    lines = (line.strip() for line in str(e).splitlines())
    first = next((line for line in lines if line), "")
    return first[:300].strip() or type(e).__name__


def read_capped(src, cap: int, step: int) -> tuple[bytearray, bool]:
    """At most ``cap + 1`` bytes of the stream ``src`` (``read(n)``), ``step`` at a time,
    and whether it holds more than ``cap``: a reader never holds more than the cap."""
    out = bytearray()
    while len(out) <= cap:
        chunk = src.read(min(step, cap + 1 - len(out)))
        if not chunk:
            return out, False
        out += chunk
    return out, True


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
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            pass  # some record does not fit: find which, one by one
    good, bad = [], []
    for rec in records:
        missing = [n for n in names if n not in rec]
        if missing:
            reason = f"missing field {missing[0]!r}"
        else:
            try:
                good.append(pa.Table.from_pylist([rec]).select(names).cast(schema))
                continue
            except (pa.ArrowException, OverflowError, TypeError, ValueError) as e:
                reason = one_line(e)  # e.g. an integer beyond 64 bits: OverflowError
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
                     "batch": batch, lake.QUARANTINED_AT: now}  # fmt: skip
    table = pa.Table.from_pylist(list(rows.values()), schema=SOURCE_QUARANTINE_SCHEMA)
    log.warning("source %s: %d quarantined (first: %s: %s)", source, len(bad), bad[0].unit,
                bad[0].reason)  # fmt: skip
    lake.merge_table(lake.SOURCE_QUARANTINE, table, ["source", "unit"], partition_by=["source"],
                     settings=settings)  # fmt: skip
    return len(bad)


# ------------------------------------------------------------------------- JSON nesting
#
# Deeply nested JSON is a denial of service: pyarrow's JSON reader segfaults on a line
# nested 20,000 deep, Python's json module raises RecursionError near 1,000, and any
# recursive code over the parsed value does too. So the depth is measured on the bytes,
# before a parser sees them: a vectorised scan (numpy) over the brackets that are not
# inside strings, in chunks of a few MiB so its memory stays bounded. It reads 100 MiB
# of bracket-dense JSON lines in 1-2.5 s on one busy core (a test measures it).
#
# The scan follows a parser byte for byte up to the first syntax error (after which the
# parser stops, so what the scan makes of the rest does not matter): a quote opens or
# closes a string unless an odd number of backslashes precedes it, and a raw newline
# ends a string (no JSON parser accepts one inside a string).

_CHUNK_BYTES = 4 << 20
_QUOTE, _BACKSLASH, _NEWLINE = 0x22, 0x5C, 0x0A
_OPENS, _CLOSES = 0x7B, 0x7D  # "{" and "}"; "[" and "]" are these minus 0x20


def json_too_deep_reason(limit: int) -> str:
    return f"JSON nested deeper than {limit} levels"


def _scan_chunk(
    a: np.ndarray, depth0: int, in_string0: int, lines: bool
) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """Nesting along one chunk, from its structural bytes (quotes, brackets, newlines).

    Returns each structural byte's segment (the newlines before it in the chunk, itself
    included) and the depth after it, then the depth, the in-string parity and the
    newline count at the chunk's end.
    """
    is_quote = a == _QUOTE
    q = np.flatnonzero(is_quote[1:]) + 1
    q = q[a[q - 1] == _BACKSLASH]  # quotes right after a backslash: escaped if its run is odd
    if q.size:
        backslashes = np.flatnonzero(a == _BACKSLASH)
        new_run = np.ones(backslashes.size, dtype=bool)
        new_run[1:] = np.diff(backslashes) != 1
        run_start = backslashes[new_run][np.cumsum(new_run) - 1]
        run = q - run_start[np.searchsorted(backslashes, q - 1)]
        is_quote[q[run % 2 == 1]] = False
    folded = a | 0x20
    is_open, is_close, is_newline = folded == _OPENS, folded == _CLOSES, a == _NEWLINE
    pos = np.flatnonzero(is_quote | is_open | is_close | is_newline)
    newline = is_newline[pos]
    seg = np.cumsum(newline, dtype=np.int32)
    quotes = np.cumsum(is_quote[pos], dtype=np.int32)
    quotes -= np.concatenate(([0], quotes[newline]))[seg]  # strings end at a newline
    outside = ((quotes + np.where(seg == 0, in_string0, 0)) & 1) == 0
    delta = (is_open[pos].astype(np.int32) - is_close[pos]) * outside
    depth = np.cumsum(delta)
    if lines:  # each line starts at depth 0 (the chunk's first at depth0)
        depth -= np.concatenate(([0], depth[newline]))[seg]
        depth += np.where(seg == 0, depth0, 0)
    else:
        depth += depth0
    if not pos.size:
        return seg, depth, depth0, in_string0, 0
    n = int(seg[-1])
    in_string = (int(quotes[-1]) + (in_string0 if n == 0 else 0)) & 1
    return seg, depth, int(depth[-1]), in_string, n


def _scan(data: bytes | bytearray | memoryview, lines: bool, chunk_bytes: int):
    """Yield (line numbers, depths) of the brackets outside strings, chunk by chunk."""
    a = np.frombuffer(data, dtype=np.uint8)
    depth, in_string, line, start = 0, 0, 0, 0
    while start < a.size:
        end = min(start + max(1, chunk_bytes), a.size)
        while end < a.size and a[end - 1] == _BACKSLASH:  # never split a backslash run
            end += 1
        seg, d, depth, in_string, n = _scan_chunk(a[start:end], depth, in_string, lines)
        yield seg + line, d
        line, start = line + n, end


def json_depth(data: bytes | bytearray | memoryview, *, chunk_bytes: int = _CHUNK_BYTES) -> int:
    """The deepest nesting of arrays and objects in one JSON document (0 for a scalar)."""
    deepest = (int(d.max()) for _, d in _scan(data, False, chunk_bytes) if d.size)
    return max(0, max(deepest, default=0))


def deeper_than(data: bytes | bytearray, limit: int) -> bool:
    """True when one JSON document ``data`` nests deeper than ``limit``. A document with no
    more opening brackets than the limit cannot (counting is far cheaper than scanning)."""
    return data.count(b"[") + data.count(b"{") > limit and json_depth(data) > limit


def deep_json_lines(
    data: bytes | bytearray | memoryview, limit: int, *, chunk_bytes: int = _CHUNK_BYTES
) -> list[int]:
    """The lines (numbered from 0) of JSON lines ``data`` nested deeper than ``limit``."""
    deep: set[int] = set()
    for lines, depths in _scan(data, True, chunk_bytes):
        deep.update(np.unique(lines[depths > limit]).tolist())
    return sorted(deep)
