"""The column types a declaration may name, as Arrow types: one list for the sources'
schemas, the curated tables and the gold tables."""

from __future__ import annotations

import pyarrow as pa

TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}
