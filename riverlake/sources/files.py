"""Files connector: CSV, JSON lines and Parquet, plain, gzip or zstd; local, S3 or HTTP.

Incremental by a manifest of the files already ingested (path -> size and etag, or
mtime where the store has no etag): a re-run reads only new or changed files. Each
file is one unit, read on a Dask worker. A file that cannot be read (corrupt gzip,
truncated Parquet, invalid UTF-8, a wrong delimiter, a duplicate CSV column) is
quarantined whole with the reason and its original bytes, and counts as one record in
and one quarantined.

Inputs are bounded: a file is read and decompressed in a stream that stops at
``max_file_bytes`` (Settings), so a compression bomb is never inflated whole; a larger
file is quarantined with the cap in its reason and only the first
:data:`~riverlake.sources.base.ORIGINAL_PREFIX_BYTES` of its bytes. A JSON line nested
deeper than ``max_json_depth`` is quarantined before pyarrow's reader sees it (that
reader segfaults on deep nesting); the file's other lines load.

A file is read exactly as the manifest records it: its size and etag are taken before
and after the read and compared with the bytes read; a file that changed meanwhile is
read again (:data:`READ_TRIES` reads at most, then the unit fails and the next run plans
the file again), and the manifest records the size and etag of the bytes actually read,
which may be newer than the plan's.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from riverlake import lake
from riverlake.settings import Settings
from riverlake.sources.base import (
    ORIGINAL_PREFIX_BYTES,
    Bad,
    SourceError,
    UnitOut,
    deep_json_lines,
    json_too_deep_reason,
    one_line,
    read_capped,
)
from riverlake.sources.spec import FileSource

_CODECS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}
#: Reads of one file that found it changing before the unit fails.
READ_TRIES = 3
#: JSON lines quarantined one by one, at most, before a file is quarantined whole.
MAX_BAD_LINES = 1000
_READ_CHUNK = 1 << 20
_FIRST_LINE = re.compile(rb"[^\r\n]*")  # Arrow's CSV reader ends a line at \r, \n or \r\n


def source_filesystem(url: str, settings: Settings) -> fsspec.AbstractFileSystem:
    """The filesystem of ``url``; S3 uses the lake's endpoint and credentials."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol == "s3":
        return fsspec.filesystem("s3", **lake.fs_options(settings))
    return fsspec.filesystem(protocol)


def _full(url: str, path: str) -> str:
    if "://" in url and "://" not in path:
        return f"{url.split('://', 1)[0]}://{path}"
    return path


def _tag(info: dict[str, Any]) -> str:
    for k in ("ETag", "etag", "mtime", "LastModified", "last_modified", "Last-Modified",
              "Content-MD5", "Digest"):  # fmt: skip
        if info.get(k) is not None:
            return str(info[k]).strip('"')
    return ""


def listing(spec: FileSource, settings: Settings) -> dict[str, tuple[int, str]]:
    """Every file the source's glob matches: path -> (size, etag or mtime)."""
    fs = source_filesystem(spec.url, settings)
    try:
        fs.invalidate_cache()
        found = fs.glob(spec.url, detail=True)
    except FileNotFoundError:
        return {}
    except Exception as e:
        raise SourceError(f"source {spec.name!r}: cannot list {spec.url}: {one_line(e)}") from e
    out = {}
    for path, info in found.items():
        if info.get("type", "file") == "directory":
            continue
        if info.get("size") is None or not _tag(info):  # HTTP listings: ask each file
            info = {**info, **fs.info(path)}
        out[_full(spec.url, path)] = (int(info.get("size") or 0), _tag(info))
    return out


def plan(spec: FileSource, state: dict | None, settings: Settings) -> list[dict[str, Any]]:
    manifest = (state or {}).get("files", {})
    return [
        {"path": p, "size": size, "tag": tag}
        for p, (size, tag) in sorted(listing(spec, settings).items())
        if manifest.get(p) != [size, tag]
    ]


def next_state(spec, state, units, outs) -> dict[str, Any]:
    """The manifest after this batch: each file's size and etag as read (the plan's
    when the file did not change between plan and read)."""
    manifest = dict((state or {}).get("files", {}))
    read_as = {o.state["path"]: o.state for o in outs if isinstance(o.state, dict)}
    for u in units:
        entry = read_as.get(u["path"], u)
        manifest[u["path"]] = [entry["size"], entry["tag"]]
    return {"files": manifest}


def codec(spec: FileSource, path: str) -> str | None:
    if spec.compression == "none":
        return None
    if spec.compression != "infer":
        return spec.compression
    return _CODECS.get(posixpath.splitext(path)[1].lower())


def _buffer(data: bytes | bytearray) -> pa.BufferReader:
    return pa.BufferReader(pa.py_buffer(data))


def _csv_names(spec: FileSource, data: bytes | bytearray) -> list[str]:
    """The header's column names, parsed as CSV (quotes, a BOM); ValueError naming a
    duplicate. Arrow is then given these names, so every column is read as text."""
    header = bytes(_FIRST_LINE.match(data).group())
    try:
        text = header.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"invalid UTF-8 in the header: {e}") from e
    try:
        names = next(csv.reader([text], delimiter=spec.delimiter), [])
    except (csv.Error, TypeError) as e:
        raise ValueError(f"unreadable header: {one_line(e)}") from e
    if not names:
        raise ValueError("no header")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ValueError(f"duplicate column {n[:80]!r} in the header")
        seen.add(n)
    return names


def _utf8(data: bytes | bytearray) -> bool:
    """Whether ``data`` is valid UTF-8 (Arrow's validation, without a Python copy)."""
    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64))
    try:
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)]).validate(
            full=True
        )
    except pa.ArrowInvalid:
        return False
    return True


def _bad_json_lines(data: bytes | bytearray, limit: int) -> dict[int, str]:
    """The lines of JSON lines ``data`` that pyarrow's reader must never see, with the
    reason: nested deeper than ``limit``, not a JSON object (the reader segfaults on deep
    nesting, and on a first line ``null``), or not UTF-8 (the reader would load the bytes
    as strings that are not text). Numbered from 0; blank lines are fine.
    More than :data:`MAX_BAD_LINES` of them make the file unreadable (ValueError)."""
    problems = {i: f"{json_too_deep_reason(limit)} (line {i + 1})"
                for i in deep_json_lines(data, limit)}  # fmt: skip
    a = np.frombuffer(data, dtype=np.uint8)
    starts = np.concatenate(([0], np.flatnonzero(a == 0x0A) + 1))
    starts = starts[starts < a.size]
    for i in np.flatnonzero(a[starts] != 0x7B).tolist():  # lines not starting with "{"
        if i in problems or len(problems) > MAX_BAD_LINES:
            continue
        end = data.find(b"\n", starts[i])
        line = bytes(data[starts[i] : None if end < 0 else end]).strip(b" \t\r")
        if line and not line.startswith(b"{"):
            problems[i] = f"line {i + 1} is not a JSON object"
    if not _utf8(data):  # pyarrow's reader would load the bytes as they are
        for i, line in enumerate(bytes(data).split(b"\n")):
            if len(problems) > MAX_BAD_LINES:
                break
            if i not in problems and not _utf8(line):
                problems[i] = f"line {i + 1} is not valid UTF-8"
    if len(problems) > MAX_BAD_LINES:
        first = min(problems)
        raise ValueError(f"{problems[first]}, and more than {MAX_BAD_LINES} lines like it")
    return problems


def decode(
    spec: FileSource, path: str, data: bytes | bytearray, settings: Settings
) -> tuple[pa.Table, list[Bad]]:
    """Parse one file's (decompressed) bytes into a table and the lines quarantined on
    the way (JSON lines nested too deep); raises ValueError or an Arrow error naming
    what makes the whole file unreadable."""
    bad: list[Bad] = []
    if spec.format == "parquet":
        table = pq.read_table(_buffer(data))
    elif spec.format == "jsonl":
        problems = _bad_json_lines(data, settings.max_json_depth)
        if problems:  # never handed to pyarrow, which segfaults on them
            lines = bytes(data).split(b"\n")
            bad = [Bad(path, reason, lines[i]) for i, reason in sorted(problems.items())]
            data = b"\n".join(line for i, line in enumerate(lines) if i not in problems)
        if problems and not data.strip():
            table = pa.table({c: pa.array([], pa.string()) for c in spec.columns})
        else:
            table = pajson.read_json(_buffer(data))
    else:
        names = _csv_names(spec, data)
        table = pacsv.read_csv(
            _buffer(data),
            read_options=pacsv.ReadOptions(encoding="utf8", column_names=names, skip_rows=1),
            parse_options=pacsv.ParseOptions(delimiter=spec.delimiter),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=True
            ),
        )
    try:  # no reader checks every value: Parquet or a JSON escape may hold invalid UTF-8
        table.validate(full=True)
    except pa.ArrowInvalid as e:
        raise ValueError(f"invalid data: {one_line(e)}") from e
    dup = next((c for i, c in enumerate(table.column_names) if c in table.column_names[:i]), None)
    if dup is not None:
        raise ValueError(f"duplicate column {dup[:80]!r}")
    missing = [c for c in spec.columns if c not in table.column_names]
    if missing:
        seen = ",".join(table.column_names)[:80]
        raise ValueError(
            f"missing column {missing[0]!r} (found {seen!r}; wrong delimiter or format?)"
        )
    return table, bad


def _stat(fs: fsspec.AbstractFileSystem, path: str) -> tuple[int, str, int | None]:
    """A file's manifest entry (size, etag or mtime) now, and its size if the store knows it."""
    fs.invalidate_cache(path)
    info = fs.info(path)
    size = info.get("size")
    return int(size or 0), _tag(info), None if size is None else int(size)


def _read_raw(fs: fsspec.AbstractFileSystem, path: str, cap: int) -> tuple[bytearray, bool]:
    """The file's bytes; or its first ``cap + 1`` bytes and True when it is larger."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    streaming = {"block_size": 0} if "http" in protocols else {}  # one GET, no ranges
    with fs.open(path, "rb", **streaming) as f:
        return read_capped(f, cap, _READ_CHUNK)


def _inflate(raw: bytearray, kind: str, cap: int) -> tuple[bytearray, bool]:
    """``raw`` decompressed in a stream; stops past ``cap`` bytes (True: over the cap)."""
    try:
        return read_capped(pa.CompressedInputStream(_buffer(raw), kind), cap, _READ_CHUNK)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"corrupt {kind} data: {one_line(e)}") from e


class _TooLarge(ValueError):
    """A file over ``max_file_bytes``: quarantined with a bounded prefix of its bytes."""


def _fetch(spec: FileSource, fs, path: str, cap: int) -> tuple[bytearray, bool, int, str]:
    """Read ``path`` (at most ``cap + 1`` bytes) while it holds still: its bytes, whether
    it exceeds the cap, and the size and etag of what was read."""
    for _ in range(READ_TRIES):
        try:
            before = _stat(fs, path)
            raw, over = _read_raw(fs, path, cap)
            size, tag, known = after = _stat(fs, path)
        except Exception as e:
            raise SourceError(f"source {spec.name!r}: cannot read {path}: {one_line(e)}") from e
        if before == after and (over or known is None or len(raw) == known):
            return raw, over, size, tag
    raise SourceError(
        f"source {spec.name!r}: {path} changed while it was read ({READ_TRIES} tries); "
        "the next run plans it again"
    )


def read(spec: FileSource, settings: Settings, unit: dict[str, Any]) -> UnitOut:
    """Read one file: its rows (landed, for a landing sink), what was quarantined, and the
    manifest entry of the bytes read (``state``, for :func:`next_state`)."""
    path, cap = unit["path"], settings.max_file_bytes
    fs = source_filesystem(spec.url, settings)
    raw, over, size, tag = _fetch(spec, fs, path, cap)
    state = {"path": path, "size": size, "tag": tag}
    kind = codec(spec, path)
    try:
        if over:
            raise _TooLarge(f"file size exceeds max_file_bytes={cap}")
        data = raw
        if kind:
            data, over = _inflate(raw, kind, cap)
            if over:
                raise _TooLarge(f"decompressed size exceeds max_file_bytes={cap}")
        table, bad = decode(spec, path, data, settings)
        landing = _landing(spec, settings, path, table) if spec.sink == "landing" else None
    except _TooLarge as e:  # the original is a bounded prefix: the file may be huge
        return UnitOut(bad=[Bad(path, str(e), bytes(raw[:ORIGINAL_PREFIX_BYTES]))], rows_in=1,
                       state=state)  # fmt: skip
    except (ValueError, OSError, pa.ArrowException) as e:
        reason = f"unreadable {spec.format} file: {one_line(e)}"
        return UnitOut(bad=[Bad(path, reason, bytes(raw))], rows_in=1, state=state)
    out = UnitOut(table=table, bad=bad, rows_in=table.num_rows + len(bad), state=state)
    if landing is not None:
        blobs, months, rejects = landing
        _write_landed(settings, blobs)
        out.info = {path: months}
        out.bad += rejects
        out.rows_loaded = table.num_rows - len(rejects)
        out.table = None
    return out


def landed_name(path: str) -> str:
    """A drop's landed name: its name without the compression suffix, ending in .csv.

    Files of one month are read in name order and the last record of a flight wins, so
    a later-named drop for a day (``flights-2013-06-01.update-1.csv.gz``) updates it.
    """
    name = posixpath.basename(path)
    base, ext = posixpath.splitext(name)
    if ext.lower() in _CODECS:
        name = base
    return name if name.lower().endswith(".csv") else f"{posixpath.splitext(name)[0]}.csv"


_YEAR, _MONTH = r"^[0-9]{1,4}$", r"^[0-9]{1,2}$"  # plain ASCII digits, nothing else


def _text(table: pa.Table, name: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise ValueError(f"missing column {name!r}")
    col = table[name]
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col
    try:
        return pc.cast(col, pa.string())
    except pa.ArrowException as e:
        raise ValueError(f"column {name!r} is {col.type}, not a year or month") from e


def _calendar_reason(year: Any, month: Any, year_ok: bool) -> str:
    field, value, span = ("year", year, "1-9999") if not year_ok else ("month", month, "1-12")
    if value is None or value == "":
        return f"{field} is missing"
    return f"{field} {value[:40]!r} is not a plain ASCII calendar {field} ({span})"


def _landing(
    spec: FileSource, settings: Settings, path: str, table: pa.Table
) -> tuple[dict[str, bytes], list[str], list[Bad]]:
    """One file's rows as landed CSV blobs (path -> bytes), the months they touch, and the
    rows whose year or month is not a plain ASCII calendar year (1-9999) or month (1-12):
    those have no partition to land in, so they are quarantined, one by one, with the
    reason. Nothing is written: a file that cannot be landed raises ValueError or an
    Arrow error before any of it is."""
    root = lake.strip_scheme(lake.landing_uri(spec.table, settings))
    stem = landed_name(path)
    if spec.landing_time is not None:  # the local month of an event time, as curation reads it
        import pandas as pd

        from riverlake.analytics.declared import parse_time

        kind = (spec.schema_ or {}).get(spec.landing_time, "timestamp")
        text = pd.Series(_text(table, spec.landing_time).to_pandas(), dtype="string")
        when, _ = parse_time(text, "date" if kind == "date" else "timestamp",
                             spec.landing_time_zone)  # fmt: skip
        if kind != "date":
            when = when.dt.tz_convert(spec.landing_time_zone)
        when = pd.to_datetime(when)
        y = pa.array(when.dt.year.astype("Int64").astype("string").fillna(""), pa.string())
        m = pa.array(when.dt.month.astype("Int64").astype("string").fillna(""), pa.string())
    else:
        y, m = (pc.fill_null(_text(table, c), "") for c in ("year", "month"))
    y_ok, m_ok = pc.match_substring_regex(y, _YEAR), pc.match_substring_regex(m, _MONTH)
    yi = pc.cast(pc.if_else(y_ok, y, "0"), pa.int32())
    mi = pc.cast(pc.if_else(m_ok, m, "0"), pa.int32())
    y_ok = pc.and_(y_ok, pc.greater_equal(yi, 1))
    m_ok = pc.and_(m_ok, pc.and_(pc.greater_equal(mi, 1), pc.less_equal(mi, 12)))
    ok = pc.and_(y_ok, m_ok)
    good = table.filter(ok)
    yi, mi = yi.filter(ok), mi.filter(ok)
    keys = sorted(set(zip(yi.to_pylist(), mi.to_pylist(), strict=True)))
    blobs = {}
    for year, month in keys:
        part = good.filter(pc.and_(pc.equal(yi, year), pc.equal(mi, month)))
        buf = io.BytesIO()
        pacsv.write_csv(part, buf)
        blobs[f"{root}/year={year}/month={month:02d}/{stem}"] = buf.getvalue()
    notok = pc.invert(ok)
    if spec.landing_time is not None:
        col = spec.landing_time
        return blobs, [f"{y}-{m:02d}" for y, m in keys], [
            Bad(path, f"{col} {str(row.get(col))[:40]!r} is not a date (YYYY-MM-DD) with a "
                "calendar month", json.dumps(row, default=str).encode())
            for row in table.filter(notok).to_pylist()
        ]  # fmt: skip
    rejects = [
        Bad(path, _calendar_reason(yv, mv, yk), json.dumps(row, default=str).encode())
        for row, yv, mv, yk in zip(
            table.filter(notok).to_pylist(),
            y.filter(notok).to_pylist(),
            m.filter(notok).to_pylist(),
            y_ok.filter(notok).to_pylist(),
            strict=True,
        )
    ]
    return blobs, [f"{y}-{m:02d}" for y, m in keys], rejects


def _write_landed(settings: Settings, blobs: dict[str, bytes]) -> None:
    fs = lake.filesystem(settings)
    if not settings.lake_is_s3:
        for p in {p.rsplit("/", 1)[0] for p in blobs}:
            fs.makedirs(p, exist_ok=True)
    if blobs:
        fs.pipe(blobs)


def land(spec: FileSource, settings: Settings, path: str, table: pa.Table) -> tuple[list, list]:
    """Write one file's rows as CSV under landing/<table>/year=/month=/.

    Returns the months touched and the rows whose year/month is not a plain ASCII
    calendar year/month (those are quarantined here: they have no partition to land in).
    The landed name is the drop's name, so re-landing a drop overwrites the same file
    with the same rows.
    """
    blobs, months, rejects = _landing(spec, settings, path, table)
    _write_landed(settings, blobs)
    return months, rejects
