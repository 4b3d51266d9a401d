"""Pipeline health: table freshness, rows per run, quarantine by reason, the quality report
and the latest Prefect flow runs, linking into the Prefect UI."""

from __future__ import annotations

import html
from datetime import datetime

import hvplot.pandas  # noqa: F401
import pandas as pd
import panel as pn
import param
from bokeh.models import NumeralTickFormatter

from riverlake import lake, pipelines, runs
from riverlake.analytics.flights import CURATED_TABLE, QUARANTINE_TABLE
from riverlake.apps.common import load_table, page, table_widget
from riverlake.settings import get_settings

REFRESH_MS = 15_000


def freshness(tables: list[dict], now: datetime | None = None) -> pd.DataFrame:
    """Age of each table's last commit against its freshness policy (pure but for the
    declarations it reads the policy from)."""
    now = pd.Timestamp(now or datetime.now())
    rows = []
    for t in tables:
        last = pd.Timestamp(t["last_commit"])
        expected = pd.Timedelta(pipelines.expected_interval(t["name"]))
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
    t = lake.table(table, get_settings())
    rows = [] if t is None else [c for c in t.commits(50) if c["rows"] is not None]
    if not rows:
        return pd.DataFrame(columns=["version", "time", "batch", "rows"])
    frame = pd.DataFrame(rows).rename(columns={"timestamp": "time"}).fillna({"batch": ""})
    frame["time"] = pd.to_datetime(frame["time"], unit="ms")
    return frame[["version", "time", "batch", "rows"]].sort_values("version")


def prefect_runs(limit: int = 10) -> pd.DataFrame:
    """The latest flow runs, with a link into the Prefect UI.

    Run names come from outside (anyone who can start a run names it): they are escaped
    before they become HTML.
    """
    settings = get_settings()
    try:
        latest = runs.recent_runs(settings, limit=limit)
    except Exception as exc:  # the page stays up; it says what did not answer
        msg = f"Prefect API {settings.prefect_api_url} unreachable: {type(exc).__name__}"
        return pd.DataFrame({"error": [html.escape(msg)]})
    return pd.DataFrame(
        [
            {
                "run": f'<a href="{html.escape(runs.run_url(settings, r["id"]))}" '
                f'target="_blank">{html.escape(r["name"])}</a>',
                "flow": html.escape(r["flow"]),
                "state": html.escape(r["state"]),
                "start": r["start"],
                "duration_s": round(r["duration_s"], 1),
            }
            for r in latest
        ],
        columns=["run", "flow", "state", "start", "duration_s"],
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
        self.quarantine = load_table(QUARANTINE_TABLE)
        self.quality = load_table(lake.QUALITY_REPORT)
        self.source_quarantine = load_table(lake.SOURCE_QUARANTINE, columns=["source", "reason"])

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
        return table_widget(freshness(self.tables), css_classes=["freshness"])

    @param.depends("tables")
    def _runs_rows(self):
        r = rows_per_run(CURATED_TABLE)
        r = r.assign(version=r["version"].astype(str))
        if not len(r):
            return pn.pane.Markdown("No runs yet.")
        return r.hvplot.bar(
            x="version", y="rows", title="Rows per run (flights)", height=260, responsive=True,
            yformatter=NumeralTickFormatter(format="0,0"),
        )  # fmt: skip

    @param.depends("quarantine")
    def _quarantine(self):
        return table_widget(self.quarantine_by_reason(), css_classes=["quarantine"])

    @param.depends("source_quarantine")
    def _source_quarantine(self):
        return table_widget(self.source_quarantine_by_reason(), css_classes=["source-quarantine"],
                            pagination="remote", page_size=10)  # fmt: skip

    @param.depends("quality")
    def _quality(self):
        return table_widget(self.latest_quality(), pagination="remote", page_size=15)

    @param.depends("tables")
    def _prefect(self):
        latest = prefect_runs()  # every field escaped there; the links stay links
        return pn.pane.HTML(latest.to_html(escape=False, index=False), css_classes=["prefect-runs"])

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
