"""Reading: a table as a dask DataFrame, one partition per data file, pruned by partition;
a small one straight into pandas."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from riverlake.analytics.filters import FILTER_OPS, Filter
from riverlake.errors import LakeError
from riverlake.lake.store import filesystem, open_table, strip_scheme, table_uri
from riverlake.lake.table import current_files
from riverlake.settings import Settings, get_settings

if TYPE_CHECKING:
    import dask.dataframe as dd
    import pandas as pd


def _cast_partition(value: str | None, typ: pa.DataType) -> Any:
    if value is None:
        return None
    return pa.scalar(value).cast(typ).as_py()


def _expr(filters: Sequence[Filter]) -> pc.Expression | None:
    """The conjunction of ``filters`` as a pyarrow compute expression."""
    expr = None
    for col, op, val in filters:
        e = FILTER_OPS[op](pc.field(col), val)
        expr = e if expr is None else expr & e
    return expr


def table_files(
    name: str,
    filters: Sequence[Filter] = (),
    version: int | None = None,
    as_of: datetime | str | None = None,
    settings: Settings | None = None,
    missing_ok: bool = False,
) -> tuple[pa.Schema, list[str], list[dict[str, Any]]] | None:
    """The arrow schema, partition columns and live files of a table after partition
    pruning; a table that does not exist is an error, or None with ``missing_ok``."""
    settings = settings or get_settings()
    uri = table_uri(name, settings)
    dt = open_table(uri, settings, version=version)
    if dt is None and missing_ok:
        return None
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
        if op not in FILTER_OPS:
            raise LakeError(f"filter operator {op!r} is not supported")
    files = []
    for f in current_files(dt):
        values = {c: _cast_partition(f["partition_values"][c], schema.field(c).type) for c in parts}
        if all(FILTER_OPS[op](values[c], v) for c, op, v in pfilters):
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


def read_pandas(
    name: str,
    columns: Sequence[str] | None = None,
    filters: Sequence[Filter] = (),
    version: int | None = None,
    as_of: datetime | str | None = None,
    settings: Settings | None = None,
    missing_ok: bool = False,
) -> pd.DataFrame | None:
    """A small table (a gold table, a dimension) read straight into pandas: what
    :func:`read_table` gives, computed, without building (or importing) a dask graph.
    A table that does not exist is an error, or None with ``missing_ok``."""
    settings = settings or get_settings()
    found = table_files(name, filters, version, as_of, settings, missing_ok=missing_ok)
    if found is None:
        return None
    schema, _, files = found
    return read_files(schema, files, columns, filters, settings)


def read_files(
    schema: pa.Schema,
    files: Sequence[dict[str, Any]],
    columns: Sequence[str] | None,
    filters: Sequence[Filter],
    settings: Settings,
) -> pd.DataFrame:
    """Files of :func:`table_files` read into one pandas frame, at most 8 at once (the
    reads wait on the store and release the GIL), in their order."""
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd

    cols = list(columns) if columns else schema.names
    if not files:
        out = schema.empty_table().select(cols).to_pandas(date_as_object=False)
    else:
        with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
            frames = list(pool.map(lambda f: read_fragment(f, schema, cols, list(filters),
                                                           settings), files))  # fmt: skip
        out = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    # Text as the dask read gives it (dask's convert-string): pyarrow strings with pd.NA.
    text = {c: pd.StringDtype("pyarrow") for c, t in out.dtypes.items()
            if isinstance(t, pd.StringDtype) and t.na_value is not pd.NA}  # fmt: skip
    return out.astype(text) if text else out
