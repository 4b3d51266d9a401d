"""Pipeline health: table freshness, rows per run, quarantine by reason, the quality report
and the latest Prefect flow runs, linking into the Prefect UI."""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime

import hvplot.pandas  # noqa: F401
import pandas as pd
import panel as pn
import param

from apps.common import load_table, page
from riverlake import lake
from riverlake.settings import get_settings

#: Expected commit interval per table; older than this is stale. Default: a day.
EXPECTED_INTERVAL = {"default": pd.Timedelta(days=1), "flight_events": pd.Timedelta(minutes=10)}
QUARANTINE = "flights_quarantine"
SOURCE_QUARANTINE = "source_quarantine"
QUALITY = "quality_report"
REFRESH_MS = 15_000


def freshness(tables: list[dict], now: datetime | None = None) -> pd.DataFrame:
    """Age of each table's last commit against its expected interval (pure)."""
    now = pd.Timestamp(now or datetime.now())
    rows = []
    for t in tables:
        last = pd.Timestamp(t["last_commit"])
        expected = EXPECTED_INTERVAL.get(t["name"], EXPECTED_INTERVAL["default"])
        age = now - last
        rows.append(
            {
                "table": t["name"],
                "rows": t["rows"],
                "version": t["version"],
                "last_commit": last,
                "age_minutes": round(age.total_seconds() / 60, 1),
                "expected_minutes": expected.total_seconds() / 60,
                "status": "fresh" if age <= expected else "stale",
            }
        )
    return pd.DataFrame(rows)


def rows_per_run(table: str) -> pd.DataFrame:
    """Rows written by each commit of ``table`` (from the commits' metadata)."""
    dt = lake.open_table(lake.table_uri(table, get_settings()))
    if dt is None:
        return pd.DataFrame(columns=["version", "time", "batch", "rows"])
    rows = [
        {
            "version": h.get("version"),
            "time": pd.Timestamp(h["timestamp"], unit="ms"),
            "batch": h.get("riverlake.batch", ""),
            "rows": int(h.get("riverlake.rows", 0) or 0),
        }
        for h in dt.history(50)
        if "riverlake.rows" in h
    ]
    return (
        pd.DataFrame(rows).sort_values("version")
        if rows
        else pd.DataFrame(columns=["version", "time", "batch", "rows"])
    )


def prefect_runs(limit: int = 10) -> pd.DataFrame:
    """The latest flow runs from the Prefect API, with a link into the Prefect UI."""
    api = str(get_settings().prefect_api_url)
    body = json.dumps({"limit": limit, "sort": "START_TIME_DESC"}).encode()
    req = urllib.request.Request(
        f"{api}/flow_runs/filter", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        runs = json.loads(urllib.request.urlopen(req, timeout=5).read())
    except OSError as exc:
        return pd.DataFrame({"error": [f"Prefect API {api} unreachable: {exc}"]})
    ui = api.removesuffix("/api")
    return pd.DataFrame(
        [
            {
                "run": f'<a href="{ui}/runs/flow-run/{r["id"]}" target="_blank">{r["name"]}</a>',
                "state": r["state_type"],
                "start": r.get("start_time"),
                "duration_s": round(r.get("total_run_time") or 0, 1),
            }
            for r in runs
        ]
    )


class PipelineHealth(pn.viewable.Viewer):
    """Freshness, rows per run, quarantine, quality and the Prefect runs."""

    tables = param.List(default=[], doc="The lake catalog.")
    quarantine = param.DataFrame(doc="flights_quarantine.")
    quality = param.DataFrame(doc="quality_report.")
    source_quarantine = param.DataFrame(doc="source_quarantine (files, pages, messages).")

    def __init__(self, **params):
        super().__init__(**params)
        self.refresh()

    def refresh(self) -> None:
        self.tables = lake.list_tables(get_settings())
        self.quarantine = load_table(QUARANTINE)
        self.quality = load_table(QUALITY)
        self.source_quarantine = load_table(SOURCE_QUARANTINE, columns=["source", "reason"])

    def quarantine_by_reason(self) -> pd.DataFrame:
        q = self.quarantine
        if q is None or not len(q):
            return pd.DataFrame(
                {"failed_check": pd.Series(dtype="string"), "rows": pd.Series(dtype="int64")}
            )
        return (
            q.groupby("failed_check")
            .size()
            .rename("rows")
            .reset_index()
            .sort_values("rows", ascending=False)
        )

    def source_quarantine_by_reason(self) -> pd.DataFrame:
        """Quarantined files, pages, records and messages per source and reason."""
        q = self.source_quarantine
        if q is None or not len(q):
            return pd.DataFrame({"source": pd.Series(dtype="string"),
                                 "reason": pd.Series(dtype="string"),
                                 "count": pd.Series(dtype="int64")})  # fmt: skip
        return (
            q.groupby(["source", "reason"]).size().rename("count").reset_index()
            .sort_values("count", ascending=False)
        )  # fmt: skip

    def latest_quality(self) -> pd.DataFrame:
        q = self.quality
        if q is None or not len(q):
            return pd.DataFrame()
        # the newest report row of each (table, year, month, check)
        last = q.drop_duplicates(["table", "year", "month", "check"], keep="last")
        g = last.groupby(["table", "check"])[["rows_checked", "rows_passed", "rows_failed"]].sum()
        return g.reset_index().sort_values("rows_failed", ascending=False)

    @param.depends("tables")
    def _freshness(self):
        return pn.widgets.Tabulator(
            freshness(self.tables), disabled=True, show_index=False, css_classes=["freshness"]
        )

    @param.depends("tables")
    def _runs_rows(self):
        r = rows_per_run("flights")
        r = r.assign(version=r["version"].astype(str))
        if not len(r):
            return pn.pane.Markdown("No runs yet.")
        return r.hvplot.bar(
            x="version", y="rows", title="Rows per run (flights)", height=260, responsive=True
        )

    @param.depends("quarantine")
    def _quarantine(self):
        return pn.widgets.Tabulator(
            self.quarantine_by_reason(), disabled=True, show_index=False, css_classes=["quarantine"]
        )

    @param.depends("source_quarantine")
    def _source_quarantine(self):
        return pn.widgets.Tabulator(
            self.source_quarantine_by_reason(), disabled=True, show_index=False,
            css_classes=["source-quarantine"], pagination="remote", page_size=10,
        )  # fmt: skip

    @param.depends("quality")
    def _quality(self):
        return pn.widgets.Tabulator(
            self.latest_quality(),
            disabled=True,
            show_index=False,
            pagination="remote",
            page_size=15,
        )

    @param.depends("tables")
    def _prefect(self):
        runs = prefect_runs()
        return pn.pane.HTML(runs.to_html(escape=False, index=False), css_classes=["prefect-runs"])

    def __panel__(self):
        return pn.Column(
            pn.pane.Markdown("## Table freshness"),
            self._freshness,
            pn.Row(
                pn.panel(self._runs_rows, sizing_mode="stretch_width"),
                pn.Column(pn.pane.Markdown("## Quarantine by reason"), self._quarantine),
            ),
            pn.pane.Markdown("## Sources: quarantined files, pages and messages"),
            self._source_quarantine,
            pn.pane.Markdown("## Quality report (latest per month)"),
            self._quality,
            pn.pane.Markdown("## Latest Prefect flow runs"),
            self._prefect,
            sizing_mode="stretch_width",
        )


if pn.state.served:
    pn.extension("tabulator", sizing_mode="stretch_width")
    health = PipelineHealth()
    pn.state.add_periodic_callback(health.refresh, period=REFRESH_MS)

    page("Riverlake: pipeline health", health).servable(title="Riverlake: pipeline health")
