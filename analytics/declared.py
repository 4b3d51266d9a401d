"""The data logic of declared pipelines: typing, dedupe, joins, contracts and gold
measures built from a declaration (:mod:`riverlake.pipelines.model`). Pure: frames and
declarations in, frames out; no I/O, no Prefect, no Panel.

The gold measures are computed as mergeable partial states (counts, sums, minima and
maxima, value counts for exact quantiles): each partition of a frame is reduced to its
partials, the partials are summed, and the measures come from the sums. So a dask frame
is reduced partition by partition with no shuffle, and the result is exact.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from riverlake.analytics.analysis import is_dask
from riverlake.analytics.filters import FILTER_OPS
from riverlake.analytics.types import TYPES

if TYPE_CHECKING:  # imported by contract(): a run with no data work never builds one
    import pandera.pandas as pdr

#: Declared type -> Arrow type (the same names as the sources' schemas).
ARROW = TYPES
#: Declared type -> the pandas dtype a contract checks (dates are not checked by dtype).
PANDAS = {
    "string": "string",
    "int32": "Int32",
    "int64": "Int64",
    "float64": "float64",
    "bool": "boolean",  # nullable: a null is the contract's to judge, row by row
    "timestamp": "datetime64[us, UTC]",
}
_INTS = {"int32", "int64"}
_NA_TEXT = {"", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"}


def arrow_schema(types: Mapping[str, str]) -> pa.Schema:
    return pa.schema([(c, ARROW[t]) for c, t in types.items()])


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Arrow -> pandas with nullable integers and datetime64 dates."""
    return table.to_pandas(date_as_object=False, types_mapper={
        pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}.get)  # fmt: skip


# --------------------------------------------------------------------------- typing


def read_csv_typed(
    blob: bytes, types: Mapping[str, str], zones: Mapping[str, str] | None = None
) -> pa.Table:
    """The fast path: Arrow's CSV reader with the declared types (times read as text and
    typed by :func:`_parse_time`, naive ones in their column's zone from ``zones``, else
    UTC). Raises an Arrow error or KeyError when a value or a column is not what is
    declared: the caller then takes the careful path."""
    read = {c: (pa.string() if t in ("timestamp", "date") else ARROW[t]) for c, t in types.items()}
    t = pacsv.read_csv(
        io.BytesIO(blob),
        convert_options=pacsv.ConvertOptions(column_types=read, include_columns=list(types)),
    )
    times = {c: t for c, t in types.items() if t in ("timestamp", "date")}
    if not times:
        return t.cast(arrow_schema(types))
    cols = {}
    for c, typ in types.items():
        if c in times:
            zone = (zones or {}).get(c, "UTC")
            parsed, bad = parse_time(pd.Series(t[c].to_pandas(), dtype="string"), typ, zone)
            if bad.any():
                raise pa.ArrowInvalid(f"column {c}: not a {typ}")
            cols[c] = pa.array(parsed, type=ARROW[typ])
        else:
            cols[c] = t[c]
    return pa.table(cols, schema=arrow_schema(types))


def read_csv_text(blob: bytes) -> pd.DataFrame:
    """The careful path: every column as text, so one bad value costs one row, not a file.
    Text is kept as written ("" and "NA" too, as the fast path keeps them in a string
    column); the typing of other columns reads those spellings as missing."""
    raw = pacsv.read_csv(
        io.BytesIO(blob),
        read_options=pacsv.ReadOptions(encoding="utf8"),
        convert_options=pacsv.ConvertOptions(strings_can_be_null=False, column_types={}),
    )
    return raw.cast(pa.schema([(n, pa.string()) for n in raw.column_names])).to_pandas()


#: A time of day followed by an offset: ``23:30Z``, ``23:30:00-08:00`` (a date's ``-31``
#: is not an offset).
_OFFSET = r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$"


def parse_time(s: pd.Series, typ: str, zone: str = "UTC") -> tuple[pd.Series, pd.Series]:
    """Text -> dates or UTC timestamps. A time with an offset (``Z``, ``-08:00``) is that
    instant; a naive one is a wall time in ``zone`` (DST: an ambiguous time is taken as
    daylight time, a nonexistent one is shifted forward). Returns the values and a mask
    of the values that did not parse."""
    s = s.astype("string").str.strip()
    empty = s.isna() | s.isin(_NA_TEXT)
    text = s.where(~empty)
    if typ == "date":
        v = pd.to_datetime(text, errors="coerce", format="ISO8601")
        bad = v.isna() & ~empty
        bad |= text.str.contains(r"[T ]\d", regex=True).fillna(False)  # a time is not a date
        out = v.where(~bad)
        return out.dt.date.where(out.notna(), None), bad
    aware = text.str.contains(_OFFSET, regex=True).fillna(False)
    absolute = pd.to_datetime(text.where(aware), errors="coerce", utc=True, format="ISO8601")
    naive = pd.to_datetime(text.where(~aware), errors="coerce", format="ISO8601")
    if isinstance(naive.dtype, pd.DatetimeTZDtype):  # only offsets parsed: none naive
        naive = naive.dt.tz_convert(None)
    local = naive.dt.tz_localize(zone, ambiguous=True, nonexistent="shift_forward")
    v = absolute.where(aware, local.dt.tz_convert("UTC"))
    bad = v.isna() & ~empty
    return v.astype("datetime64[us, UTC]"), bad


_INT_TEXT = r"^[+-]?\d+$"
_RANGE = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def _parse_int(s: pd.Series, empty: pd.Series, typ: str) -> tuple[pd.Series, pd.Series]:
    """Whole numbers, exactly (never through a float: 64-bit ids keep every digit); a
    float spelling of a whole number (``1e3``, ``12.0``) is accepted; a value outside
    the type's range is bad, never wrapped."""
    lo, hi = _RANGE[typ]

    def one(x: Any) -> Any:
        if x is None or x is pd.NA:
            return None
        try:
            n = int(x) if re_int.match(x) else float(x)
        except (ValueError, OverflowError):
            return None
        if isinstance(n, float):
            if not n.is_integer():
                return None
            n = int(n)
        return n if lo <= n <= hi else None

    re_int = re.compile(_INT_TEXT)
    values = [one(x) for x in s.where(~empty).tolist()]
    out = pd.Series(pd.array(values, dtype=PANDAS[typ]), index=s.index)
    return out, out.isna() & ~empty


def type_text(
    raw: pd.DataFrame, types: Mapping[str, str], zones: Mapping[str, str] | None = None
) -> tuple[pa.Table, pd.DataFrame]:
    """Type rows read as text; a value that does not parse sends its row to quarantine.

    Returns the typed good rows and the bad rows as text with ``failed_check``
    (``column:type``, or ``file:columns (missing x)`` when a declared column is absent).
    """
    schema = arrow_schema(types)
    missing = [c for c in types if c not in raw.columns]
    if missing:
        bad = raw.astype("string").assign(failed_check=f"file:columns (missing {missing[0]})")
        return schema.empty_table(), bad
    text = raw[list(types)].astype("string")
    failed = pd.Series(pd.NA, index=text.index, dtype="string")
    values: dict[str, Any] = {}
    for col, typ in types.items():
        s = text[col].str.strip()
        empty = s.isna() | s.isin(_NA_TEXT)
        if typ in ("timestamp", "date"):
            v, bad = parse_time(s, typ, (zones or {}).get(col, "UTC"))
        elif typ == "bool":
            low = s.str.lower()
            v = low.map({"true": True, "false": False, "1": True, "0": False}, na_action="ignore")
            bad = v.isna() & ~empty
        elif typ == "string":
            v, bad = text[col], pd.Series(False, index=s.index)
        elif typ in _INTS:
            v, bad = _parse_int(s, empty, typ)
        else:
            v = pd.to_numeric(s.where(~empty), errors="coerce")
            bad = v.isna() & ~empty
        failed = failed.mask(bad & failed.isna(), f"{col}:type")
        values[col] = v
    ok = failed.isna().to_numpy()
    cols = {}
    for col, typ in types.items():
        v = values[col][ok]
        if typ == "bool":
            v = v.astype("boolean")
        cols[col] = pa.array(v, type=ARROW[typ], from_pandas=True)
    good = pa.table(cols, schema=schema)
    return good, text[~ok].assign(failed_check=failed[~ok])


# --------------------------------------------------------------------------- curation


def event_time_local(values: pd.Series, time_zone: str) -> pd.Series:
    """The local wall time of an event-time column (dates stay dates)."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert(time_zone).dt.tz_localize(None)
    return pd.to_datetime(values)


def add_time_parts(
    df: pd.DataFrame, column: str, time_zone: str, parts: Sequence[str]
) -> pd.DataFrame:
    """year, month, day (int32) of the event time, local to its zone, where missing."""
    local = event_time_local(df[column], time_zone)
    add = {p: getattr(local.dt, p).astype("Int32") for p in parts if p not in df.columns}
    return df.assign(**add) if add else df


def dedupe_last(df: pd.DataFrame, key: Sequence[str]) -> tuple[pd.DataFrame, int]:
    """Keep the last record of each key (rows in landing order): late updates win.
    A row with a null in its key is no key's record: it is kept (the contract's
    nullability and uniqueness checks decide about it). Returns the frame and how many
    rows a later record replaced."""
    keyed = df[list(key)].notna().all(axis=1) if key else pd.Series(False, index=df.index)
    replaced = df[list(key)].duplicated(keep="last") & keyed if key else keyed
    return df[~replaced], int(replaced.sum())


def key_parts(table: pa.Table, key: Sequence[str], parts: int,
              types: Mapping[str, str]) -> np.ndarray:  # fmt: skip
    """Which of ``parts`` parts each row of ``table`` belongs to, by a hash of its
    ``key`` columns: rows whose keys pandas deduplicates as equal (a null part included)
    are always in the same part, whichever file or batch they come from, so the last
    record of a key, and the key's uniqueness, can be decided within a part. Each column
    is first cast to its curated type in ``types`` where that keeps every value (so landed
    and curated rows hash alike: a landed date, a curated date); then integers hash by
    value whatever their width, floats by value (-0.0 as 0.0, NaN as missing), the rest
    by their text."""
    if parts == 1:
        return np.zeros(table.num_rows, dtype=np.int64)
    canonical = {}
    for name in key:
        column = table[name]
        want = ARROW.get(types.get(name, ""))
        if want is not None and column.type != want:
            with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
                column = column.cast(want)  # safe: a value it would change stays as it was
        if pa.types.is_integer(column.type):
            canonical[name] = column.cast(pa.int64()).to_pandas(
                types_mapper={pa.int64(): pd.Int64Dtype()}.get
            )  # a null: <NA>, exact
            continue
        if pa.types.is_floating(column.type):
            number = pc.add(column.cast(pa.float64()), 0.0)  # -0.0 + 0.0 is 0.0
            column = pc.if_else(pc.is_nan(number), pa.scalar(None, pa.float64()), number)
        canonical[name] = column.cast(pa.string()).to_pandas()
    hashed = pd.util.hash_pandas_object(pd.DataFrame(canonical), index=False)
    return (hashed.to_numpy() % np.uint64(parts)).astype(np.int64)


def _key_like(values: pd.Series, like: pd.Series) -> pd.Series:
    """``values`` as the type of ``like`` (a join key): text compares as text, numbers as
    numbers; a value that is not one is missing (it matches nothing)."""
    if pd.api.types.is_string_dtype(like.dtype) or like.dtype == object:
        return values.astype("string").astype(like.dtype)
    if pd.api.types.is_numeric_dtype(like.dtype) and not pd.api.types.is_bool_dtype(like.dtype):
        number = pd.to_numeric(values.astype("string").str.strip(), errors="coerce")
        whole = number.where(number % 1 == 0) if like.dtype.kind in "iu" else number
        try:
            return whole.astype(like.dtype)
        except (TypeError, ValueError, OverflowError):
            return whole.astype("Float64")
    return values.astype(like.dtype)


def join(df: pd.DataFrame, other: pd.DataFrame, on: Mapping[str, str],
         renames: Mapping[str, str]) -> pd.DataFrame:  # fmt: skip
    """A left join with a small table: its rows deduplicated on the join keys (the first
    wins), its keys read as this frame's types, its columns renamed. No row is lost or
    repeated; a null key, or one of the other table that is not of this frame's type,
    matches nothing."""
    right_keys = list(on.values())
    cols = [*right_keys, *[c for c in renames if c not in right_keys]]
    right = other[cols].copy()
    for left, r in on.items():
        right[r] = _key_like(right[r], df[left])
    right = right.dropna(subset=right_keys).drop_duplicates(right_keys)
    right = right.rename(columns={r: left for left, r in on.items()})
    right = right.rename(columns={c: n for c, n in renames.items() if c not in right_keys})
    right = right.loc[:, ~right.columns.duplicated()]
    for c, n in renames.items():
        if c in right_keys:  # a key brought under another name too
            left = next(k for k, v in on.items() if v == c)
            right[n] = right[left]
    clash = [c for c in right.columns if c in df.columns and c not in on]
    out = df.drop(columns=clash).merge(right, on=list(on), how="left")
    if len(out) != len(df):  # cannot happen after drop_duplicates; a guard, not a branch
        raise AssertionError("a join changed the number of rows")
    return out


Transform = Callable[[pd.DataFrame], pd.DataFrame]


def apply_steps(
    df: pd.DataFrame,
    steps: Sequence[Any],
    tables: Mapping[str, pd.DataFrame],
    functions: Mapping[str, Transform],
) -> pd.DataFrame:
    """Run a curated table's steps in order: joins with ``tables``, the user's functions."""
    for step in steps:
        if hasattr(step, "join"):
            df = join(df, tables[step.join], step.keys, step.renames())
        else:
            out = functions[step.function](df)
            if not isinstance(out, pd.DataFrame):
                raise TypeError(f"transform {step.function} returned {type(out).__name__}, "
                                "not a pandas DataFrame")  # fmt: skip
            if len(out) != len(df):
                raise ValueError(f"transform {step.function} changed the number of rows "
                                 f"({len(df)} -> {len(out)}): a transform maps rows, it does "
                                 "not drop them (the contract quarantines bad ones)")  # fmt: skip
            df = out
    return df


def curate(
    curated: Any,
    typed: pa.Table,
    types: Mapping[str, str],
    tables: Mapping[str, pd.DataFrame],
    functions: Mapping[str, Transform],
) -> tuple[pd.DataFrame, int]:
    """A curated table's rows from its typed landed rows (in landing order): event time
    localized and its year/month/day derived, deduplicated on the key (the last wins),
    the steps run, the declared columns conformed. Returns the rows and how many a later
    record replaced."""
    df = to_frame(typed)
    if curated.event_time is not None:  # typed to UTC already (naive text in its zone)
        col, zone = curated.event_time.column, curated.event_time.time_zone
        df = add_time_parts(df, col, zone, curated.partition_by)
    key = list(curated.key)
    early = all(k in df.columns for k in key)  # a key made by a step: dedupe after them
    merged = 0
    if early:
        df, merged = dedupe_last(df, key)
    df = apply_steps(df.reset_index(drop=True), curated.steps, tables, functions)
    if not early:
        missing = [k for k in key if k not in df.columns]
        if missing:
            raise KeyError(f"key column {missing[0]!r} is not produced by the source or a step")
        df, merged = dedupe_last(df, key)
    return conform(df, types), merged


def conform(df: pd.DataFrame, types: Mapping[str, str]) -> pd.DataFrame:
    """The curated columns, in order, with their pandas dtypes. A value that would change
    on the way (1.5 into an int, 3e9 into int32, "false" into a bool) is refused with the
    column's name, never truncated, wrapped or guessed; a missing column raises."""
    missing = [c for c in types if c not in df.columns]
    if missing:
        raise KeyError(f"curated column {missing[0]!r} is not produced by the source or a step")
    out = df[list(types)].reset_index(drop=True)
    for c, t in types.items():
        dtype = PANDAS.get(t)
        if dtype is None or str(out[c].dtype) == dtype:
            continue
        s = out[c]
        if dtype in ("Int32", "Int64"):
            if not (pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s)):
                raise TypeError(f"curated column {c!r} is {s.dtype}, not {t}")
            number = s.astype("Float64") if s.dtype.kind == "f" else s
            lo, hi = _RANGE[t]
            bad = (number.notna() & ((number % 1 != 0) | (number < lo) | (number > hi))).fillna(
                False)  # fmt: skip
            if bad.any():
                raise ValueError(f"curated column {c!r}: {s[bad].iloc[0]!r} is not an {t}")
            out[c] = number.astype(dtype)
        elif dtype == "boolean":
            values = s.dropna()
            if not (pd.api.types.is_bool_dtype(s.dtype)
                    or values.map(lambda v: isinstance(v, bool | np.bool_)).all()):  # fmt: skip
                raise TypeError(f"curated column {c!r} is {s.dtype}, not bool")
            out[c] = s.astype(dtype)
        else:
            out[c] = s.astype(dtype)
    return out


def to_table(df: pd.DataFrame, types: Mapping[str, str]) -> pa.Table:
    schema = arrow_schema(types)
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


# --------------------------------------------------------------------------- contracts


def contract(rules: Mapping[str, Any], types: Mapping[str, str], key: Sequence[str],
             name: str) -> pdr.DataFrameSchema:  # fmt: skip
    """A pandera schema from a declared contract: per column its dtype (from the table's
    type), nullability, range, allowed values and pattern; the key unique."""
    import pandera.pandas as pdr

    columns = {}
    for col, rule in rules.items():
        checks = []
        lo, hi = rule.min, rule.max
        if lo is not None and hi is not None:
            checks.append(pdr.Check.in_range(lo, hi))
        elif lo is not None:
            checks.append(pdr.Check.ge(lo))
        elif hi is not None:
            checks.append(pdr.Check.le(hi))
        if rule.isin is not None:
            checks.append(pdr.Check.isin(rule.isin))
        if rule.pattern is not None:
            checks.append(pdr.Check.str_matches(rule.pattern))
        dtype = PANDAS.get(types.get(col, ""))
        columns[col] = pdr.Column(dtype, checks, nullable=rule.nullable, coerce=False)
    return pdr.DataFrameSchema(columns, unique=list(key), strict=False, name=name)


# --------------------------------------------------------------------------- conditions

_COND = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|<=|>=|<|>|=|not in|in)\s*(.+?)\s*$")
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")


def _value(raw: str, text: str) -> Any:
    """A condition's value: a number, 'quoted' or "quoted" text, true or false. Unquoted
    words are refused (YAML would read NO as false, 1:30 as 90)."""
    raw = raw.strip()
    if _NUMBER.match(raw):
        number = float(raw)
        return int(number) if re.match(r"^[+-]?\d+$", raw) else number
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    if raw in ("true", "false"):
        return raw == "true"
    raise ValueError(f"condition {text!r}: {raw!r} is not a value (a number, true, false, "
                     "or 'quoted text')")  # fmt: skip


def parse_condition(text: str) -> tuple[str, str, Any]:
    """``"arr_delay < 15"`` -> ("arr_delay", "<", 15). Values: numbers, 'text', true,
    false, or a [list] of them for in / not in."""
    m = _COND.match(text)
    if not m:
        ops = ", ".join(FILTER_OPS)
        raise ValueError(f"condition {text!r} is not 'column op value' (ops: {ops})")
    col, op, raw = m.groups()
    if op in ("in", "not in"):
        if not (raw.startswith("[") and raw.endswith("]")):
            raise ValueError(f"condition {text!r}: {op} needs a [list]")
        items = [x for x in re.split(r",(?=(?:[^'\"]*['\"][^'\"]*['\"])*[^'\"]*$)", raw[1:-1])
                 if x.strip()]  # fmt: skip
        return col, op, [_value(x, text) for x in items]
    return col, op, _value(raw, text)


def condition(df: pd.DataFrame, text: str) -> pd.Series:
    """Rows where the condition holds; a null never does (not even != or not in)."""
    col, op, value = parse_condition(text)
    known = df[col].notna()
    return (FILTER_OPS[op](df[col], value).fillna(False).astype(bool) & known).astype(bool)


# --------------------------------------------------------------------------- gold measures

_FLOOR = {"hour": "h", "day": "D", "week": "W-SUN", "month": "M", "year": "Y"}


def time_bin(values: pd.Series, every: str, zone: str = "UTC") -> pd.Series:
    """The start of each value's hour, day, week (Monday), month or year; a timestamp's
    bins are those of its wall time in ``zone`` (a 23:30 Los Angeles event of 31 January
    is in January), kept as the UTC instant they start at."""
    tz = values.dt.tz if isinstance(values.dtype, pd.DatetimeTZDtype) else None
    naive = values.dt.tz_convert(zone).dt.tz_localize(None) if tz is not None else (
        pd.to_datetime(values))  # fmt: skip
    if every in ("hour", "day"):
        out = naive.dt.floor(_FLOOR[every])
    else:
        out = naive.dt.to_period(_FLOOR[every]).dt.start_time
    if tz is None:
        return out
    local = out.dt.tz_localize(zone, ambiguous=True, nonexistent="shift_forward")
    return local.dt.tz_convert(tz)


def _prepare(df: pd.DataFrame, gold: Any, zone: str = "UTC") -> pd.DataFrame:
    if gold.time_bin is not None:
        binned = time_bin(df[gold.time_bin.column], gold.time_bin.every, zone)
        df = df.assign(**{gold.time_bin.output: binned})
    return df


def partials(
    df: pd.DataFrame, gold: Any, zone: str = "UTC"
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One frame's partial states: per group the sums, counts, minima and maxima the
    measures need, and per quantile measure the value counts. Partials of any split of
    the rows combine (:func:`combine`) into the partials of all of them."""
    df = _prepare(df, gold, zone)
    keys = gold.group_keys()
    cols: dict[str, pd.Series] = {"__n": pd.Series(1, index=df.index, dtype="int64")}
    how: dict[str, str] = {"__n": "sum"}
    quantiles = {}
    for name, m in gold.measures.items():
        c = m.column
        if m.how == "count":
            if c is not None:
                cols[name] = df[c].notna().astype("int64")
                how[name] = "sum"
        elif m.how in ("sum", "mean"):
            v = df[c]
            v = v.astype("float64") if m.how == "mean" or v.dtype.kind == "f" else v.astype("Int64")
            cols[f"{name}__s"] = v.fillna(0)
            cols[f"{name}__n"] = df[c].notna().astype("int64")
            how[f"{name}__s"] = how[f"{name}__n"] = "sum"
        elif m.how in ("min", "max"):
            cols[name] = df[c]
            how[name] = m.how
        elif m.how == "quantile":
            quantiles[name] = c
        elif m.how in ("rate", "count_where"):
            hit = condition(df, m.rate or m.count_where)
            base = df[m.of].notna() if m.of else pd.Series(True, index=df.index)
            cols[f"{name}__s"] = (hit & base).astype("int64")
            cols[f"{name}__n"] = base.astype("int64")
            how[f"{name}__s"] = how[f"{name}__n"] = "sum"
    frame = pd.DataFrame({k: df[k] for k in keys} | cols, index=df.index)
    if keys:
        wide = frame.groupby(keys, observed=True, dropna=False).agg(how).reset_index()
    else:
        wide = frame.agg(how).to_frame().T
    counts = {}
    for name, c in quantiles.items():
        v = df[[*keys, c]].dropna(subset=[c])
        counts[name] = v.groupby([*keys, c], observed=True, dropna=False).size().rename(
            "__count").reset_index().rename(columns={c: "__value"})  # fmt: skip
    return wide, counts


def combine(parts: Sequence[tuple[pd.DataFrame, dict[str, pd.DataFrame]]], gold: Any):
    """Partials of several frames -> the partials of their union (exact)."""
    keys = gold.group_keys()
    wide = pd.concat([p[0] for p in parts], ignore_index=True)
    how = {c: ("min" if c in gold.measures and gold.measures[c].how == "min" else
                "max" if c in gold.measures and gold.measures[c].how == "max" else "sum")
           for c in wide.columns if c not in keys}  # fmt: skip
    if keys:
        wide = wide.groupby(keys, observed=True, dropna=False).agg(how).reset_index()
    else:
        wide = wide.agg(how).to_frame().T
    counts = {}
    for name in parts[0][1] if parts else {}:
        v = pd.concat([p[1][name] for p in parts], ignore_index=True)
        counts[name] = v.groupby([*keys, "__value"], observed=True, dropna=False)["__count"].sum(
            ).reset_index()  # fmt: skip
    return wide, counts


def _quantile(counts: pd.DataFrame, keys: list[str], q: float) -> pd.DataFrame:
    """Exact quantile per group from value counts (pandas' linear interpolation), for
    every group at once: the counts sorted by group then value, one running total, and
    each group's two ranks found in it. The keys keep their types (a null in a nullable
    integer key stays one)."""
    if counts.empty:  # no value at all: no group, or (without keys) one row of NaN
        return pd.DataFrame([] if keys else [[np.nan]], columns=[*keys, "__q"])
    if keys:  # groups numbered in key order, null keys a group of their own
        group = counts.groupby(keys, observed=True, dropna=False).ngroup().to_numpy()
    else:
        group = np.zeros(len(counts), dtype="int64")
    values = counts["__value"].to_numpy(dtype="float64")
    order = np.lexsort((values, group))
    group, values = group[order], values[order]
    cum = np.cumsum(counts["__count"].to_numpy(dtype="int64")[order])
    first = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])  # each group's first row
    before = np.r_[0, cum][first]  # values counted in the groups before it
    n = np.r_[cum[first[1:] - 1], cum[-1]] - before
    h = (n - 1) * q
    lo, hi = np.floor(h), np.ceil(h)
    v_lo = values[np.searchsorted(cum, before + lo, side="right")]
    v_hi = values[np.searchsorted(cum, before + hi, side="right")]
    out = counts[keys].iloc[order[first]].reset_index(drop=True)
    out["__q"] = v_lo + (h - lo) * (v_hi - v_lo)
    return out


def finish(parts, gold: Any) -> pd.DataFrame:
    """The measures from combined partials, one row per group, sorted by the keys."""
    wide, counts = parts
    keys = gold.group_keys()
    out = wide[keys].copy()
    for k in keys:  # text keys as pandas' nullable string, whatever the engine gave
        if out[k].dtype == object or pd.api.types.is_string_dtype(out[k].dtype):
            out[k] = out[k].astype("string")
    for name, m in gold.measures.items():
        if m.how == "count":
            out[name] = (wide["__n"] if m.column is None else wide[name]).astype("int64")
        elif m.how == "sum":
            out[name] = wide[f"{name}__s"]
        elif m.how in ("min", "max"):
            out[name] = wide[name]
        elif m.how == "count_where":
            out[name] = wide[f"{name}__s"].astype("int64")
        elif m.how in ("mean", "rate"):
            n = wide[f"{name}__n"].astype("float64")
            out[name] = wide[f"{name}__s"].astype("float64") / n.where(n > 0)
        elif m.how == "quantile":
            qs = _quantile(counts[name], keys, m.q)
            merged = out[keys].merge(qs, on=keys, how="left") if keys else qs
            out[name] = merged["__q"].astype("float64").to_numpy() if len(merged) else np.nan
    return out.sort_values(keys).reset_index(drop=True) if keys else out


#: How many partials one task of :func:`combine_tree` combines.
COMBINE_FAN_IN = 8


def combine_tree(parts: Sequence[Any], gold: Any, fan_in: int = COMBINE_FAN_IN):
    """Delayed partials (one per file) -> one delayed of their combination, combined
    ``fan_in`` at a time on the workers, then those results, and so on: what any one
    task holds does not grow with the number of files (combining every file's partials
    at once held, per file, a quantile's value counts of each group: 3 GB at 60M rows
    in 32 MiB parts). Always combined at least once."""
    import dask

    level = list(parts)
    while True:
        level = [dask.delayed(combine)(level[i:i + fan_in], gold)
                 for i in range(0, max(len(level), 1), fan_in)]  # fmt: skip
        if len(level) == 1:
            return level[0]


def gold_frame(curated, gold: Any, zone: str = "UTC") -> pd.DataFrame:
    """A declared gold table from a pandas or dask frame of the curated table (time bins
    in ``zone``). On dask, each partition is reduced to partials on the workers and
    those combined in a tree there (:func:`combine_tree`); only the result travels."""
    if is_dask(curated):
        import dask

        parts = [dask.delayed(partials)(p, gold, zone) for p in curated.to_delayed()]
        (combined,) = dask.compute(combine_tree(parts, gold))
        return finish(combined, gold)
    return finish(combine([partials(curated, gold, zone)], gold), gold)


def gold_schema(gold: Any, types: Mapping[str, str]) -> pa.Schema:
    """The Arrow schema of a declared gold table: keys typed as in the curated table
    (a time bin of a date stays a date), counts int64, means, rates and quantiles float64."""
    fields = []
    for k in gold.group_keys():
        if gold.time_bin is not None and k == gold.time_bin.output:
            src = types.get(gold.time_bin.column)
            fields.append((k, pa.date32() if src == "date" and gold.time_bin.every != "hour"
                           else pa.timestamp("us", tz="UTC") if src == "timestamp"
                           else pa.timestamp("us")))  # fmt: skip
        else:
            fields.append((k, ARROW.get(types.get(k, "string"), pa.string())))
    for name, m in gold.measures.items():
        if m.how in ("count", "count_where"):
            fields.append((name, pa.int64()))
        elif m.how == "sum":
            t = types.get(m.column)
            fields.append((name, pa.float64() if t == "float64" else pa.int64()))
        elif m.how in ("min", "max"):
            fields.append((name, ARROW.get(types.get(m.column, "float64"), pa.float64())))
        else:
            fields.append((name, pa.float64()))
    return pa.schema(fields)


def gold_table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    cols = {}
    for f in schema:
        s = frame[f.name]
        if pa.types.is_date32(f.type):
            cols[f.name] = pa.array(pd.to_datetime(s).dt.date, type=f.type)
        else:
            cols[f.name] = pa.array(s, type=f.type, from_pandas=True)
    return pa.table(cols, schema=schema)
