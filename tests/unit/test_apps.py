"""The Panel apps driven through their parameters, over a small lake on a local path."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from riverlake import lake
from riverlake.analytics.flights import DAILY_KPI_SCHEMA
from riverlake.settings import get_settings

pytestmark = pytest.mark.unit


def kpis(days: int, carriers=("AA", "UA")) -> pd.DataFrame:
    rows = []
    for d in range(1, days + 1):
        for i, c in enumerate(carriers):
            n = 10 * (i + 1)
            rows.append({"year": 2013, "month": 1, "flight_date": pd.Timestamp(2013, 1, d),
                         "carrier": c, "origin": "JFK", "flights": n, "cancelled": i,
                         "departed": n - i, "arrived": n - i, "on_time": n - i - 1,
                         "mean_dep_delay": 5.0 * (i + 1), "mean_arr_delay": 2.0 * (i + 1),
                         "on_time_rate": (n - i - 1) / (n - i)})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture(autouse=True)
def _versions_read_every_time(monkeypatch):
    """These tests commit and look at once: no version is trusted for any time."""
    from riverlake.apps import common

    monkeypatch.setattr(common, "VERSION_TTL_S", 0.0)


@pytest.fixture
def lake_with_gold(tmp_path, monkeypatch):
    monkeypatch.setenv("RIVERLAKE_LAKE_URL", str(tmp_path / "lake"))
    monkeypatch.setenv("RIVERLAKE_PREFECT_API_URL", "http://127.0.0.1:1/api")
    lake.write_table("carrier_origin_daily", kpis(3), partition_by=["year", "month"],
                     schema=DAILY_KPI_SCHEMA)  # fmt: skip
    return get_settings()


def test_dashboard_filters_and_picks_up_new_versions(lake_with_gold):
    from riverlake.apps.flights_dashboard import FlightsDashboard

    d = FlightsDashboard()
    assert d.param.carriers.objects == ["AA", "UA"]
    assert d._numbers["flights"].value == 3 * (10 + 20)
    d.carriers = ["UA"]
    assert d._numbers["flights"].value == 60 and d.summary()["cancelled"] == 3
    # the plots' data, replaced in place: UA's days, and a bar slot for each carrier
    days = d._daily_source.data
    assert days["flight_date"].tolist() == [pd.Timestamp(2013, 1, n) for n in (1, 2, 3)]
    assert days["mean_arr_delay"].tolist() == [4.0, 4.0, 4.0]
    bars = d._carrier_source.data
    assert bars["carrier"] == ["AA", "UA"] and bars["on_time_rate"][1] == 18 / 19
    assert pd.isna(bars["on_time_rate"][0]) and bars["flights"][1] == 60
    d.date_range = (datetime(2013, 1, 2), datetime(2013, 1, 2))
    assert d._numbers["flights"].value == 20
    assert d.refresh() is False  # nothing new committed
    d.carriers = []
    d.date_range = d.param.date_range.bounds  # the whole range: it follows new data
    lake.write_table("carrier_origin_daily", kpis(5), partition_by=["year", "month"],
                     mode="overwrite_partitions", schema=DAILY_KPI_SCHEMA)  # fmt: skip
    assert d.refresh() is True
    assert d._numbers["flights"].value == 5 * 30
    # the cards' text: counts with separators, the delay with one decimal, the rate in %
    shown = {k: n.format.format(value=n.value) for k, n in d._numbers.items()}
    s = d.summary()
    assert shown["flights"] == "150" and shown["cancelled"] == "5"
    assert shown["on_time"] == f"{100 * s['on_time_rate']:.1f}%" == "93.1%"
    assert shown["delay"] == f"{s['mean_arr_delay']:.1f}"
    assert d.route_table().empty  # no route_stats table: an empty table, not an error


def test_the_routes_table_follows_the_origins_and_new_versions(lake_with_gold):
    from riverlake.apps.flights_dashboard import FlightsDashboard

    def routes(origins: list[str], flights: list[int]) -> pd.DataFrame:
        n = len(origins)
        return pd.DataFrame({"year": [2013] * n, "origin": origins, "dest": ["ORD"] * n,
                             "flights": flights, "distance": [700.0] * n,
                             **{f"arr_delay_p{q}": [1.0 * q] * n for q in (50, 90, 99)}})  # fmt: skip

    lake.write_table("route_stats", routes(["JFK", "LGA"], [5, 9]), partition_by=["year"])
    d = FlightsDashboard()
    table = d._routes
    assert table.value["origin"].tolist() == ["LGA", "JFK"]  # most flights first
    assert table.formatters["flights"].format == "0,0"  # a count, as the formats say
    d.origins = ["JFK"]
    assert d._routes is table and table.value["flights"].tolist() == [5]
    lake.write_table(
        "route_stats",
        routes(["JFK", "JFK", "EWR"], [3, 4, 8]),
        partition_by=["year"],
        mode="overwrite_partitions",
    )
    assert d.refresh() is True
    assert table.value["flights"].tolist() == [4, 3]
    d.origins = []
    assert table.value["origin"].tolist() == ["EWR", "JFK", "JFK"]


def test_table_explorer_rows_group_by_filter_and_csv(lake_with_gold):
    from riverlake.apps.table_explorer import TableExplorer

    t = TableExplorer()
    assert t.table == "carrier_origin_daily"
    assert t.info()["rows"] == 6
    # first chart: a repeated text column against a measure, not the mean year per year
    assert (t.group_by, t.metric) == ("carrier", "flights")
    assert "carrier" in list(t.schema()["column"])
    t.group_by, t.metric = "carrier", "flights"
    g = t.grouped().set_index("carrier")
    assert g.loc["UA", "rows"] == 3 and g.loc["UA", "mean_flights"] == 20
    t.where_column, t.where_value = "carrier", "AA"
    assert set(t.rows()["carrier"]) == {"AA"}
    csv = t.csv().read().decode().splitlines()
    assert len(csv) == 1 + 3 and csv[0].startswith("year,month")
    assert t.history()["version"].tolist() == [0]


def test_freshness_marks_stale_tables():
    from riverlake.apps.pipeline_health import freshness

    tables = [{"name": "a", "rows": 1, "version": 3, "last_commit": "2026-01-01T00:00:00"},
              {"name": "b", "rows": 2, "version": 0, "last_commit": "2026-01-02T23:00:00"}]  # fmt: skip
    f = freshness(tables, now=datetime(2026, 1, 3)).set_index("table")
    assert f.loc["a", "status"] == "stale" and f.loc["b", "status"] == "fresh"
    assert f.loc["b", "age_minutes"] == 60.0


def test_pipeline_health_without_prefect_says_so(lake_with_gold):
    from riverlake.apps.pipeline_health import PipelineHealth, prefect_runs

    h = PipelineHealth()
    assert [t["name"] for t in h.tables] == ["carrier_origin_daily"]
    assert h.quarantine_by_reason().empty
    assert list(h.source_quarantine_by_reason().columns) == ["source", "reason", "count"]
    h.source_quarantine = pd.DataFrame({"source": ["a", "a", "b"], "reason": ["x", "x", "y"]})
    assert h.source_quarantine_by_reason().to_numpy().tolist() == [["a", "x", 2], ["b", "y", 1]]
    assert "unreachable" in prefect_runs()["error"].iloc[0]


def test_sessions_share_a_table_until_it_gets_a_new_version(lake_with_gold):
    from riverlake.apps.common import load_table

    first = load_table("carrier_origin_daily")
    assert load_table("carrier_origin_daily") is first  # the second session reads nothing
    lake.write_table("carrier_origin_daily", kpis(4), partition_by=["year", "month"],
                     mode="overwrite_partitions", schema=DAILY_KPI_SCHEMA)  # fmt: skip
    second = load_table("carrier_origin_daily")
    assert second is not first and len(second) == len(kpis(4)) != len(first)
    assert load_table("no_such_table").empty


def test_pipeline_health_renders_on_an_empty_lake(tmp_path, monkeypatch):
    import panel as pn
    from bokeh.document import Document

    from riverlake.apps.pipeline_health import PipelineHealth

    monkeypatch.setenv("RIVERLAKE_LAKE_URL", str(tmp_path / "empty"))
    monkeypatch.setenv("RIVERLAKE_PREFECT_API_URL", "http://127.0.0.1:1/api")
    h = PipelineHealth()
    assert h.tables == []
    pn.panel(h).get_root(Document())  # a fresh deployment's first page renders
    assert h._runs_rows().object == "No runs yet."


def test_the_flights_dashboard_renders_on_an_empty_lake(tmp_path, monkeypatch):
    """A fresh deployment's first page: no gold table yet. (Its hourly chart returned a
    Markdown pane into a HoloViews pane, which refused it.)"""
    import panel as pn
    from bokeh.document import Document

    from riverlake.apps.flights_dashboard import FlightsDashboard

    monkeypatch.setenv("RIVERLAKE_LAKE_URL", str(tmp_path / "empty"))
    d = FlightsDashboard()
    doc = Document()
    doc.add_root(pn.panel(d).get_root(doc))
    doc.validate()  # what the server does before sending the page (an unset slider bound: 500)
    assert "No delay-by-hour table yet" in d._hours().data
    assert d.summary()["flights"] == 0


def test_the_serve_warm_up_runs_on_an_empty_lake_and_on_a_lake_with_gold(tmp_path, lake_with_gold):
    """`riverlake serve --setup apps/warm.py`: a warm-up that raised would stop the server
    from starting; on a lake with gold tables it fills the apps' cache."""
    import runpy

    from riverlake.apps import common

    runpy.run_path(str(Path(common.__file__).parent / "warm.py"))
    assert common.load_table("carrier_origin_daily") is common.load_table("carrier_origin_daily")
    empty = {**os.environ, "RIVERLAKE_LAKE_URL": str(tmp_path / "empty")}
    res = subprocess.run([sys.executable, str(Path(common.__file__).parent / "warm.py")],
                         env=empty, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0 and "warm-up failed" not in res.stderr, res.stderr[-2000:]


def test_numbers_are_formatted_by_what_they_mean():
    import pyarrow as pa
    from bokeh.models import DateFormatter, NumberFormatter

    from riverlake.apps.formats import PYTHON, number_format, number_kind, tabulator_formatters

    codes = [("year", "int32"), ("year", pd.Int32Dtype()), ("month", pa.int32()),
             ("day", "int64"), ("hour", "Int32"), ("flight", "int32"), ("stream_seq", "int64"),
             ("id", "int64"), ("version", "int64"), ("dep_time", "int32"),
             ("plane_year", "float64"), ("event_id", "int64")]  # fmt: skip
    assert {number_format(n, t) for n, t in codes} == {"0"}
    delays = ["dep_delay", "arr_delay", "mean_arr_delay", "arr_delay_p90", "delay"]
    assert {number_format(n, "float64") for n in delays} == {"0,0.0"}
    rates = ["on_time_rate", "on_time_rate_7d", "delayed_15_rate"]
    assert {number_format(n, "double") for n in rates} == {"0.0%"}
    assert number_format("flights", pd.Int64Dtype()) == "0,0"  # a count
    assert number_kind("distance", "float64") == "measure"
    assert number_format("air_time", "float64") == "0,0.0[00]"  # minutes in the air: a measure
    for name, dtype in [("carrier", "string"), ("cancelled", "bool"), ("year", "string"),
                        ("flight_date", "datetime64[ns]"), ("on_time_rate", "object")]:  # fmt: skip
        assert number_format(name, dtype) is None, name
    assert PYTHON["code"].format(value=2013) == "2013"
    assert (
        PYTHON["delay"].format(value=6.05) == "6.0"
        and PYTHON["rate"].format(value=0.755) == "75.5%"
    )
    frame = pd.DataFrame({
        "year": pd.array([2013, None], dtype="Int32"), "flight_date": pd.to_datetime(["2013-01-01"] * 2),
        "carrier": ["UA", "AA"], "arr_delay": [1.25, float("nan")], "on_time_rate": [0.5, 1.0],
        "flights": [1200, 3], "cancelled": [True, False],
    })  # fmt: skip
    f = tabulator_formatters(frame)
    assert {c: m.format for c, m in f.items() if isinstance(m, NumberFormatter)} == {
        "year": "0", "arr_delay": "0,0.0", "on_time_rate": "0.0%", "flights": "0,0"}  # fmt: skip
    assert isinstance(f["flight_date"], DateFormatter) and f["flight_date"].format == "%Y-%m-%d"
    assert "carrier" not in f and "cancelled" not in f
    assert {m.text_align for m in f.values()} == {"right"}


def test_explorer_defaults_chart_a_measure_by_a_few_repeated_labels():
    import pyarrow as pa

    from riverlake import pipelines
    from riverlake.analytics.declared import arrow_schema
    from riverlake.analytics.flights import DAILY_KPI_SCHEMA
    from riverlake.apps.formats import explorer_defaults

    CURATED_SCHEMA = arrow_schema(pipelines.pipeline("flights").curated_types())

    def cols(schema: pa.Schema) -> list[tuple[str, str]]:
        return [(f.name, str(f.type)) for f in schema]

    # the curated flights, as a 200-row sample of 1 January shows them
    flights = {"carrier": 14, "tailnum": 200, "origin": 3, "dest": 53, "manufacturer": 13,
               "year": 1, "month": 1, "day": 1, "hour": 14}  # fmt: skip
    assert explorer_defaults(cols(CURATED_SCHEMA), flights, rows=200,
                             keys=["year", "month"]) == ("carrier", "dep_delay")  # fmt: skip
    # a carrier of its own per row is no group: the next text column with a few values
    assert explorer_defaults(cols(CURATED_SCHEMA), {**flights, "carrier": 200}, rows=200)[0] == (
        "origin"
    )
    daily = {"carrier": 15, "origin": 3, "year": 1, "month": 1}
    assert explorer_defaults(cols(DAILY_KPI_SCHEMA), daily, rows=200) == ("carrier", "flights")
    weather = [("id", "int64"), ("origin", "string"), ("year", "int64"), ("month", "int64"),
               ("day", "int64"), ("hour", "int64"), ("temp", "double"), ("dewp", "double"),
               ("time_hour", "string"), ("updated_at", "string")]  # fmt: skip
    assert explorer_defaults(weather, {"origin": 3, "time_hour": 68, "updated_at": 68}, 200,
                             keys=["id"]) == ("origin", "temp")  # fmt: skip
    # no text at all: a code with a few values (the hour), then the first measure
    hourly = [("year", "int32"), ("hour", "int32"), ("flights", "int64"),
              ("mean_dep_delay", "double"), ("delayed_15_rate", "double")]  # fmt: skip
    assert explorer_defaults(hourly, {"year": 1, "hour": 19}, rows=19) == ("hour", "flights")
    # the stream's events: event_id names a row, the sequence number is no measure
    events = [("event_id", "string"), ("event", "string"), ("flight_date", "string"),
              ("carrier", "string"), ("flight", "int64"), ("scheduled", "int64"),
              ("actual", "int64"), ("delay", "double"), ("published_at", "double"),
              ("stream_seq", "int64")]  # fmt: skip
    sample = {"event_id": 200, "event": 2, "flight_date": 1, "carrier": 12, "flight": 190}
    assert explorer_defaults(events, sample, rows=200, keys=["event_id"]) == ("event", "delay")
    # every label distinct (16 airlines): grouped by the first label, nothing to measure
    airlines = [("id", "int64"), ("carrier", "string"), ("name", "string"),
                ("updated_at", "string")]  # fmt: skip
    assert explorer_defaults(airlines, {"carrier": 16, "name": 16, "updated_at": 1}, 16,
                             keys=["id"]) == ("carrier", None)  # fmt: skip
    # no sample (an empty table): the first text column that does not name a row
    assert explorer_defaults(cols(CURATED_SCHEMA)) == ("carrier", "dep_delay")
    assert explorer_defaults([("version", "int64"), ("rows", "int64")]) == ("version", "rows")
    assert explorer_defaults([]) == (None, None)


# ---------------------------------------------------------------- declared pipelines

#: A user's own pipeline (./pipelines/*.yaml): a curated table and one charted gold table.
SALES_YAML = """
sales:
  description: shop sales
  freshness: PT2H
  sources:
    - name: sales_drops
      kind: files
      url: "{drops_url}/*.csv"
      format: csv
      sink: landing
      table: sales
      schema: {year: int32, month: int32, day: int32, shop: string, amount: float64}
  curated:
    table: sales
    key: [year, month, day, shop]
  gold:
    - table: shop_monthly
      by: [year, month, shop]
      measures:
        orders: count
        amount: {sum: amount}
        mean_amount: {mean: amount}
      chart: {x: month, y: amount, by: shop}
"""


def shop_monthly() -> pd.DataFrame:
    rows = [(y, m, shop, 10 * m + i, 100.0 * m + (50 if shop == "b" else 0) + y - 2020,
             float(m + i))
            for y in (2020, 2021) for m in (1, 2, 3) for i, shop in enumerate(("a", "b"))]  # fmt: skip
    f = pd.DataFrame(rows, columns=["year", "month", "shop", "orders", "amount", "mean_amount"])
    return f.astype({"year": "int32", "month": "int32"})


@pytest.fixture
def declared_lake(settings, tmp_path, monkeypatch):
    """The local lake with the flights daily KPIs and a user pipeline's gold table."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "sales.yaml").write_text(SALES_YAML)
    monkeypatch.setenv("RIVERLAKE_PIPELINES_DIR", str(folder))
    monkeypatch.setenv("RIVERLAKE_PREFECT_API_URL", "http://127.0.0.1:1/api")
    s = get_settings()
    lake.write_table("carrier_origin_daily", kpis(3), partition_by=["year", "month"],
                     schema=DAILY_KPI_SCHEMA, settings=s)  # fmt: skip
    lake.write_table("shop_monthly", shop_monthly(), partition_by=["year"], settings=s)
    return s


def flights_gold(name: str):
    from riverlake import pipelines

    return next(g for g in pipelines.pipeline("flights").gold if g.table == name)


def test_gold_charts_filters_and_points_are_pure_data():
    from riverlake import pipelines
    from riverlake.apps.gold_dashboard import (
        chart_kind,
        charted,
        combine,
        filter_frame,
        key_filters,
        plot_frame,
        weight_of,
    )

    shipped = pipelines.pipelines()
    assert list(charted(shipped)) == ["flights / carrier_origin_daily", "flights / route_stats",
                                      "flights / delay_by_hour"]  # fmt: skip
    daily, routes, hourly = (flights_gold(t) for t in ("carrier_origin_daily", "route_stats",
                                                       "delay_by_hour"))  # fmt: skip
    k = kpis(3)
    filters = {f.column: f for f in key_filters(k, daily.group_keys())}
    # year and month have one value here: no filter; the day a time range; text a choice
    assert list(filters) == ["flight_date", "carrier", "origin"]
    assert filters["flight_date"].kind == "time"
    assert filters["flight_date"].bounds == (pd.Timestamp(2013, 1, 1), pd.Timestamp(2013, 1, 3))
    assert (filters["carrier"].kind, filters["carrier"].options) == ("choice", ("AA", "UA"))
    assert filters["carrier"].everything() == [] and filters["origin"].options == ("JFK",)
    assert chart_kind(k, daily) == "line"

    everything = {c: f.everything() for c, f in filters.items()}
    assert filter_frame(k, everything).equals(k)
    ua = filter_frame(k, {**everything, "carrier": ["UA"],
                          "flight_date": (pd.Timestamp(2013, 1, 2), pd.Timestamp(2013, 1, 3))})  # fmt: skip
    assert ua["carrier"].tolist() == ["UA", "UA"]
    assert ua["flight_date"].tolist() == [pd.Timestamp(2013, 1, 2), pd.Timestamp(2013, 1, 3)]
    # a DateRangeSlider's values are datetimes; a tz-aware column compares in its zone
    utc = k.assign(flight_date=k["flight_date"].dt.tz_localize("UTC"))
    assert (
        len(filter_frame(utc, {"flight_date": (datetime(2013, 1, 3), datetime(2013, 1, 3))})) == 2
    )

    # rows sharing a point combine as their measure does: the on-time rate of AA (9 of
    # 10 arrived) and UA (18 of 19) is 27 of 29, weighted by the arrivals, not averaged
    assert weight_of(daily, "on_time_rate") == "arrived"
    assert weight_of(daily, "mean_dep_delay") == "departed"
    assert weight_of(hourly, "delayed_15_rate") == "flights"  # a mean of a bool: all rows
    points = combine(k, daily)
    assert points.columns.tolist() == ["flight_date", "origin", "on_time_rate"]
    assert len(points) == 3 and points["on_time_rate"].tolist() == pytest.approx([27 / 29] * 3)
    assert combine(filter_frame(k, {"carrier": ["AA"]}), daily)["on_time_rate"].tolist() == (
        pytest.approx([0.9] * 3)
    )

    # a key on x: bars, labelled as written, in the key's order (5, 10, 23; not "10" first)
    h = pd.DataFrame({"year": [2013, 2013, 2013, 2014], "hour": [23, 5, 10, 5],
                      "flights": [10, 30, 20, 10], "mean_dep_delay": [9.0, 1.0, 4.0, 2.0],
                      "mean_arr_delay": [1.0] * 4, "delayed_15_rate": [0.5, 0.1, 0.2, 0.3]})  # fmt: skip
    data, kind = plot_frame(h, hourly)
    assert kind == "bar" and data["hour"].tolist() == ["5", "10", "23"]
    # hour 5 over both years: (0.1 * 30 + 0.3 * 10) / 40
    assert data["delayed_15_rate"].tolist() == pytest.approx([0.15, 0.2, 0.5])
    assert [f.bounds for f in key_filters(h, hourly.group_keys())] == [(2013, 2014), (5, 23)]
    assert filter_frame(h, {"hour": (5.0, 10.0)})["hour"].tolist() == [5, 10, 5]
    r = pd.DataFrame({"year": [2013] * 3, "origin": ["JFK", "EWR", "JFK"],
                      "dest": ["LAX", "LAX", "SFO"], "arr_delay_p90": [30.0, 40.0, 50.0]})  # fmt: skip
    assert chart_kind(r, routes) == "bar"
    data, _ = plot_frame(r, routes)
    assert data.to_numpy().tolist() == [["LAX", "EWR", 40.0], ["LAX", "JFK", 30.0],
                                        ["SFO", "JFK", 50.0]]  # fmt: skip


def test_gold_dashboard_lists_every_charted_table_and_filters_on_its_keys(declared_lake):
    import holoviews as hv
    import panel as pn
    from bokeh.document import Document

    from riverlake.apps.gold_dashboard import GoldDashboard

    d = GoldDashboard()
    assert d.param.gold.objects == ["flights / carrier_origin_daily", "flights / route_stats",
                                    "flights / delay_by_hour", "sales / shop_monthly"]  # fmt: skip
    assert d.gold == "flights / carrier_origin_daily" and len(d.frame) == 6
    assert d._rows().object == "6 of 6 rows"
    chart = d._chart()
    assert isinstance(chart.object, hv.NdOverlay)  # one line per origin
    (line,) = chart.object.values()
    assert isinstance(line, hv.Curve)
    assert line.data["on_time_rate"].tolist() == pytest.approx([27 / 29] * 3)
    pn.panel(d).get_root(Document())  # the page builds, widgets and all

    widgets = {w.label: w for w in d._widgets.objects}
    assert list(widgets) == ["flight_date", "carrier", "origin"]
    assert isinstance(widgets["carrier"], pn.widgets.MultiChoice)
    assert isinstance(widgets["flight_date"], pn.widgets.DateRangeSlider)
    widgets["carrier"].value = ["AA"]  # a filter redraws
    assert d._rows().object == "3 of 6 rows"
    (line,) = d._chart().object.values()
    assert line.data["on_time_rate"].tolist() == pytest.approx([0.9] * 3)
    widgets["flight_date"].value = (datetime(2013, 1, 2), datetime(2013, 1, 2))
    assert d.selected()[["carrier", "flight_date"]].to_numpy().tolist() == [
        ["AA", pd.Timestamp(2013, 1, 2)]
    ]

    # a declared table the lake does not hold yet: a message naming it and its pipeline
    d.gold = "flights / route_stats"
    assert d._chart().object == (
        "**route_stats** (pipeline flights): no rows yet: run `riverlake run flights`"
    )
    assert d._widgets.objects == [] and d._rows().object == "0 of 0 rows"

    # the user's own pipeline: bars per month, one group per shop, filtered on its keys
    d.gold = "sales / shop_monthly"
    widgets = {w.label: w for w in d._widgets.objects}
    assert list(widgets) == ["year", "month", "shop"]
    assert isinstance(widgets["year"], pn.widgets.RangeSlider)
    assert (widgets["year"].start, widgets["year"].end, widgets["year"].step) == (2020, 2021, 1)
    assert widgets["shop"].options == ["a", "b"]
    bars = d._chart().object
    assert isinstance(bars, hv.Bars)
    # amounts add up over the years: month 1, shop a: 100 + 101
    got = {(r.month, r.shop): r.amount for r in bars.data.itertuples()}
    assert got == {("1", "a"): 201.0, ("1", "b"): 301.0, ("2", "a"): 401.0,
                   ("2", "b"): 501.0, ("3", "a"): 601.0, ("3", "b"): 701.0}  # fmt: skip
    widgets["year"].value = (2021, 2021)
    widgets["shop"].value = ["b"]
    got = {(r.month, r.shop): r.amount for r in d._chart().object.data.itertuples()}
    assert got == {("1", "b"): 151.0, ("2", "b"): 251.0, ("3", "b"): 351.0}
    assert d._rows().object == "3 of 12 rows"
    widgets["month"].value = (2, 3)
    assert sorted(d.selected()["month"]) == [2, 3]
    # a new commit: the narrowed filters stay, the new rows show
    more = shop_monthly().assign(amount=lambda f: f["amount"] + 1000)
    lake.write_table("shop_monthly", more, partition_by=["year"], mode="overwrite_partitions",
                     settings=declared_lake)  # fmt: skip
    assert d.refresh() is True and d.refresh() is False
    assert d.values["shop"] == ["b"] and d.values["year"] == (2021, 2021)
    got = {(r.month, r.shop): r.amount for r in d._chart().object.data.itertuples()}
    assert got == {("2", "b"): 1251.0, ("3", "b"): 1351.0}


def test_gold_dashboard_without_declared_charts_says_so(settings, tmp_path, monkeypatch):
    from riverlake.apps.gold_dashboard import GoldDashboard

    bare = tmp_path / "bare.yaml"
    bare.write_text(SALES_YAML.replace("      chart: {x: month, y: amount, by: shop}\n", ""))
    monkeypatch.setenv("RIVERLAKE_PIPELINES_FILE", str(bare))
    d = GoldDashboard()
    assert d.param.gold.objects == [] and d.gold is None
    assert "No declared gold table has a chart" in d._chart().object
    bare.write_text("sales: {curated: {table: x}}\n")
    broken = GoldDashboard()
    assert broken.error.startswith("pipeline 'sales' in ")
    assert "do not load" in broken._chart().object


def test_pipeline_health_covers_every_declared_pipeline_and_table(declared_lake):
    from riverlake.apps.pipeline_health import PipelineHealth, declared_tables, pipeline_status

    quarantine = pd.DataFrame({"year": [2020] * 3, "month": [1] * 3, "source_file": ["f"] * 3,
                               "failed_check": ["shop:pattern", "shop:pattern", "amount:min"],
                               "record": ["{}"] * 3})  # fmt: skip
    lake.write_table("sales_quarantine", quarantine, settings=declared_lake)
    lake.write_table("flights_quarantine", quarantine.assign(failed_check="origin:isin"),
                     settings=declared_lake)  # fmt: skip
    h = PipelineHealth()
    assert list(h.declared) == ["flights", "flight_events", "sales"]
    owners = {t: p.name for t, p in declared_tables(h.declared).items()}
    assert list(owners)[:7] == ["flights", "flights_quarantine", "carrier_origin_daily",
                                "route_stats", "delay_by_hour", "delay_by_weather",
                                "daily_on_time"]  # fmt: skip
    assert {t for t, p in owners.items() if p == "sales"} == {"sales", "sales_quarantine",
                                                             "shop_monthly"}  # fmt: skip
    assert owners["flight_events"] == "flight_events" and owners["weather"] == "flights"
    f = h.fresh().set_index("table")
    assert f.loc["shop_monthly", "pipeline"] == "sales"
    assert f.loc["shop_monthly", "status"] == "fresh" and f.loc["shop_monthly", "rows"] == 12
    assert f.loc["shop_monthly", "expected_minutes"] == 120  # the pipeline's own policy
    assert f.loc["sales", "status"] == "missing" and f.loc["route_stats", "status"] == "missing"
    assert f.loc["flight_events", "expected_minutes"] == 10
    s = pipeline_status(h.fresh(), h.declared).set_index("pipeline")
    assert s.loc["sales", "tables"] == "2 of 3" and s.loc["sales", "status"] == "incomplete"
    assert s.loc["flight_events", "status"] == "never run"
    assert s.loc["sales", "freshness_minutes"] == 120
    # every curated table's quarantine, by table and failed check
    assert h.quarantine_by_reason().to_numpy().tolist() == [
        ["flights", "origin:isin", 3], ["sales", "shop:pattern", 2], ["sales", "amount:min", 1]
    ]  # fmt: skip
    # rows per run: the first curated table in the lake by default, any declared table
    assert h.runs_table == "flights" and h._runs_rows().object == "No runs yet."
    h.runs_table = "shop_monthly"
    assert h._runs_rows().data["rows"].tolist() == [12]


def test_table_explorer_first_shows_a_declared_curated_table(declared_lake):
    from riverlake import pipelines
    from riverlake.apps.table_explorer import TableExplorer, default_table

    declared = pipelines.pipelines(declared_lake)
    assert default_table(["carrier_origin_daily", "flights", "sales"], declared) == "flights"
    assert default_table(["a_table", "sales"], declared) == "sales"
    assert default_table(["a_table", "b_table"], declared) == "a_table"
    assert default_table([], declared) is None
    assert default_table(["a_table", "flights"], {}) == "a_table"  # no declarations at all
    t = TableExplorer()
    assert t.param.table.objects == ["carrier_origin_daily", "shop_monthly"]
    assert t.table == "carrier_origin_daily"  # no curated table in this lake: the first
