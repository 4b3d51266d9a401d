"""The lake: Delta tables of partitioned Parquet on S3 (or a local path).

Writes follow one pattern: Dask workers write the Parquet files of their
partitions in parallel (:func:`write_fragments`), then the driver makes them
visible in a single atomic Delta commit (:func:`commit`). The commit carries an
application transaction (``app_id``, Delta's txn action) so a batch that was
committed once is never committed again.

Layout under ``settings.lake_url``::

    landing/<source>/...        raw batches, immutable
    tables/<name>/_delta_log    curated and gold Delta tables
"""

from __future__ import annotations

import json
import posixpath
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from riverlake.errors import LakeError
from riverlake.settings import Settings, get_settings

if TYPE_CHECKING:
    import dask.dataframe as dd
    import pandas as pd

WriteMode = Literal["append", "overwrite_partitions"]
Filter = tuple[str, str, Any]

TABLES = "tables"
#: How many of a table's latest commits the catalog lists batch ids from.
CATALOG_HISTORY = 100
#: Commit metadata key prefix of a source's state (cursor, manifest, stream sequence).
STATE_PREFIX = "riverlake.state."
COMMIT_RETRIES = 5
LANDING = "landing"


# --------------------------------------------------------------------------- locations


def fs_options(settings: Settings) -> dict[str, Any]:
    """fsspec (s3fs) options for the lake store."""
    if not settings.lake_is_s3:
        return {}
    opts: dict[str, Any] = {
        "client_kwargs": {"region_name": settings.s3_region},
        "config_kwargs": {"connect_timeout": 5, "retries": {"max_attempts": 3}},
    }
    if settings.s3_endpoint:
        opts["endpoint_url"] = settings.s3_endpoint
    if settings.s3_access_key and settings.s3_secret_key:
        opts["key"] = settings.s3_access_key.get_secret_value()
        opts["secret"] = settings.s3_secret_key.get_secret_value()
    return opts


def storage_options(settings: Settings) -> dict[str, str]:
    """deltalake (object_store) options for the lake store."""
    if not settings.lake_is_s3:
        return {}
    opts = {"AWS_REGION": settings.s3_region}
    if settings.s3_endpoint:
        opts["AWS_ENDPOINT_URL"] = settings.s3_endpoint
        if settings.s3_endpoint.startswith("http://"):
            opts["AWS_ALLOW_HTTP"] = "true"
        # SeaweedFS and S3 both honour If-None-Match on PUT, which makes the log's
        # put-if-absent safe without a DynamoDB lock.
        opts["AWS_CONDITIONAL_PUT"] = "etag"
    if settings.s3_access_key and settings.s3_secret_key:
        opts["AWS_ACCESS_KEY_ID"] = settings.s3_access_key.get_secret_value()
        opts["AWS_SECRET_ACCESS_KEY"] = settings.s3_secret_key.get_secret_value()
    return opts


def lake_root(settings: Settings) -> str:
    url = settings.lake_url.rstrip("/")
    if url.startswith("s3://"):
        return url
    return str(fsspec.core.url_to_fs(url)[0]._strip_protocol(url))


def filesystem(settings: Settings) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem of the lake store."""
    fs, _ = fsspec.core.url_to_fs(lake_root(settings), **fs_options(settings))
    return fs


def table_uri(name: str, settings: Settings) -> str:
    return f"{lake_root(settings)}/{TABLES}/{name}"


def landing_uri(source: str, settings: Settings) -> str:
    return f"{lake_root(settings)}/{LANDING}/{source}"


def strip_scheme(uri: str) -> str:
    return uri.split("://", 1)[1] if "://" in uri else uri


def check_store(settings: Settings) -> None:
    """Fail with one clear line when the lake store is unreachable or refuses our credentials."""
    fs = filesystem(settings)
    root = strip_scheme(lake_root(settings))
    try:
        if settings.lake_is_s3:
            bucket = root.split("/", 1)[0]
            fs.ls(bucket)
        else:
            fs.makedirs(root, exist_ok=True)
    except PermissionError as exc:
        raise LakeError(
            f"lake store {settings.s3_endpoint} refused the credentials "
            f"for {settings.lake_url}: {exc}"
        ) from None
    except FileNotFoundError:
        raise LakeError(
            f"lake bucket of {settings.lake_url} does not exist on {settings.s3_endpoint}"
        ) from None
    except Exception as exc:  # botocore/aiohttp connection errors are not OSErrors
        if type(exc).__name__ == "NoCredentialsError":
            raise LakeError(
                f"no S3 credentials for {settings.lake_url}: set RIVERLAKE_S3_ACCESS_KEY and "
                f"RIVERLAKE_S3_SECRET_KEY, or point RIVERLAKE_HOME at the state folder of "
                f"`riverlake up` (now {settings.home.resolve()})"
            ) from None
        raise LakeError(
            f"lake store {settings.s3_endpoint} is unreachable ({type(exc).__name__}); "
            "is the local stack up? run `riverlake up`"
        ) from None


# --------------------------------------------------------------------------- writing


def _stat_value(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat().replace("+00:00", "Z")
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v


def _file_stats(table: pa.Table) -> str:
    """Delta per-file statistics (numRecords, min, max, nullCount) for data skipping."""
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        nulls[name] = col.null_count
        t = col.type
        if (
            pa.types.is_integer(t)
            or pa.types.is_floating(t)
            or pa.types.is_string(t)
            or pa.types.is_large_string(t)
            or pa.types.is_date(t)
            or pa.types.is_timestamp(t)
        ) and col.null_count < len(col):
            mm = pc.min_max(col).as_py()
            mins[name], maxs[name] = _stat_value(mm["min"]), _stat_value(mm["max"])
    return json.dumps(
        {"numRecords": table.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls},
        default=str,
    )


def _partition_value(v: Any) -> str | None:
    return None if v is None else str(v)


def write_fragments(
    table: pa.Table,
    uri: str,
    partition_by: Sequence[str],
    settings: Settings | None = None,
) -> list[dict[str, Any]]:
    """Write one Parquet file per partition present in ``table`` under the table ``uri``.

    Runs on a Dask worker. Nothing becomes visible to readers until :func:`commit`
    adds the returned files to the log. Partition columns are kept out of the files,
    as Delta stores them in the log and the path. Returns plain-data add actions.
    """
    settings = settings or get_settings()
    fs = filesystem(settings)
    base = strip_scheme(uri)
    if table.num_rows == 0:
        return []
    groups: Iterable[tuple[dict[str, Any], pa.Table]]
    if partition_by:
        keys = table.select(list(partition_by)).group_by(list(partition_by)).aggregate([])
        groups = []
        for key in keys.to_pylist():
            mask = None
            for col, val in key.items():
                m = pc.is_null(table[col]) if val is None else pc.equal(table[col], val)
                mask = m if mask is None else pc.and_(mask, m)
            groups.append((key, table.filter(mask).drop_columns(list(partition_by))))
    else:
        groups = [({}, table)]
    adds = []
    for key, part in groups:
        rel_dir = "/".join(
            f"{k}={'__HIVE_DEFAULT_PARTITION__' if v is None else v}" for k, v in key.items()
        )
        rel = posixpath.join(rel_dir, f"part-{uuid.uuid4().hex}.zstd.parquet")
        path = f"{base}/{rel}"
        if not fs.exists(posixpath.dirname(path)):
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with fs.open(path, "wb") as f:
            pq.write_table(part, f, compression="zstd")
        adds.append(
            {
                "path": rel,
                "size": fs.size(path),
                "partition_values": {k: _partition_value(v) for k, v in key.items()},
                "modification_time": int(time.time() * 1000),
                "data_change": True,
                "stats": _file_stats(part),
                "rows": part.num_rows,
            }
        )
    return adds


@dataclass
class CommitResult:
    """What a commit did: the new table version, or ``skipped`` when the batch was already in."""

    table: str
    version: int | None
    files_added: int = 0
    files_removed: int = 0
    rows: int = 0
    skipped: bool = False
    app_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def open_table(uri: str, settings: Settings | None = None, version: int | None = None):
    """The DeltaTable at ``uri``, or None when no table exists there yet."""
    from deltalake import DeltaTable

    settings = settings or get_settings()
    opts = storage_options(settings)
    if not DeltaTable.is_deltatable(uri, storage_options=opts):
        return None
    return DeltaTable(uri, version=version, storage_options=opts)


def _kind(t: pa.DataType) -> str:
    """Types that Delta stores alike compare equal (string/large_string, timestamp units)."""
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_timestamp(t):
        return f"timestamp[tz={t.tz is not None}]"
    return str(t)


def schema_changes(
    table: str, current: pa.Schema, batch: pa.Schema, allow_new_columns: bool = False
) -> list[pa.Field]:
    """The new nullable columns ``batch`` adds to ``current``; raises on any other change.

    A dropped column or a changed type is refused with an error naming the column. A
    new column is refused too unless ``allow_new_columns`` (additive evolution).
    """
    for f in current:
        if f.name not in batch.names:
            raise LakeError(
                f"column {f.name!r} of table {table!r} is missing from the batch; "
                "dropping a column is not allowed"
            )
        got = batch.field(f.name).type
        if _kind(got) != _kind(f.type):
            raise LakeError(
                f"column {f.name!r} of table {table!r} is {f.type} but the batch has {got}; "
                "changing a column's type is not allowed"
            )
    new = [f for f in batch if f.name not in current.names]
    if new and not allow_new_columns:
        raise LakeError(
            f"column {new[0].name!r} is not in table {table!r}; "
            "pass allow_new_columns=True to add it"
        )
    return [f.with_nullable(True) for f in new]


def table_schema(dt) -> pa.Schema:
    return pa.schema(dt.schema().to_arrow())


def _evolve(dt, new: list[pa.Field]) -> None:
    """Add nullable columns to the table's schema (a metadata-only commit)."""
    from deltalake import Field as DeltaField
    from deltalake import Schema as DeltaSchema

    fields = DeltaSchema.from_arrow(pa.schema(new)).fields
    dt.alter.add_columns([DeltaField(f.name, f.type, nullable=True) for f in fields])


def committed(uri: str, app_id: str, settings: Settings | None = None) -> bool:
    """True when the table at ``uri`` already holds the batch ``app_id``."""
    dt = open_table(uri, settings)
    return dt is not None and dt.transaction_version(app_id) is not None


def read_state(uri: str, source: str, settings: Settings | None = None, table: Any = None):
    """The state that ``source`` committed last into the table at ``uri`` (None: never).

    States ride in commit metadata; commits without one (optimize, other writers) are
    skipped over, newest first.
    """
    dt = table if table is not None else open_table(uri, settings)
    if dt is None:
        return None
    key = STATE_PREFIX + source
    for limit in (20, None):
        for h in dt.history(limit):
            if key in h:
                return json.loads(h[key])
        if limit is not None and dt.version() < limit:
            break
    return None


def commit_properties(
    rows: int,
    app_id: str | None = None,
    app_version: int = 1,
    state: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
):
    """What every commit of ours records: its rows, its batch (Delta's application
    transaction ``app_id`` at ``app_version``) and the sources' new ``state``."""
    from deltalake import CommitProperties, Transaction

    custom = {"riverlake.rows": rows, **(metadata or {})}
    if app_id:
        custom["riverlake.batch"] = app_id
    for src, value in (state or {}).items():
        custom[STATE_PREFIX + src] = json.dumps(value, sort_keys=True, default=str)
    return CommitProperties(
        custom_metadata={k: str(v) for k, v in custom.items()},
        app_transactions=[Transaction(app_id, app_version)] if app_id else None,
    )


def commit(
    uri: str,
    adds: Sequence[dict[str, Any]],
    schema: pa.Schema,
    partition_by: Sequence[str] = (),
    mode: WriteMode = "append",
    app_id: str | None = None,
    settings: Settings | None = None,
    metadata: dict[str, Any] | None = None,
    allow_new_columns: bool = False,
    replace_partitions: Sequence[dict[str, Any]] = (),
    app_version: int = 1,
    state: dict[str, Any] | None = None,
    table: Any = None,
) -> CommitResult:
    """Make the written files visible in one atomic commit.

    ``overwrite_partitions`` removes, in the same commit, every file of the partitions
    the batch touches (and of ``replace_partitions``, for partitions that are now
    empty), so a re-computed partition replaces the old one atomically.
    With ``app_id`` the commit records Delta's application transaction at
    ``app_version``; a batch whose id the table already holds at that version or a later
    one is skipped (a stream uses its sequence number as the version).
    ``state`` (source name -> JSON-able cursor or manifest) rides in the same commit, so
    a source's state advances exactly when the data it describes becomes visible.
    ``table``: the already open DeltaTable at ``uri`` (saves re-reading its log).
    """
    from deltalake import Schema as DeltaSchema
    from deltalake.exceptions import CommitFailedError, DeltaError
    from deltalake.transaction import AddAction, create_table_with_add_actions

    settings = settings or get_settings()
    opts = storage_options(settings)
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    rows = sum(a.get("rows", 0) for a in adds)
    props = commit_properties(rows, app_id, app_version, state, metadata)

    def done(dt) -> bool:
        got = dt.transaction_version(app_id) if app_id else None
        return got is not None and got >= app_version

    actions = [
        AddAction(
            a["path"], a["size"], a["partition_values"], a["modification_time"], True, a["stats"]
        )
        for a in adds
    ]
    dt = table if table is not None else open_table(uri, settings)
    if dt is None:
        try:
            create_table_with_add_actions(
                uri,
                DeltaSchema.from_arrow(schema),
                actions,
                mode="error",
                partition_by=list(partition_by) or None,
                storage_options=opts,
                commit_properties=props,
            )
            return CommitResult(name, 0, len(actions), 0, rows, app_id=app_id)
        except DeltaError:
            # Another writer created the table first: commit into it like any writer.
            dt = open_table(uri, settings)
            if dt is None:
                raise
    if done(dt):
        return CommitResult(name, dt.version(), rows=0, skipped=True, app_id=app_id)
    new = schema_changes(name, table_schema(dt), schema, allow_new_columns)
    if new:
        _evolve(dt, new)
        dt.update_incremental()
    for attempt in range(COMMIT_RETRIES + 1):
        removes = (
            _removes(dt, adds, partition_by, replace_partitions)
            if mode == "overwrite_partitions"
            else []
        )
        try:
            dt.create_write_transaction(
                [*actions, *removes],
                mode="append",
                schema=table_schema(dt),
                partition_by=list(partition_by) or None,
                commit_properties=props,
            )
            break
        except CommitFailedError:
            # Another writer removed the files we meant to replace: re-read and retry,
            # unless that writer committed this very batch.
            if attempt == COMMIT_RETRIES:
                raise
            dt = open_table(uri, settings)
            if done(dt):
                return CommitResult(name, dt.version(), rows=0, skipped=True, app_id=app_id)
    dt.update_incremental()
    return CommitResult(name, dt.version(), len(actions), len(removes), rows, app_id=app_id)


def _removes(dt, adds, partition_by: Sequence[str], extra: Sequence[dict[str, Any]] = ()):
    """Remove actions for every live file in the partitions that ``adds`` write to."""
    from deltalake.transaction import RemoveAction

    now = int(time.time() * 1000)
    touched = {tuple(a["partition_values"].get(c) for c in partition_by) for a in adds}
    touched |= {tuple(_partition_value(p.get(c)) for c in partition_by) for p in extra}
    return [
        RemoveAction(f["path"], True, now, f["size"], f["partition_values"])
        for f in current_files(dt)
        if not partition_by or tuple(f["partition_values"].get(c) for c in partition_by) in touched
    ]


def current_files(dt) -> list[dict[str, Any]]:
    """The table's live files: path, size, rows and partition values (as strings)."""
    acts = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
    part_cols = dt.metadata().partition_columns
    out = []
    for a in acts:
        out.append(
            {
                "path": a["path"],
                "size": a["size_bytes"],
                "rows": a.get("num_records"),
                "partition_values": {
                    c: _partition_value(a.get(f"partition.{c}")) for c in part_cols
                },
                "modification_time": a["modification_time"],
            }
        )
    return out


def _to_arrow(data: pd.DataFrame | pa.Table, schema: pa.Schema | None) -> pa.Table:
    if isinstance(data, pa.Table):
        return data.cast(schema) if schema is not None else data
    return pa.Table.from_pandas(data, schema=schema, preserve_index=False)


def write_table(
    name: str,
    data: pd.DataFrame | pa.Table | dd.DataFrame,
    *,
    partition_by: Sequence[str] = (),
    mode: WriteMode = "append",
    app_id: str | None = None,
    schema: pa.Schema | None = None,
    allow_new_columns: bool = False,
    settings: Settings | None = None,
) -> CommitResult:
    """Write a pandas, Arrow or dask frame to table ``name`` in one atomic commit.

    A dask frame is written partition by partition on the cluster (the current dask
    scheduler), with no shuffle; then the driver commits all the files at once. The
    schema is checked against the table's before any file is written.
    """
    import dask
    import dask.dataframe as dd

    settings = settings or get_settings()
    uri = table_uri(name, settings)
    dt = open_table(uri, settings)
    if app_id and dt is not None and dt.transaction_version(app_id) is not None:
        return CommitResult(name, dt.version(), skipped=True, app_id=app_id)
    if isinstance(data, dd.DataFrame):
        schema = schema or pa.Schema.from_pandas(data._meta, preserve_index=False)
    else:
        table = _to_arrow(data, schema)
        schema = table.schema
    if dt is not None:
        schema_changes(name, table_schema(dt), schema, allow_new_columns)
    if isinstance(data, dd.DataFrame):
        parts = [
            dask.delayed(_write_pandas)(p, uri, tuple(partition_by), schema, settings)
            for p in data.to_delayed()
        ]
        adds = [a for chunk in dask.compute(*parts) for a in chunk]
    else:
        adds = write_fragments(table, uri, partition_by, settings)
    return commit(
        uri, adds, schema, partition_by, mode, app_id, settings,
        allow_new_columns=allow_new_columns,
    )  # fmt: skip


def merge_table(
    name: str,
    data: pd.DataFrame | pa.Table,
    keys: Sequence[str],
    *,
    partition_by: Sequence[str] = (),
    app_id: str | None = None,
    settings: Settings | None = None,
    state: dict[str, Any] | None = None,
) -> CommitResult:
    """Upsert ``data`` into table ``name`` on ``keys`` in one commit (late and repeated rows).

    Rows whose key exists are updated, the others inserted; the table is created when it
    does not exist. Keys must be unique within ``data`` (the last row of a key wins).
    """
    settings = settings or get_settings()
    uri = table_uri(name, settings)
    table = _to_arrow(data, None)
    missing = [k for k in keys if k not in table.schema.names]
    if missing:
        raise LakeError(f"merge key {missing[0]!r} is not a column of the batch for {name!r}")
    table = last_per_key(table, list(keys))
    dt = open_table(uri, settings)
    if dt is None:
        return commit(
            uri, write_fragments(table, uri, partition_by, settings), table.schema,
            partition_by, "append", app_id, settings, state=state,
        )  # fmt: skip
    if app_id and dt.transaction_version(app_id) is not None:
        return CommitResult(name, dt.version(), skipped=True, app_id=app_id)
    schema_changes(name, table_schema(dt), table.schema)
    table = table.select(table_schema(dt).names).cast(table_schema(dt))
    props = commit_properties(table.num_rows, app_id, state=state)
    on = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    metrics = (
        dt.merge(table, on, source_alias="s", target_alias="t", commit_properties=props)
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .execute()
    )
    dt.update_incremental()
    return CommitResult(
        name, dt.version(), rows=table.num_rows, app_id=app_id,
        extra={"inserted": metrics.get("num_target_rows_inserted"),
               "updated": metrics.get("num_target_rows_updated")},
    )  # fmt: skip


def last_per_key(table: pa.Table, keys: list[str]) -> pa.Table:
    """Keep the last row of each key (a repeated record's latest version)."""
    idx = pa.array(range(table.num_rows), pa.int64())
    last = table.append_column("__row", idx).group_by(keys).aggregate([("__row", "max")])
    rows = last["__row_max"]
    return table.take(pc.take(rows, pc.sort_indices(rows)))


def _write_pandas(df, uri, partition_by, schema, settings):
    return write_fragments(_to_arrow(df, schema), uri, partition_by, settings)


# --------------------------------------------------------------------------- reading

_OPS = {
    "=": lambda a, b: a == b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "in": lambda a, b: a in b,
    "not in": lambda a, b: a not in b,
}


def _cast_partition(value: str | None, typ: pa.DataType) -> Any:
    if value is None:
        return None
    return pa.scalar(value).cast(typ).as_py()


_EXPR_OPS = {
    **_OPS,
    "in": lambda f, v: f.isin(list(v)),
    "not in": lambda f, v: ~f.isin(list(v)),
}


def _expr(filters: Sequence[Filter]) -> pc.Expression | None:
    """The conjunction of ``filters`` as a pyarrow compute expression."""
    expr = None
    for col, op, val in filters:
        e = _EXPR_OPS[op](pc.field(col), val)
        expr = e if expr is None else expr & e
    return expr


def table_files(
    name: str,
    filters: Sequence[Filter] = (),
    version: int | None = None,
    as_of: datetime | str | None = None,
    settings: Settings | None = None,
) -> tuple[pa.Schema, list[str], list[dict[str, Any]]]:
    """The arrow schema, partition columns and live files of a table after partition pruning."""
    settings = settings or get_settings()
    uri = table_uri(name, settings)
    dt = open_table(uri, settings, version=version)
    if dt is None:
        raise LakeError(f"table {name!r} does not exist in {settings.lake_url}")
    if as_of is not None:
        dt.load_as_version(as_of)
    schema = pa.schema(dt.schema().to_arrow())
    parts = dt.metadata().partition_columns
    pfilters = [f for f in filters if f[0] in parts]
    for col, op, _ in filters:
        if col not in schema.names:
            raise LakeError(f"filter column {col!r} is not in table {name!r}")
        if op not in _OPS:
            raise LakeError(f"filter operator {op!r} is not supported")
    files = []
    for f in current_files(dt):
        values = {c: _cast_partition(f["partition_values"][c], schema.field(c).type) for c in parts}
        if all(_OPS[op](values[c], v) for c, op, v in pfilters):
            files.append({**f, "typed_partition_values": values, "uri": f"{uri}/{f['path']}"})
    return schema, parts, files


def read_fragment(
    spec: dict[str, Any],
    schema: pa.Schema,
    columns: Sequence[str] | None,
    filters: Sequence[Filter],
    settings: Settings,
) -> pd.DataFrame:
    """Read one data file of a table, restoring its partition columns from the log."""
    fs = filesystem(settings)
    pvals = spec["typed_partition_values"]
    file_cols = [c for c in (columns or schema.names) if c not in pvals]
    need = list(dict.fromkeys(file_cols + [c for c, _, _ in filters if c not in pvals]))
    with fs.open(strip_scheme(spec["uri"]), "rb") as f:
        pf = pq.ParquetFile(f)
        present = set(pf.schema_arrow.names)
        t = pf.read(columns=[c for c in need if c in present])
    for c in need:  # a column added after this file was written (additive evolution)
        if c not in present:
            t = t.append_column(schema.field(c), pa.nulls(t.num_rows, schema.field(c).type))
    for c, v in pvals.items():
        t = t.append_column(schema.field(c), pa.array([v] * t.num_rows, schema.field(c).type))
    expr = _expr([f for f in filters if f[0] not in pvals])
    if expr is not None:
        t = t.filter(expr)
    cols = list(columns or schema.names)
    return t.select(cols).to_pandas(date_as_object=False)


def read_table(
    name: str,
    columns: Sequence[str] | None = None,
    filters: Sequence[Filter] = (),
    version: int | None = None,
    as_of: datetime | str | None = None,
    settings: Settings | None = None,
) -> dd.DataFrame:
    """Open a lake table as a dask DataFrame: one partition per data file.

    Partition filters prune whole files before anything is read; other filters are
    applied while reading. ``version`` or ``as_of`` travel back in time.
    """
    import dask.dataframe as dd

    settings = settings or get_settings()
    schema, _, files = table_files(name, filters, version, as_of, settings)
    cols = list(columns) if columns else schema.names
    meta = schema.empty_table().select(cols).to_pandas(date_as_object=False)
    if not files:
        return dd.from_pandas(meta, npartitions=1)
    return dd.from_map(
        read_fragment,
        files,
        schema=schema,
        columns=cols,
        filters=list(filters),
        settings=settings,
        meta=meta,
        enforce_metadata=False,
    )


def read_pandas(name: str, **kwargs: Any) -> pd.DataFrame:
    """A small table (a gold table, a dimension) read straight into pandas."""
    return read_table(name, **kwargs).compute(scheduler="threads")


# --------------------------------------------------------------------------- maintenance


def optimize(name: str, target_size: int | None = None, settings: Settings | None = None):
    """Compact small files into larger ones (one commit; readers keep their snapshot)."""
    settings = settings or get_settings()
    dt = open_table(table_uri(name, settings), settings)
    if dt is None:
        raise LakeError(f"table {name!r} does not exist in {settings.lake_url}")
    return dt.optimize.compact(target_size=target_size)


def vacuum(
    name: str,
    retention_hours: int = 168,
    dry_run: bool = False,
    settings: Settings | None = None,
) -> list[str]:
    """Delete files no live version needs and that are older than the retention period.

    ``full`` mode also removes files no commit ever referenced: the orphans of a run
    that died between writing its files and committing them.
    """
    settings = settings or get_settings()
    dt = open_table(table_uri(name, settings), settings)
    if dt is None:
        raise LakeError(f"table {name!r} does not exist in {settings.lake_url}")
    return dt.vacuum(
        retention_hours=retention_hours,
        dry_run=dry_run,
        enforce_retention_duration=False,
        full=True,
    )


# --------------------------------------------------------------------------- catalog


def list_tables(settings: Settings | None = None, batches: bool = True) -> list[dict[str, Any]]:
    """Every table in the lake with rows, files, size, partitions, version and last commit;
    with ``batches``, the batch ids of its latest commits too (more of its log to read)."""
    settings = settings or get_settings()
    fs = filesystem(settings)
    root = strip_scheme(f"{lake_root(settings)}/{TABLES}")
    fs.invalidate_cache()  # fsspec caches listings; the catalog must see new tables
    try:
        names = sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        dt = open_table(table_uri(name, settings), settings)
        if dt is None:
            continue
        files = current_files(dt)
        last = dt.history(1)[0]
        parts = dt.metadata().partition_columns
        out.append(
            {
                "name": name,
                "version": dt.version(),
                "rows": sum(f["rows"] or 0 for f in files),
                "files": len(files),
                "size_bytes": sum(f["size"] for f in files),
                "partitions": len({tuple(f["partition_values"].items()) for f in files})
                if parts
                else 0,
                "partition_by": parts,
                "last_commit": datetime.fromtimestamp(last["timestamp"] / 1000).isoformat(
                    timespec="seconds"
                ),
                "last_batch": (last.get("riverlake.batch") or ""),
            }
        )
        if batches:  # the latest commits' batch ids, newest first (a stream has thousands)
            out[-1]["batches"] = [
                h["riverlake.batch"] for h in dt.history(CATALOG_HISTORY)
                if h.get("riverlake.batch")
            ]  # fmt: skip
    return out
