"""Files connector: CSV, JSON lines and Parquet, plain, gzip or zstd; local, S3 or HTTP.

Incremental by a manifest of the files already ingested (path -> size and etag, or
mtime where the store has no etag): a re-run reads only new or changed files. Each
file is one unit, read on a Dask worker. A file that cannot be read (corrupt gzip,
truncated Parquet, invalid UTF-8, a wrong delimiter) is quarantined whole with the
reason and its original bytes, and counts as one record in and one quarantined.
"""

from __future__ import annotations

import io
import json
import posixpath
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from riverlake import lake
from riverlake.settings import Settings
from riverlake.sources.base import Bad, SourceError, UnitOut, one_line
from riverlake.sources.spec import FileSource

_CODECS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}


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
    manifest = dict((state or {}).get("files", {}))
    for u in units:
        manifest[u["path"]] = [u["size"], u["tag"]]
    return {"files": manifest}


def codec(spec: FileSource, path: str) -> str | None:
    if spec.compression == "none":
        return None
    if spec.compression != "infer":
        return spec.compression
    return _CODECS.get(posixpath.splitext(path)[1].lower())


def decode(spec: FileSource, path: str, blob: bytes) -> pa.Table:
    """Parse one file's bytes; raises ValueError or an Arrow error naming what is wrong."""
    kind = codec(spec, path)
    if kind:
        try:
            blob = pa.input_stream(io.BytesIO(blob), compression=kind).read()
        except (OSError, pa.ArrowException) as e:
            raise ValueError(f"corrupt {kind} data: {one_line(e)}") from e
    if spec.format == "parquet":
        table = pq.read_table(io.BytesIO(blob))
    elif spec.format == "jsonl":
        table = pajson.read_json(io.BytesIO(blob))
    else:
        header = blob.split(b"\n", 1)[0].rstrip(b"\r")
        try:
            names = header.decode("utf-8").split(spec.delimiter)
        except UnicodeDecodeError as e:
            raise ValueError(f"invalid UTF-8 in the header: {e}") from e
        table = pacsv.read_csv(
            io.BytesIO(blob),
            read_options=pacsv.ReadOptions(encoding="utf8"),
            parse_options=pacsv.ParseOptions(delimiter=spec.delimiter),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=True
            ),
        )
    missing = [c for c in spec.columns if c not in table.column_names]
    if missing:
        seen = ",".join(table.column_names)[:80]
        raise ValueError(
            f"missing column {missing[0]!r} (found {seen!r}; wrong delimiter or format?)"
        )
    return table


def read(spec: FileSource, settings: Settings, unit: dict[str, Any]) -> UnitOut:
    path = unit["path"]
    try:
        blob = source_filesystem(spec.url, settings).cat_file(path)
    except Exception as e:
        raise SourceError(f"source {spec.name!r}: cannot read {path}: {one_line(e)}") from e
    try:
        table = decode(spec, path, blob)
    except (ValueError, OSError, pa.ArrowException) as e:
        reason = f"unreadable {spec.format} file: {one_line(e)}"
        return UnitOut(bad=[Bad(path, reason, blob)], rows_in=1)
    out = UnitOut(table=table, rows_in=table.num_rows)
    if spec.sink == "landing":
        months, rejects = land(spec, settings, path, table)
        out.info = {path: months}
        out.bad = rejects
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


def land(spec: FileSource, settings: Settings, path: str, table: pa.Table) -> tuple[list, list]:
    """Write one file's rows as CSV under landing/<table>/year=/month=/.

    Returns the months touched and the rows whose year/month is not a month (those are
    quarantined here: they have no partition to land in). The landed name is the
    drop's name, so re-landing a drop overwrites the same file with the same rows.
    """
    fs = lake.filesystem(settings)
    root = lake.strip_scheme(lake.landing_uri(spec.table, settings))
    stem = landed_name(path)
    y, m = (pc.fill_null(pc.utf8_trim_whitespace(table[c]), "") for c in ("year", "month"))
    ok = pc.and_(pc.utf8_is_digit(y), pc.utf8_is_digit(m))
    mi = pc.cast(pc.if_else(ok, m, "0"), pa.int32())
    ok = pc.and_(ok, pc.and_(pc.greater_equal(mi, 1), pc.less_equal(mi, 12)))
    bad = table.filter(pc.invert(ok))
    good = table.filter(ok)
    yi = pc.cast(good["year"], pa.int32())
    mi = pc.cast(good["month"], pa.int32())
    keys = sorted(set(zip(yi.to_pylist(), mi.to_pylist(), strict=True)))
    blobs = {}
    for year, month in keys:
        part = good.filter(pc.and_(pc.equal(yi, year), pc.equal(mi, month)))
        buf = io.BytesIO()
        pacsv.write_csv(part, buf)
        blobs[f"{root}/year={year}/month={month:02d}/{stem}"] = buf.getvalue()
    if not settings.lake_is_s3:
        for p in {p.rsplit("/", 1)[0] for p in blobs}:
            fs.makedirs(p, exist_ok=True)
    if blobs:
        fs.pipe(blobs)
    rejects = [
        Bad(path, "year/month is not a calendar month", json.dumps(r).encode())
        for r in bad.to_pylist()
    ]
    return [f"{y}-{m:02d}" for y, m in keys], rejects
