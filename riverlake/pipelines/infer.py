"""A pipeline declaration proposed from a sample of its data (``riverlake new``).

Pure: a sample frame in, the YAML-able body of a declaration out. The proposal is a
start for the user to edit: the types are what the sample's values parse as (the way
the curated typing parses text), the key is the first column (or pair) the sample has
no duplicate of, and the contract holds what was observed, so a later value outside the
sample's range is quarantined until the user widens it.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from itertools import combinations
from typing import Any

import pandas as pd
import pyarrow as pa
import yaml

from riverlake.errors import RiverlakeError
from riverlake.pipelines.model import _NAME

__all__ = ["FORMATS", "check_name", "format_of", "infer_types", "propose", "render"]

#: File name endings a sample may have, and the files source's format for each.
FORMATS = {".csv": "csv", ".csv.gz": "csv", ".jsonl": "jsonl", ".jsonl.gz": "jsonl",
           ".parquet": "parquet"}  # fmt: skip
#: Text a CSV means as no value (as the curated typing reads it).
NA_TEXT = {"", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"}
#: At most this many distinct values make a text column a category (an ``isin`` rule).
MAX_CATEGORIES = 12
#: At most this many float columns get a mean in the proposed gold table.
MAX_MEANS = 4

_INT = re.compile(r"^[+-]?[0-9]+$")
_CODE = re.compile(r"^[+-]?0[0-9]")  # a leading zero: a code (007, 02134), text
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_DATETIME = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?"
    r"(Z|[+-][0-9]{2}:?[0-9]{2})?)?$"
)
_ID = re.compile(r"(^|_)(id|key|uuid|code)$", re.IGNORECASE)
TIME_TYPES = ("date", "timestamp")


def format_of(path: str) -> tuple[str, str]:
    """The files source's format and the glob's ending for a sample file's name:
    ``('csv', 'csv.gz')``; a RiverlakeError for any other kind of file."""
    low = path.lower()
    for ending in sorted(FORMATS, key=len, reverse=True):
        if low.endswith(ending):
            return FORMATS[ending], ending[1:]
    raise RiverlakeError(
        f"{path}: not a sample Riverlake reads (a {', '.join(e[1:] for e in FORMATS)} file)"
    )


# --------------------------------------------------------------------------- types


def _text_type(s: pd.Series) -> tuple[str, pd.Series]:
    """The type of text values (no nulls) and the values as that type."""
    low = s.str.lower()
    if low.isin(["true", "false"]).all():
        return "bool", low == "true"
    if not s.str.match(_CODE).any():  # 007, 02134: codes, text
        if s.str.match(_INT).all():
            return "int64", pd.to_numeric(s).astype("int64")
        num = pd.to_numeric(s, errors="coerce")
        if num.notna().all() and not low.str.contains("inf|nan").any():
            return "float64", num.astype("float64")
    if s.str.match(_DATETIME).all():
        t = pd.to_datetime(s, errors="coerce", utc=True, format="ISO8601")
        if t.notna().all():
            if s.str.match(_DATE).all():
                return "date", t
            return "timestamp", t
    return "string", s


def _object_type(s: pd.Series) -> tuple[str, pd.Series]:
    """The type of Python values (no nulls): a JSON or Arrow column read as objects."""
    kinds = {type(v) for v in s}
    if kinds <= {bool}:
        return "bool", s.astype(bool)
    if kinds <= {int}:
        return "int64", s.astype("int64")
    if kinds <= {int, float}:
        return "float64", s.astype("float64")
    if all(isinstance(v, dt.datetime) for v in s):
        return "timestamp", pd.to_datetime(s, utc=True)
    if all(isinstance(v, dt.date) for v in s):
        return "date", pd.to_datetime(s, utc=True)
    if kinds <= {str}:
        return _text_type(s.str.strip())
    return "string", s.astype(str)


def _column(s: pd.Series) -> tuple[str, pd.Series, pd.Series]:
    """A sample column's type, its non-null values as that type, and its null mask."""
    if pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s):
        text = s.map(lambda v: v.strip() if isinstance(v, str) else v)
        null = text.isna() | text.map(lambda v: isinstance(v, str) and v in NA_TEXT)
    else:
        null = s.isna()
    values = s[~null]
    if values.empty:
        return "string", values, null
    if pd.api.types.is_bool_dtype(values):
        return "bool", values.astype(bool), null
    if pd.api.types.is_integer_dtype(values):
        return "int64", values.astype("int64"), null
    if pd.api.types.is_float_dtype(values):
        return "float64", values.astype("float64"), null
    if pd.api.types.is_datetime64_any_dtype(values):
        t = values.dt.tz_localize("UTC") if values.dt.tz is None else values
        return "timestamp", t, null
    return (*_object_type(values), null)


def _frame(sample: pd.DataFrame | pa.Table) -> pd.DataFrame:
    if isinstance(sample, pa.Table):
        return sample.to_pandas(date_as_object=True)
    if isinstance(sample, pd.DataFrame):
        return sample
    raise TypeError(f"a sample is a pandas DataFrame or an Arrow table, not {type(sample)}")


def infer_types(sample: pd.DataFrame | pa.Table) -> dict[str, str]:
    """Each column's type (of :data:`riverlake.sources.spec.TYPES`), from its values."""
    df = _frame(sample)
    return {str(c): _column(df[c])[0] for c in df.columns}


# --------------------------------------------------------------------------- proposal


def _key(df: pd.DataFrame, types: dict[str, str], null: dict[str, pd.Series]) -> list[str]:
    """The first column, else pair, that has no null and no duplicate in the sample:
    a time column first, then an id-like column, then the others (not floats, bools)."""
    cols = [c for c in df.columns if types[c] not in ("float64", "bool") and not null[c].any()]
    rank = {c: 0 if types[c] in TIME_TYPES else 1 if _ID.search(c) else 2 for c in cols}
    cols.sort(key=lambda c: rank[c])  # stable: the file's order within a rank
    if df.empty:
        return []
    for c in cols:
        if not df[c].duplicated().any():
            return [c]
    for a, b in combinations(cols, 2):
        if not df.duplicated([a, b]).any():
            return [a, b]
    return []


def _rule(typ: str, values: pd.Series, nulls: bool) -> dict[str, Any]:
    rule: dict[str, Any] = {} if nulls else {"nullable": False}
    if values.empty:
        return rule
    if typ == "int64":
        rule["min"], rule["max"] = int(values.min()), int(values.max())
    elif typ == "float64":
        rule["min"], rule["max"] = math.floor(values.min()), math.ceil(values.max())
    elif typ == "string":
        distinct = values.nunique()
        if distinct <= MAX_CATEGORIES and distinct < len(values):
            rule["isin"] = sorted(str(v) for v in values.unique())
    return rule


def check_name(name: str) -> None:
    """A RiverlakeError (one line) unless ``name`` is a pipeline's name."""
    if not _NAME.match(name):
        raise RiverlakeError(f"{name!r}: a pipeline name is lower case letters, digits and _")


def propose(name: str, sample: pd.DataFrame | pa.Table, url: str, fmt: str) -> dict[str, Any]:
    """The body of a declaration of pipeline ``name``, inferred from ``sample``: one files
    source landing the files of ``url`` (a glob, format ``fmt``), its curated table (key,
    event time, contract) and a monthly gold table when there is an event time.

    Raises RiverlakeError (one line) when the name is not a pipeline name or the sample
    has no time column and no year and month columns to land its rows by month.
    """
    check_name(name)
    df = _frame(sample)
    df = df.set_axis([str(c) for c in df.columns], axis=1)
    twice = df.columns[df.columns.duplicated()]
    if len(twice):
        raise RiverlakeError(f"the sample has two columns named {twice[0]!r}")
    if df.empty:
        raise RiverlakeError("the sample has no rows: types and a key cannot be inferred")
    types: dict[str, str] = {}
    values: dict[str, pd.Series] = {}
    null: dict[str, pd.Series] = {}
    for c in df.columns:
        types[c], values[c], null[c] = _column(df[c])
    typed = pd.DataFrame({c: values[c].reindex(df.index) for c in df.columns})

    times = [c for c in df.columns if types[c] in TIME_TYPES]
    calendar = types.get("year") == "int64" and types.get("month") == "int64"
    if not times and not calendar:
        raise RiverlakeError(
            "a landing pipeline needs a time column (ISO dates or date-times) or year and "
            f"month columns; the sample has neither (columns: {', '.join(df.columns)})"
        )
    key = _key(typed, types, null)
    checked = ""
    if not key:
        key = list(df.columns)
        checked = (
            "; no column or pair of columns is unique in the sample: the key is every "
            "column, check it"
        )

    curated: dict[str, Any] = {"table": name, "key": key}
    if times:
        curated["event_time"] = {"column": times[0], "time_zone": "UTC"}
    curated["partition_by"] = ["year", "month"]
    contract = {}
    for c in df.columns:
        rule = _rule(types[c], values[c], bool(null[c].any()))
        if rule:
            contract[c] = rule
    if contract:
        curated["contract"] = contract

    body: dict[str, Any] = {
        "description": f"{name}: proposed by `riverlake new` from {len(df)} sample rows{checked}",
        "profile": "small",
        "schedule": {"cron": "0 6 * * *"},
        "sources": [
            {
                "name": f"{name}_files",
                "kind": "files",
                "url": url,
                "format": fmt,
                "sink": "landing",
                "table": name,
                "schema": types,
            }
        ],
        "curated": curated,
    }
    if times:
        body["gold"] = [_gold(name, times[0], types, contract)]
    return body


def _gold(name: str, time: str, types: dict[str, str], contract: dict[str, Any]) -> dict:
    categories = [c for c, r in contract.items() if "isin" in r]
    by = sorted(categories, key=lambda c: len(contract[c]["isin"]))[:1]
    measures: dict[str, Any] = {"rows": "count"}
    for c in [c for c, t in types.items() if t == "float64"][:MAX_MEANS]:
        measures[f"mean_{c}"] = {"mean": c}
    y = next((m for m in measures if m != "rows"), "rows")
    gold: dict[str, Any] = {
        "table": f"{name}_monthly",
        "time_bin": {"column": time, "every": "month", "name": "month"},
    }
    if by:
        gold["by"] = by
    gold["measures"] = measures
    gold["chart"] = {"x": "month", "y": y, **({"by": by[0]} if by else {})}
    return gold


def render(name: str, body: dict[str, Any], sample: str, rows: int) -> str:
    """The declaration as YAML, under a header that says what was inferred from the
    ``rows`` rows of ``sample`` (the file's name) and what to check before the first run."""
    c = body["curated"]
    src = body["sources"][0]
    et = c.get("event_time")
    lines = [
        f"# Pipeline {name}, proposed by `riverlake new` from {rows} rows of {sample}.",
        "# Inferred from those rows; check it before the first run:",
        f"# - sources.{src['name']}.schema: each column's type (a later value that does not",
        "#   parse as its type is quarantined);",
        f"# - curated.key: {', '.join(c['key'])}, unique in the sample (one row per key: the "
        "last landed wins);",
        f"# - curated.event_time: {et['column']} ({et['time_zone']}): rows land by its month;"
        if et
        else "# - no event time: rows land by their year and month columns;",
        "# - curated.contract: nullability, ranges (the sample's, rounded outward) and allowed",
        "#   values as observed: widen them, or later rows outside them are quarantined;",
    ]
    if body.get("gold"):
        lines.append(f"# - gold: {body['gold'][0]['table']}, monthly measures to adapt.")
    lines.append("# Fields: riverlake/pipelines/model.py; connectors: riverlake/sources/spec.py.")
    text = yaml.safe_dump(
        {name: body}, sort_keys=False, default_flow_style=None, width=92, allow_unicode=True
    )
    return "\n".join(lines) + "\n\n" + text
