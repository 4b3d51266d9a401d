"""Pipeline health: every declared pipeline and the tables it writes: their freshness,
rows per run, quarantine by reason (every curated table's), the quality report and the
latest Prefect flow runs, linking into the Prefect UI."""

from __future__ import annotations

import html
from datetime import datetime

import hvplot.pandas  # noqa: F401
import pandas as pd
import panel as pn
import param
from bokeh.models import NumeralTickFormatter

from riverlake import lake, pipelines, runs
from riverlake.apps.common import declarations, load_table, page, table_widget
from riverlake.pipelines import Pipeline
from riverlake.settings import get_settings

REFRESH_MS = 15_000


def declared_tables(declared: dict[str, Pipeline]) -> dict[str, Pipeline]:
    """Every table the declared pipelines write, with its pipeline: each pipeline's in
    turn, its curated table, that table's quarantine, its gold tables, then its other
    sources' tables (pure)."""
    out: dict[str, Pipeline] = {}
    for p in declared.values():
        first = []
        if p.curated is not None:
            first = [p.curated.table, pipelines.quarantine_table(p.curated.table)]
        first += [g.table for g in p.gold]
        for t in [*first, *sorted(p.tables() - set(first))]:
            out.setdefault(t, p)
    return out


def freshness(
    tables: list[dict], now: datetime | None = None, declared: dict[str, Pipeline] | None = None
) -> pd.DataFrame:
    """Age of each table's last commit against its pipeline's freshness policy: every
    table a declared pipeline writes ("missing" while it is not in the lake), then the
    lake's other tables (against the default policy). Pure but for the declarations,
    read when ``declared`` is None."""
    now = pd.Timestamp(now or datetime.now())
    if declared is None:
        declared = declarations()[0]
    owners = declared_tables(declared)
    in_lake = {t["name"]: t for t in tables}
    names = [*owners, *(t["name"] for t in tables if t["name"] not in owners)]
    rows = []
    for name in names:
        p = owners.get(name)
        expected = pd.Timedelta(p.freshness if p is not None else pipelines.DEFAULT_FRESHNESS)
        t = in_lake.get(name)
        row = {"pipeline": p.name if p is not None else "", "table": name, "rows": 0,
               "version": float("nan"), "last_commit": pd.NaT, "age_minutes": float("nan"),
               "expected_minutes": expected.total_seconds() / 60, "status": "missing"}  # fmt: skip
        if t is not None:
            last = pd.Timestamp(t["last_commit"])
            age = now - last
            row |= {"rows": t["rows"], "version": t["version"], "last_commit": last,
                    "age_minutes": round(age.total_seconds() / 60, 1),
                    "status": "fresh" if age <= expected else "stale"}  # fmt: skip
        rows.append(row)
    columns = ["pipeline", "table", "rows", "version", "last_commit", "age_minutes",
               "expected_minutes", "status"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def pipeline_status(fresh: pd.DataFrame, declared: dict[str, Pipeline]) -> pd.DataFrame:
    """One row per declared pipeline from :func:`freshness`'s rows: its tables in the
    lake of those it writes, the last commit of any, and its status: "never run" (none
    in the lake), "stale" (one is stale), "incomplete" (one is missing), else "fresh"."""
    rows = []
    for p in declared.values():
        mine = fresh[fresh["pipeline"] == p.name]
        present = mine[mine["status"] != "missing"]
        status = (
            "never run" if present.empty
            else "stale" if (mine["status"] == "stale").any()
            else "incomplete" if (mine["status"] == "missing").any()
            else "fresh"
        )  # fmt: skip
        schedule = ""
        if p.schedule is not None:
            schedule = p.schedule.cron or f"every {p.schedule.interval} s"
        rows.append({"pipeline": p.name, "description": p.description, "schedule": schedule,
                     "freshness_minutes": p.freshness.total_seconds() / 60,
                     "tables": f"{len(present)} of {len(mine)}",
                     "last_commit": present["last_commit"].max() if len(present) else pd.NaT,
                     "status": status})  # fmt: skip
    columns = ["pipeline", "description", "schedule", "freshness_minutes", "tables",
               "last_commit", "status"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


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
    """Every declared pipeline and the tables it writes: freshness, rows per run,
    quarantine, quality and the Prefect runs."""

    tables = param.List(default=[], doc="The lake catalog.")
    declared = param.Dict(default={}, doc="The declared pipelines, by name.")
    error = param.String(default="", doc="Why the declarations did not load; empty: they did.")
    runs_table = param.Selector(default=None, objects=[], doc="The table whose runs are shown.")
    quarantine = param.DataFrame(doc="Every curated table's quarantine, with a table column.")
    quality = param.DataFrame(doc="quality_report.")
    source_quarantine = param.DataFrame(doc="source_quarantine (files, pages, messages).")

    def __init__(self, **params):
        super().__init__(**params)
        self.refresh()

    def refresh(self) -> None:
        declared, error = declarations()
        catalog = lake.list_tables(get_settings())
        names = list(declared_tables(declared))
        names += [t["name"] for t in catalog if t["name"] not in names]
        self.param.runs_table.objects = names
        update: dict = {"declared": declared, "error": error or "", "tables": catalog}
        if self.runs_table not in names:
            curated = [p.curated.table for p in declared.values() if p.curated is not None]
            update["runs_table"] = next(iter(curated + names), None)
        self.param.update(**update)  # one event: the tables render once
        self.quarantine = self.load_quarantine()
        self.quality = load_table(lake.QUALITY_REPORT)
        self.source_quarantine = load_table(lake.SOURCE_QUARANTINE, columns=["source", "reason"])

    def quarantine_tables(self) -> dict[str, str]:
        """curated table -> its quarantine table, for every declared curated table."""
        return {
            p.curated.table: pipelines.quarantine_table(p.curated.table)
            for p in self.declared.values()
            if p.curated is not None
        }

    def load_quarantine(self) -> pd.DataFrame:
        frames = []
        for table, quarantine in self.quarantine_tables().items():
            q = load_table(quarantine, columns=["failed_check"])
            if "failed_check" in q:
                frames.append(pd.DataFrame({"table": table, "failed_check": q["failed_check"]}))
        if not frames:
            return pd.DataFrame({"table": pd.Series(dtype="string"),
                                 "failed_check": pd.Series(dtype="string")})  # fmt: skip
        return pd.concat(frames, ignore_index=True)

    def quarantine_by_reason(self) -> pd.DataFrame:
        """Quarantined rows per curated table and failed check."""
        q = self.quarantine
        if q is None or not len(q):
            return pd.DataFrame({"table": pd.Series(dtype="string"),
                                 "failed_check": pd.Series(dtype="string"),
                                 "rows": pd.Series(dtype="int64")})  # fmt: skip
        return (
            q.groupby(["table", "failed_check"]).size().rename("rows").reset_index()
            .sort_values(["rows", "table"], ascending=[False, True], kind="stable")
        )  # fmt: skip

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

    def fresh(self) -> pd.DataFrame:
        return freshness(self.tables, declared=self.declared)

    @param.depends("tables", "declared", "error")
    def _pipelines(self):
        if self.error:
            return pn.pane.Alert(f"The pipeline declarations do not load: {self.error}",
                                 alert_type="danger")  # fmt: skip
        return table_widget(pipeline_status(self.fresh(), self.declared),
                            css_classes=["pipelines"])  # fmt: skip

    @param.depends("tables", "declared")
    def _freshness(self):
        return table_widget(self.fresh(), css_classes=["freshness"])

    @param.depends("tables", "runs_table")
    def _runs_rows(self):
        if not self.runs_table:
            return pn.pane.Markdown("No runs yet.")
        r = rows_per_run(self.runs_table)
        r = r.assign(version=r["version"].astype(str))
        if not len(r):
            return pn.pane.Markdown("No runs yet.")
        return r.hvplot.bar(
            x="version", y="rows", title=f"Rows per run ({self.runs_table})", height=260,
            responsive=True, yformatter=NumeralTickFormatter(format="0,0"),
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
            pn.pane.Markdown("## Pipelines"),
            self._pipelines,
            pn.pane.Markdown("## Table freshness"),
            self._freshness,
            pn.Row(
                pn.Column(
                    pn.widgets.Select.from_param(
                        self.param.runs_table, label="Rows per run of", width=300
                    ),
                    pn.panel(self._runs_rows, sizing_mode="stretch_width"),
                    sizing_mode="stretch_width",
                ),
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
