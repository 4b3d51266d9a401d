"""analytics.flights on small frames: typing, flags, and the declared daily gold table (pandas vs
dask) with the dashboard's roll-ups."""

from __future__ import annotations

import math

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from riverlake import pipelines
from riverlake.analytics import declared
from riverlake.analytics.flights import (
    FLIGHTS_SCHEMA,
    SOURCE_COLUMNS,
    by_carrier,
    delay_by_day,
    flight_dates,
    prepare_flights,
    summarize,
    to_pandas,
)

pytestmark = pytest.mark.unit

#: The declared carrier_origin_daily gold table (measures as data).
DAILY = next(g for g in pipelines.pipeline("flights").gold if g.table == "carrier_origin_daily")


def daily_kpis(flights):
    return declared.gold_frame(flights, DAILY)


def raw_rows() -> pd.DataFrame:
    rows = [
        # year month day dep_time sched_dep dep_delay arr_time sched_arr arr_delay carrier flight tailnum origin dest air_time distance hour minute time_hour
        (2013, 1, 1, 517, 515, 2.0, 830, 819, 11.0, "UA", 1545, "N14228", "EWR", "IAH", 227.0, 1400, 5, 15, "2013-01-01 05:00:00"),
        (2013, 1, 1, 533, 529, 4.0, 850, 830, 20.0, "UA", 1714, "N24211", "EWR", "IAH", 227.0, 1416, 5, 29, "2013-01-01 05:00:00"),
        (2013, 1, 1, None, 600, None, None, 901, None, "UA", 1, None, "EWR", "ORD", None, 719, 6, 0, "2013-01-01 06:00:00"),
        (2013, 1, 1, 542, 540, 2.0, 923, 850, 33.0, "AA", 1141, "N619AA", "JFK", "MIA", 160.0, 1089, 5, 40, "2013-01-01 05:00:00"),
        (2013, 1, 2, 544, 545, -1.0, 1004, 1022, -18.0, "AA", 725, "N804JB", "JFK", "BQN", 183.0, 1576, 5, 45, "2013-01-02 05:00:00"),
        # flown but diverted: departure known, arrival delay unknown
        (2013, 1, 2, 600, 600, 0.0, None, 900, None, "AA", 9, "N1", "JFK", "LAX", None, 2475, 6, 0, "2013-01-02 06:00:00"),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=SOURCE_COLUMNS)


def test_prepare_flights_keeps_every_row_and_flags_cancelled():
    table = prepare_flights(raw_rows())
    assert table.schema == FLIGHTS_SCHEMA
    out = to_pandas(table)
    assert len(out) == 6
    assert list(out.columns) == FLIGHTS_SCHEMA.names
    assert out["cancelled"].tolist() == [False, False, True, False, False, False]
    assert str(out["dep_time"].dtype) == "Int32"
    assert out["flight_date"].iloc[4] == pd.Timestamp("2013-01-02")


def expected_kpis(df: pd.DataFrame) -> dict[tuple, dict]:
    """An independent, row-by-row computation of the gold aggregate."""
    out: dict[tuple, dict] = {}
    for r in df.itertuples():
        key = (r.flight_date, r.carrier, r.origin)
        e = out.setdefault(key, {"flights": 0, "cancelled": 0, "dep": [], "arr": []})
        e["flights"] += 1
        e["cancelled"] += bool(r.cancelled)
        if not pd.isna(r.dep_delay):
            e["dep"].append(r.dep_delay)
        if not pd.isna(r.arr_delay):
            e["arr"].append(r.arr_delay)
    return out


@pytest.mark.parametrize("engine", ["pandas", "dask"])
def test_daily_kpis_match_row_by_row(engine):
    flights = to_pandas(prepare_flights(raw_rows()))
    data = flights if engine == "pandas" else dd.from_pandas(flights, npartitions=3)
    kpis = daily_kpis(data)
    want = expected_kpis(flights)
    assert len(kpis) == len(want) == 3
    for row in kpis.itertuples():
        e = want[(row.flight_date, row.carrier, row.origin)]
        assert row.flights == e["flights"]
        assert row.cancelled == e["cancelled"]
        assert row.mean_dep_delay == pytest.approx(np.mean(e["dep"]))
        assert row.mean_arr_delay == pytest.approx(np.mean(e["arr"]))
        assert row.on_time_rate == pytest.approx(np.mean([a < 15 for a in e["arr"]]))


def test_daily_kpis_dask_equals_pandas_on_real_month():
    from riverlake.demo import data as demo_data

    raw = demo_data.load("flights")
    jan = to_pandas(prepare_flights(raw[raw["month"] == 1]))
    p = daily_kpis(jan)
    d = daily_kpis(dd.from_pandas(jan, npartitions=4))
    pd.testing.assert_frame_equal(p, d, check_exact=False, rtol=1e-9)
    assert p["flights"].sum() == len(jan) == 27004


def test_rollups_reaggregate_exactly():
    flights = to_pandas(prepare_flights(raw_rows()))
    kpis = daily_kpis(flights)
    s = summarize(kpis)
    assert s["flights"] == 6 and s["cancelled"] == 1
    assert s["mean_arr_delay"] == pytest.approx(np.mean([11, 20, 33, -18]))
    assert s["on_time_rate"] == pytest.approx(2 / 4)
    ua = summarize(kpis, ["UA"])
    assert ua["flights"] == 3 and ua["on_time_rate"] == pytest.approx(1 / 2)
    days = delay_by_day(kpis).set_index("flight_date")
    assert days["flights"].tolist() == [4, 2]
    assert days["mean_arr_delay"].iloc[1] == pytest.approx(-18.0)
    carriers = by_carrier(kpis).set_index("carrier")
    assert carriers.loc["AA", "on_time_rate"] == pytest.approx(1 / 2)
    assert carriers.loc["UA", "cancelled"] == 1
    assert math.isclose(carriers.loc["UA", "mean_arr_delay"], 15.5)


def test_monthly_partials_combine_to_the_pandas_answer():
    from riverlake.analytics.flights import combine_monthly, monthly_partials
    from riverlake.demo import data as demo_data

    raw = demo_data.load("flights")
    q1 = raw[raw["month"] <= 3]
    chunks = [prepare_flights(q1.iloc[i : i + 20_000]) for i in range(0, len(q1), 20_000)]
    got = combine_monthly([monthly_partials(c) for c in chunks]).to_pandas()
    want = (
        q1.assign(cancelled=q1["dep_time"].isna())
        .groupby(["carrier", "origin", "year", "month"])
        .agg(flights=("flight", "size"), cancelled=("cancelled", "sum"),
             mean_dep_delay=("dep_delay", "mean"), mean_arr_delay=("arr_delay", "mean"))
        .reset_index()
    )  # fmt: skip
    assert len(got) == len(want)
    merged = got.merge(want, on=["carrier", "origin", "year", "month"], suffixes=("", "_w"))
    assert len(merged) == len(want)
    assert (merged["flights"] == merged["flights_w"]).all()
    assert (merged["cancelled"] == merged["cancelled_w"]).all()
    assert np.allclose(
        merged["mean_dep_delay"], merged["mean_dep_delay_w"].astype(float), equal_nan=True
    )
    assert np.allclose(
        merged["mean_arr_delay"], merged["mean_arr_delay_w"].astype(float), equal_nan=True
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(-10, 10_050)),
            st.one_of(st.none(), st.integers(-1, 14)),
            st.one_of(st.none(), st.integers(-1, 33)),
        ),
        min_size=1,
        max_size=50,
    )
)
def test_flight_dates_are_the_calendar_s_dates_and_null_where_there_is_none(rows):
    """Python's own calendar is the oracle: a (year, month, day) is a date exactly when
    ``datetime.date`` accepts it; February 30, month 13, year 0 or a missing part: null."""
    import datetime

    import pyarrow as pa

    def oracle(y, m, d):
        try:
            return datetime.date(y, m, d)
        except (TypeError, ValueError):
            return None

    cols = [pa.array([r[i] for r in rows], type=pa.int32()) for i in range(3)]
    assert flight_dates(*cols).to_pylist() == [oracle(*r) for r in rows]


def test_flight_dates_of_parts_that_are_not_whole_numbers_are_missing_not_an_error():
    """A part that is no whole number (2020.5, NaN, "abc") makes its row's date missing,
    so the contract quarantines that row; it does not fail the batch."""
    import datetime

    import pyarrow as pa

    d = datetime.date
    assert flight_dates(pa.array([2013.0, 2020.5, None, float("nan")]), pa.array([2] * 4),
                        pa.array([5] * 4)).to_pylist() == [d(2013, 2, 5), None, None, None]  # fmt: skip
    assert flight_dates(pa.array(["2013", " 2014", "abc", ""]), pa.array(["2", "02", "1", "1"]),
                        pa.array([5] * 4)).to_pylist() == [d(2013, 2, 5), d(2014, 2, 5), None,
                                                           None]  # fmt: skip
    huge = pa.array([2**64 - 1, 2013], pa.uint64())
    assert flight_dates(huge, pa.array([1, 1], pa.int8()), pa.array([1, 1], pa.int16())
                        ).to_pylist() == [None, d(2013, 1, 1)]  # fmt: skip
