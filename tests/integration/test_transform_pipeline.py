"""The whole flights pipeline on the real data, and on bad input: every row accounted for,
contracts quarantine with reasons, late updates merge, gold values match pandas."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest

from riverlake import lake
from riverlake.demo import data as demo_data
from riverlake.settings import get_settings
from tests.conftest import riverlake_cli

pytestmark = pytest.mark.integration


def run(lake_url: str, *args: str, **env: str) -> dict:
    res = riverlake_cli(
        "run", "flights", "--json", *args, env={"RIVERLAKE_LAKE_URL": lake_url, **env},
        timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1])


def read(name: str, lake_url: str, **kw) -> pd.DataFrame:
    return lake.read_pandas(name, settings=get_settings(lake_url=lake_url), **kw)


# ------------------------------------------------------------------ the whole year

YEAR = "s3://riverlake-test/year"


@pytest.fixture(scope="module")
def year_run(stack_env) -> dict:
    return run(YEAR)


@pytest.fixture(scope="module")
def source() -> pd.DataFrame:
    raw = demo_data.load("flights")
    return pd.DataFrame({c: raw[c].to_numpy() for c in raw.columns}).astype(
        {"dep_delay": "float64", "arr_delay": "float64"}
    )


def test_every_row_of_2013_is_accounted_for(year_run, source):
    assert year_run["rows_in"] == len(source) == 336_776
    assert (
        year_run["rows_loaded"] + year_run["rows_quarantined"] + year_run["rows_merged"]
        == year_run["rows_in"]
    )
    curated = read("flights", YEAR, columns=["year", "month", "cancelled"])
    assert len(curated) == year_run["rows_loaded"]
    assert int(curated["cancelled"].sum()) == int(source["dep_time"].isna().sum()) == 8255


def test_route_stats_match_pandas(year_run, source):
    routes = read("route_stats", YEAR).set_index(["origin", "dest"])
    for origin, dest in [("JFK", "LAX"), ("LGA", "ATL"), ("EWR", "ORD")]:
        s = source[(source["origin"] == origin) & (source["dest"] == dest)]
        r = routes.loc[(origin, dest)]
        assert r["flights"] == len(s)
        assert r["distance"] == pytest.approx(s["distance"].mean())
        assert r["arr_delay_p50"] == pytest.approx(s["arr_delay"].quantile(0.5))
        assert r["arr_delay_p90"] == pytest.approx(s["arr_delay"].quantile(0.9))
        assert r["dep_delay_p99"] == pytest.approx(s["dep_delay"].quantile(0.99))


def test_daily_on_time_and_hourly_delay_match_pandas(year_run, source):
    daily = read("daily_on_time", YEAR).set_index("flight_date")
    s = source.assign(d=pd.to_datetime(source[["year", "month", "day"]].astype("int64")))
    by_day = s.groupby("d")["arr_delay"].agg(arrived="count", on_time=lambda x: int((x < 15).sum()))
    day = pd.Timestamp("2013-07-04")
    assert daily.loc[day, "flights"] == int((s["d"] == day).sum())
    assert daily.loc[day, "on_time_rate"] == pytest.approx(
        by_day.loc[day, "on_time"] / by_day.loc[day, "arrived"]
    )
    week = by_day.loc[pd.Timestamp("2013-06-28") : day]
    assert daily.loc[day, "on_time_rate_7d"] == pytest.approx(
        week["on_time"].sum() / week["arrived"].sum()
    )
    hours = read("delay_by_hour", YEAR).set_index("hour")
    assert hours.loc[18, "flights"] == int((source["hour"] == 18).sum())
    assert hours.loc[18, "mean_dep_delay"] == pytest.approx(
        source.loc[source["hour"] == 18, "dep_delay"].mean()
    )
    kpis = read("carrier_origin_daily", YEAR, filters=[("month", "=", 12)])
    k = kpis[(kpis["carrier"] == "UA") & (kpis["origin"] == "EWR")
             & (kpis["flight_date"] == pd.Timestamp("2013-12-24"))].iloc[0]  # fmt: skip
    ua = s[(s["carrier"] == "UA") & (s["origin"] == "EWR") & (s["d"] == pd.Timestamp("2013-12-24"))]
    assert k["flights"] == len(ua)
    assert k["mean_arr_delay"] == pytest.approx(ua["arr_delay"].mean())


def test_delay_by_weather_matches_an_independent_join(year_run, source):
    weather = pd.read_csv(demo_data.source_path("weather"))
    w = weather.drop_duplicates(["origin", "year", "month", "day", "hour"])
    joined = source.merge(w[["origin", "year", "month", "day", "hour", "visib", "wind_speed"]],
                          on=["origin", "year", "month", "day", "hour"], how="left")  # fmt: skip
    got = read("delay_by_weather", YEAR).set_index(["condition", "bucket"])
    fog = joined[joined["visib"] < 1]
    assert got.loc[("visib", "<1 mi"), "flights"] == len(fog)
    assert got.loc[("visib", "<1 mi"), "mean_dep_delay"] == pytest.approx(fog["dep_delay"].mean())
    windy = joined[joined["wind_speed"] >= 30]
    assert got.loc[("wind_speed", "30+ mph"), "flights"] == len(windy)
    assert (
        got.loc[("visib", "<1 mi"), "mean_dep_delay"]
        > got.loc[("visib", "10+ mi"), "mean_dep_delay"]
    )


IN_PARTS = "s3://riverlake-test/year-in-parts"


def test_the_year_curated_in_parts_equals_the_year_curated_whole(year_run):
    """The same run with months curated in parts of 1 MiB (each month's landed files hold
    about 3 MB): on the stack's S3 store and Dask workers, every month in several parts
    (their own files), and the same rows, quarantine and gold tables as whole months."""
    parts = run(IN_PARTS, RIVERLAKE_CURATE_PART_BYTES=str(1 << 20))
    for c in ("rows_in", "rows_loaded", "rows_quarantined", "rows_merged"):
        assert parts[c] == year_run[c], c
    files = {}
    for f in lake.table("flights", get_settings(lake_url=IN_PARTS)).files():
        month = int(f["partition_values"]["month"])
        files[month] = files.get(month, 0) + 1
    whole = {}
    for f in lake.table("flights", get_settings(lake_url=YEAR)).files():
        month = int(f["partition_values"]["month"])
        whole[month] = whole.get(month, 0) + 1
    assert set(files) == set(range(1, 13)) and all(files[m] > whole[m] for m in files), (
        files, whole)  # fmt: skip
    for table, key in [("flights", ["year", "month", "day", "carrier", "flight", "origin",
                                    "sched_dep_time"]),
                       ("flights_quarantine", ["year", "month", "failed_check", "source_file",
                                               "record"]),
                       ("quality_report", ["year", "month", "check"]),
                       ("carrier_origin_daily", ["flight_date", "carrier", "origin"]),
                       ("daily_on_time", ["flight_date"]),
                       ("route_stats", ["year", "origin", "dest"]),
                       ("delay_by_hour", ["hour"]),
                       ("delay_by_weather", ["condition", "bucket"])]:  # fmt: skip
        a, b = read(table, YEAR), read(table, IN_PARTS)
        if "source_file" in a:  # a landed file's path names its lake
            a, b = (x.assign(source_file=x["source_file"].str.rsplit("/", n=1).str[-1])
                    for x in (a, b))  # fmt: skip
        a, b = (x.drop(columns=["batch"], errors="ignore") for x in (a, b))  # the run's id
        a, b = (x.sort_values(key).reset_index(drop=True) for x in (a, b))
        assert len(a) > 0 or (
            table == "flights_quarantine" and year_run["rows_quarantined"] == 0
        ), table  # (the demo's year is clean; the unit test is not)
        pd.testing.assert_frame_equal(a[sorted(a.columns)], b[sorted(b.columns)],
                                      check_exact=False, rtol=1e-12)  # fmt: skip


def test_quality_report_covers_every_check_of_every_month(year_run):
    report = read("quality_report", YEAR)
    assert set(report["month"]) == set(range(1, 13))
    assert (report["rows_passed"] + report["rows_failed"] == report["rows_checked"]).all()
    per_month = report.groupby("month")["rows_checked"].first().sum()
    assert per_month == year_run["rows_loaded"] + year_run["rows_quarantined"]


# ------------------------------------------------------------------ bad input, late updates

BAD = "s3://riverlake-test/bad-input"


@pytest.fixture(scope="module")
def bad_run(stack_env) -> dict:
    """Land a day, then a file of late updates and bad rows for that day, and run again."""
    first = run(BAD, "--start", "2013-06-01", "--end", "2013-06-01")
    src = demo_data.load("flights")
    day = src[(src["month"] == 6) & (src["day"] == 1)].head(6).astype("string")
    late = day.head(3).assign(arr_delay="500")  # three late updates
    bad = day.tail(3).copy()
    bad.iloc[0, bad.columns.get_loc("month")] = "13"  # an impossible month
    bad.iloc[1, bad.columns.get_loc("origin")] = "XXX"  # not a New York airport
    bad.iloc[2, bad.columns.get_loc("dep_delay")] = "abc"  # not a number
    settings = get_settings(lake_url=BAD)
    fs = lake.filesystem(settings)
    path = lake.strip_scheme(lake.landing_uri("flights", settings))
    fs.pipe(f"{path}/year=2013/month=06/flights-2013-06-01.update-1.csv",
            pd.concat([late, bad]).to_csv(index=False).encode())  # fmt: skip
    # Two drops arrive too: one corrupt, one late update of a day's delays.
    drops = lake.strip_scheme(str(settings.drops_url))
    fs.pipe({f"{drops}/flights-2013-06-01.update-2.csv.gz": b"\x1f\x8b\x08\x00broken",
             f"{drops}/flights-2013-06-01.update-3.csv.gz": gzip.compress(
                 late.head(1).assign(arr_delay="700").to_csv(index=False).encode())})  # fmt: skip
    second = run(BAD, "--start", "2013-06-01", "--end", "2013-06-01")
    return {"first": first, "second": second, "late": late, "n": first["rows_in"]}


def test_drops_bad_files_are_quarantined_and_late_drops_update(bad_run):
    r = bad_run["second"]
    assert r["landing"] == {"source": "flight_drops", "units": 2, "rows_in": 2, "rows_loaded": 1,
                            "rows_quarantined": 1}  # fmt: skip
    settings = get_settings(lake_url=BAD)
    q = (
        lake.table(lake.SOURCE_QUARANTINE, settings).to_arrow().to_pandas()
    )  # binary originals: straight from Arrow
    (broken,) = q[q["source"] == "flight_drops"].itertuples()
    assert broken.unit.split("#")[0].endswith("flights-2013-06-01.update-2.csv.gz")
    assert broken.reason.startswith("unreadable csv file: corrupt gzip data")
    assert broken.original == b"\x1f\x8b\x08\x00broken"
    state = lake.read_state("flights", "flight_drops", settings)
    assert len(state["files"]) == 3  # the day, the late update and the broken drop


def test_bad_rows_are_quarantined_with_reasons_and_nothing_is_lost(bad_run):
    r, n = bad_run["second"], bad_run["n"]
    # June reads only its two new files, merged into the day it holds: 3 late updates, 3
    # bad rows, 1 late drop (which replaces one of the updates: merged); the 3 updated
    # flights replace the held ones
    assert r["months_merged"] == ["2013-06"]
    assert r["rows_in"] == 7
    assert (r["rows_loaded"], r["rows_quarantined"], r["rows_merged"]) == (3, 3, 1)
    assert r["rows_in"] == r["rows_loaded"] + r["rows_quarantined"] + r["rows_merged"]
    assert r["rows_replaced"] == 3
    assert len(read("flights", BAD)) == n - r["rows_replaced"] + r["rows_loaded"]
    q = read("flights_quarantine", BAD)
    assert sorted(q["failed_check"]) == [
        "dep_delay:type", "month:in_range(1, 12)", "origin:isin(['EWR', 'JFK', 'LGA'])"
    ]  # fmt: skip
    typed_bad = q[q["failed_check"] == "dep_delay:type"].iloc[0]
    assert typed_bad["source_file"].endswith("flights-2013-06-01.update-1.csv")
    assert json.loads(typed_bad["record"])["dep_delay"] == "abc"


def test_late_updates_replace_the_earlier_records(bad_run):
    curated = read("flights", BAD, filters=[("month", "=", 6)])
    assert len(curated) == bad_run["n"]
    late = bad_run["late"]
    keys = set(zip(late["carrier"], late["flight"].astype(int), late["sched_dep_time"].astype(int),
                   strict=True))  # fmt: skip
    mask = [(c, f, t) in keys for c, f, t in zip(curated["carrier"], curated["flight"],
                                                  curated["sched_dep_time"], strict=True)]  # fmt: skip
    assert sum(mask) == 3
    # the late drop (update-3) comes after the landed update-1: its 700 wins for its flight
    assert sorted(curated.loc[mask, "arr_delay"]) == [500, 500, 700]


def test_quality_report_counts_the_failures(bad_run):
    report = read("quality_report", BAD)
    last = report[report["batch"] == bad_run["second"]["batch"]].set_index("check")
    assert last.loc["month:in_range(1, 12)", "rows_failed"] == 1
    assert last.loc["origin:isin(['EWR', 'JFK', 'LGA'])", "rows_failed"] == 1
    assert last.loc["distance:in_range(1, 6000)", "rows_failed"] == 0
    assert (last["rows_checked"] == 5).all()  # the new rows that typed, after the merge


def test_rerun_changes_nothing(bad_run):
    again = run(BAD, "--start", "2013-06-01", "--end", "2013-06-01")
    assert again["curated_skipped"] is True
    assert len(read("flights_quarantine", BAD)) == 3
    assert len(read("flights", BAD)) == bad_run["n"]
    assert np.isfinite(read("daily_on_time", BAD)["on_time_rate"]).all()
