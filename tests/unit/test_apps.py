"""The Panel apps driven through their parameters, over a small lake on a local path."""

from __future__ import annotations

from datetime import datetime

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

    from riverlake.analytics.flights import CURATED_SCHEMA, DAILY_KPI_SCHEMA
    from riverlake.apps.formats import explorer_defaults

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
