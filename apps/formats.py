"""How the apps show numbers, and what the table explorer charts first (pure).

A column's meaning comes from its name and type: years, months, days, hours, clock
times (HHMM), flight numbers, ids, sequence numbers and versions are *codes*, shown as
written ("2013", not "2,013"); delays are minutes with one decimal; rates (fractions
0..1) are percentages; other integers are counts with thousands separators. The number
formats are numbro patterns, the language of Bokeh's ``NumberFormatter`` that Panel's
Tabulator renders with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

CODE, DELAY, RATE, COUNT, MEASURE = "code", "delay", "rate", "count", "measure"

#: Integer-like columns that name a thing or a moment rather than count anything.
CODE_NAMES = frozenset({
    "year", "month", "day", "hour", "minute", "flight", "id", "ids", "version", "seq",
    "stream_seq", "dep_time", "arr_time", "sched_dep_time", "sched_arr_time",
    "scheduled", "actual", "tz",
})  # fmt: skip
#: The last word of a code's name: ``plane_year``, ``event_id``, ``stream_seq``...
CODE_SUFFIXES = frozenset({"id", "ids", "seq", "year", "version", "number", "code"})
#: Names of text columns that identify a row or a batch: never a default group-by.
ID_TEXT_SUFFIXES = frozenset({"id", "ids", "batch", "at", "record", "original", "unit"})

#: numbro patterns (Bokeh ``NumberFormatter.format``) by kind.
NUMBRO = {CODE: "0", DELAY: "0,0.0", RATE: "0.0%", COUNT: "0,0", MEASURE: "0,0.0[00]"}
#: The same, as Python format strings with a ``{value}`` field (KPI cards, text).
PYTHON = {CODE: "{value:.0f}", DELAY: "{value:,.1f}", RATE: "{value:.1%}",
          COUNT: "{value:,.0f}", MEASURE: "{value:,.2f}"}  # fmt: skip

#: At most this many distinct values in the sample: a column worth grouping by.
LOW_CARDINALITY = 50


def numeric_type(dtype) -> str | None:
    """ "int", "float" or None (not a number; booleans are not numbers here).

    ``dtype``: a pandas/numpy dtype, a pyarrow type, or an Arrow type name ("int32",
    "double") as the explorer's schema lists them.
    """
    if not isinstance(dtype, str):
        try:
            dtype = pd.api.types.pandas_dtype(dtype)
        except TypeError:  # a pyarrow type
            dtype = str(dtype)
    if isinstance(dtype, str):
        name = dtype.lower()
        if name.startswith(("int", "uint")):
            return "int"
        if name.startswith(("double", "float", "halffloat", "decimal")):
            return "float"
        return None
    if pd.api.types.is_bool_dtype(dtype):
        return None
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    return None


def is_code(name: str) -> bool:
    """Whether a column named ``name`` holds codes (identifiers, calendar parts,
    clock times, versions) rather than quantities."""
    n = name.lower()
    return n in CODE_NAMES or n.rsplit("_", 1)[-1] in CODE_SUFFIXES


def number_kind(name: str, dtype) -> str | None:
    """What kind of number column ``name`` of type ``dtype`` holds; None: not a number."""
    num = numeric_type(dtype)
    if num is None:
        return None
    words = name.lower().split("_")
    if "rate" in words:
        return RATE
    if "delay" in words:
        return DELAY
    if is_code(name):
        return CODE
    return COUNT if num == "int" else MEASURE


def number_format(name: str, dtype) -> str | None:
    """The numbro pattern column ``name`` is shown with; None: not a number."""
    kind = number_kind(name, dtype)
    return None if kind is None else NUMBRO[kind]


def axis_format(name: str, dtype) -> str:
    """The numbro pattern of a chart axis showing column ``name``: rates as percentages,
    anything else with thousands separators and a decimal only where a tick needs one."""
    return "0%" if number_kind(name, dtype) == RATE else "0,0.[0]"


def is_day(name: str, dtype) -> bool:
    """A timestamp column that holds days (``flight_date``): shown without a time."""
    words = name.lower().split("_")
    return ("date" in words or "day" in words) and pd.api.types.is_datetime64_any_dtype(dtype)


def tabulator_formatters(frame: pd.DataFrame) -> dict:
    """Panel Tabulator ``formatters=`` for ``frame``: a Bokeh ``NumberFormatter`` per
    number column by its meaning (right-aligned, nulls empty), a ``DateFormatter`` for
    day columns."""
    from bokeh.models import DateFormatter, NumberFormatter

    out = {}
    for col, dtype in frame.dtypes.items():
        fmt = number_format(str(col), dtype)
        if fmt is not None:
            out[col] = NumberFormatter(format=fmt, text_align="right", nan_format="",
                                       null_format="")  # fmt: skip
        elif is_day(str(col), dtype):
            out[col] = DateFormatter(format="%Y-%m-%d", text_align="right")
    return out


def _is_text(dtype: str) -> bool:
    return dtype.lower() in ("string", "large_string", "utf8", "large_utf8", "object")


def _names_a_row(name: str) -> bool:
    return name.lower().rsplit("_", 1)[-1] in ID_TEXT_SUFFIXES


def explorer_defaults(
    columns: Sequence[tuple[str, str]],
    distinct: Mapping[str, int] | None = None,
    rows: int = 0,
    keys: Iterable[str] = (),
) -> tuple[str | None, str | None]:
    """The explorer's first chart for a table: (group by, mean of).

    ``columns``: (name, Arrow type name) in schema order; ``distinct``: distinct values
    per column in a sample of ``rows`` rows (None: no sample); ``keys``: the table's key
    and partition columns. Group by the first low-cardinality text column (2 to
    LOW_CARDINALITY values, repeated in the sample), else the first code column with a
    few values (e.g. ``hour``), else the first text column that does not identify a row;
    measure the first numeric column that is neither a code nor a key.
    """
    keys = set(keys)
    distinct = distinct or {}
    text = [n for n, t in columns if _is_text(t) and not _names_a_row(n) and n not in keys]
    codes = [n for n, t in columns if numeric_type(t) == "int" and (is_code(n) or n in keys)]

    def few(n: str, repeated: bool) -> bool:
        d = distinct.get(n)
        if d is None:
            return False
        return 2 <= d <= LOW_CARDINALITY and (not repeated or d <= max(rows // 2, 2))

    group = (
        next((n for n in text if few(n, repeated=True)), None)
        or next((n for n in codes if few(n, repeated=False)), None)
        or next(iter(text), None)
        or next(iter(codes), None)
    )
    metric = next(
        (
            n
            for n, t in columns
            if numeric_type(t) is not None and not is_code(n) and n not in keys and n != group
        ),
        None,
    )
    return group, metric
