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
    assert d.route_table().empty  # no route_stats table: an empty table, not an error


def test_table_explorer_rows_group_by_filter_and_csv(lake_with_gold):
    from riverlake.apps.table_explorer import TableExplorer

    t = TableExplorer()
    assert t.table == "carrier_origin_daily"
    assert t.info()["rows"] == 6
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
