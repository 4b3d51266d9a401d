"""Dashboards: the chart each declared gold table asks for (its ``chart:``), drawn from
the gold table in the lake, filtered on the table's keys.

Every pipeline's gold tables, the shipped ones and a user's own (``./pipelines/*.yaml``),
appear here as soon as they are declared with a chart. A chart's x is a time column (a
line over time) or a key (bars); its optional ``by`` key draws one line or one bar group
per value. The keys become filters: a multiple choice for text keys, a range slider for
numbers and times.

The data logic (which filters a table gets, filtering a frame by them, combining the rows
that share a point of the chart, line or bars) is pure, in the functions below; the
:class:`GoldDashboard` only wires them to widgets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import hvplot.pandas  # noqa: F401  (registers .hvplot on pandas)
import pandas as pd
import panel as pn
import param
from bokeh.models import NumeralTickFormatter

from riverlake.apps.common import TableWatcher, declarations, load_table, page
from riverlake.apps.formats import axis_format
from riverlake.pipelines.model import Gold, Pipeline

REFRESH_MS = 10_000
#: How each kind of measure combines over the rows that share a point of the chart.
SUMMED = {"count", "sum", "count_where"}
AVERAGED = {"mean", "rate", "quantile"}


def label(pipeline: str, table: str) -> str:
    return f"{pipeline} / {table}"


def charted(declared: dict[str, Pipeline]) -> dict[str, tuple[Pipeline, Gold]]:
    """Every declared gold table with a chart, by its label ("pipeline / table"), in
    declaration order."""
    return {label(p.name, g.table): (p, g) for p in declared.values() for g in p.gold if g.chart}


def is_time(series: pd.Series) -> bool:
    """A date or timestamp column (dates read from the lake are datetime64)."""
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        return True
    if series.dtype == object:  # dates as Python objects
        first = series.dropna()
        return len(first) > 0 and isinstance(first.iloc[0], date)
    return False


def chart_kind(frame: pd.DataFrame, gold: Gold) -> str:
    """ "line" when the chart's x is a time column, else "bar"."""
    assert gold.chart is not None
    x = gold.chart.x
    return "line" if x in frame and is_time(frame[x]) else "bar"


@dataclass(frozen=True)
class KeyFilter:
    """A filter on a key: ``choice`` (options: its distinct values as text), ``range``
    (numbers) or ``time``; ``bounds``: (lowest, highest) for the last two."""

    column: str
    kind: str
    options: tuple = ()
    bounds: tuple | None = None

    def everything(self) -> Any:
        """The filter's value that keeps every row."""
        return [] if self.kind == "choice" else self.bounds


def key_filters(frame: pd.DataFrame, keys: list[str]) -> list[KeyFilter]:
    """The filters of a gold table's keys (those the frame has): a choice for text (and
    anything not a number or a time), a range for numbers, a time range for times. A
    range of one value filters nothing and is left out."""
    out = []
    for k in keys:
        if k not in frame:
            continue
        s = frame[k]
        number = pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)
        if is_time(s) or number:
            s = pd.to_datetime(s) if is_time(s) else s.dropna()
            if not s.notna().any() or s.min() == s.max():
                continue
            if number:
                cast = int if pd.api.types.is_integer_dtype(s.dtype) else float
                out.append(KeyFilter(k, "range", bounds=(cast(s.min()), cast(s.max()))))
            else:
                out.append(KeyFilter(k, "time", bounds=(s.min(), s.max())))
        else:
            options = tuple(sorted(s.dropna().astype(str).unique()))
            out.append(KeyFilter(k, "choice", options=options))
    return out


def _stamp(value: Any, like: pd.Series) -> pd.Timestamp:
    """``value`` as a timestamp comparable with ``like`` (its time zone, if any)."""
    t = pd.Timestamp(value)
    tz = getattr(like.dt, "tz", None)
    if tz is not None:
        t = t.tz_localize(tz) if t.tzinfo is None else t.tz_convert(tz)
    elif t.tzinfo is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    return t


def filter_frame(frame: pd.DataFrame, values: dict[str, Any]) -> pd.DataFrame:
    """The rows of ``frame`` inside the filters' values: column -> a list of values as
    text (empty: all) or a (low, high) range, both ends included (a time range's ends
    in the column's time zone when they have none)."""
    mask = pd.Series(True, index=frame.index)
    for col, value in values.items():
        if col not in frame or value is None:
            continue
        s = frame[col]
        if isinstance(value, list):
            if value:
                mask &= s.astype(str).isin([str(v) for v in value]) & s.notna()
        else:
            lo, hi = value
            if is_time(s):
                s = pd.to_datetime(s)
                lo, hi = _stamp(lo, s), _stamp(hi, s)
            mask &= (s >= lo) & (s <= hi)
    return frame[mask]


def weight_of(gold: Gold, measure: str) -> str | None:
    """The count measure that weighs ``measure`` when rows combine: a mean or quantile
    of c by the count of c, a rate over c by the count of c, else by the count of rows;
    None when the table has no such count."""
    m = gold.measures.get(measure)
    if m is None:
        return None
    over = m.of if m.how == "rate" else m.column
    counts = {w.count: name for name, w in gold.measures.items() if w.how == "count"}
    return counts.get(over) if over in counts else counts.get("*")


def combine(frame: pd.DataFrame, gold: Gold) -> pd.DataFrame:
    """One value of the chart's y per x (and per ``by`` value): the rows that share a
    point combine as their measure does (counts and sums add up, a minimum stays the
    lowest, means, rates and quantiles average weighted by their count), sorted by x."""
    chart = gold.chart
    assert chart is not None
    cols = [chart.x, *([chart.by] if chart.by and chart.by != chart.x else [])]
    how = gold.measures[chart.y].how if chart.y in gold.measures else "mean"
    if frame.empty:
        return frame[[*cols, chart.y]].reset_index(drop=True)
    groups = frame.groupby(cols, sort=True, dropna=False, observed=True)
    if how in SUMMED:
        out = groups[chart.y].sum(min_count=1)
    elif how in ("min", "max"):
        out = getattr(groups[chart.y], how)()
    else:
        y = pd.to_numeric(frame[chart.y], errors="coerce").astype("float64")
        w = weight_of(gold, chart.y)
        weight = (
            pd.to_numeric(frame[w], errors="coerce").astype("float64").fillna(0)
            if w in frame
            else pd.Series(1.0, index=frame.index)
        )
        weight = weight.where(y.notna(), 0.0)
        parts = frame[cols].assign(_yw=(y * weight).fillna(0.0), _w=weight)
        sums = parts.groupby(cols, sort=True, dropna=False, observed=True)[["_yw", "_w"]].sum()
        out = (sums["_yw"] / sums["_w"].where(sums["_w"] > 0)).rename(chart.y)
    return out.reset_index()


def plot_frame(frame: pd.DataFrame, gold: Gold) -> tuple[pd.DataFrame, str]:
    """The combined points and the kind of plot: bars label their x as text (a key is a
    category: ``5`` not ``5.0``), in the order of its values."""
    kind = chart_kind(frame, gold)
    data = combine(frame, gold)
    chart = gold.chart
    assert chart is not None
    for col in [c for c in (chart.x if kind == "bar" else None, chart.by) if c]:
        data[col] = data[col].astype("string")
    return data, kind


def no_rows_message(pipeline: str, table: str) -> str:
    return f"**{table}** (pipeline {pipeline}): no rows yet: run `riverlake run {pipeline}`"


def draw(frame: pd.DataFrame, gold: Gold):
    """The chart of ``frame`` (a gold table's filtered rows) as hvplot draws it."""
    chart = gold.chart
    assert chart is not None
    data, kind = plot_frame(frame, gold)
    title = f"{gold.table}: {chart.y} by {chart.x}" + (f" and {chart.by}" if chart.by else "")
    y_dtype = data[chart.y].dtype
    options = dict(
        x=chart.x,
        y=chart.y,
        title=title,
        height=360,
        responsive=True,
        yformatter=NumeralTickFormatter(format=axis_format(chart.y, y_dtype)),
    )
    if chart.by:
        options["by"] = chart.by
    if kind == "line":
        return data.hvplot.line(**options)
    return data.hvplot.bar(rot=90 if data[chart.x].nunique() > 20 else 0, **options)


class GoldDashboard(pn.viewable.Viewer):
    """Pick a declared gold table; its chart, filtered on its keys."""

    gold = param.Selector(default=None, objects=[], doc='The table shown ("pipeline / table").')
    frame = param.DataFrame(doc="The gold table as the lake holds it.")
    values = param.Dict(default={}, doc="The key filters' values, by column.")
    error = param.String(default="", doc="Why the declarations did not load.")

    def __init__(self, **params):
        super().__init__(**params)
        declared, error = declarations()
        self.charts = charted(declared)
        self.error = error or ""
        self.filters: list[KeyFilter] = []
        self._widgets = pn.Column(width=320, css_classes=["gold-filters"])
        self._watcher = TableWatcher([])
        self.param.gold.objects = list(self.charts)
        if self.charts:
            self.gold = next(iter(self.charts))  # loads it

    def selection(self) -> tuple[Pipeline, Gold] | None:
        return self.charts.get(self.gold) if self.gold else None

    @param.depends("gold", watch=True)
    def _load(self) -> None:
        sel = self.selection()
        if sel is None:
            return
        self._watcher = TableWatcher([sel[1].table])
        self._watcher.all()
        self._set_frame(load_table(sel[1].table), keep=False)

    def refresh(self) -> bool:
        """Reload the table shown when it has a new version; True when it had."""
        sel = self.selection()
        if sel is None or not self._watcher.changed():
            return False
        self._set_frame(load_table(sel[1].table), keep=True)
        return True

    def _set_frame(self, frame: pd.DataFrame, keep: bool) -> None:
        sel = self.selection()
        assert sel is not None
        old = {f.column: f for f in self.filters}
        self.filters = key_filters(frame, sel[1].group_keys())
        values = {}
        for f in self.filters:
            v = f.everything()
            prev = old.get(f.column)
            if keep and prev is not None and f.column in self.values:
                was = self.values[f.column]
                if f.kind == "choice":
                    v = [c for c in was if c in f.options]
                elif prev.kind == f.kind and tuple(was) != tuple(prev.bounds or ()):
                    v = was  # a narrowed range stays; the whole range follows the data
            values[f.column] = v
        self._widgets.objects = [self._widget(f, values[f.column]) for f in self.filters]
        self.param.update(frame=frame, values=values)  # one event: the chart draws once

    def _widget(self, f: KeyFilter, value: Any):
        if f.kind == "choice":
            w = pn.widgets.MultiChoice(
                label=f.column, options=list(f.options), value=list(value),
                placeholder=f"All {f.column}", css_classes=["key-filter"],
            )  # fmt: skip
        elif f.kind == "time":
            lo, hi = (pd.Timestamp(b).tz_localize(None).to_pydatetime() for b in f.bounds)
            v = tuple(pd.Timestamp(b).tz_localize(None).to_pydatetime() for b in value)
            w = pn.widgets.DateRangeSlider(label=f.column, start=lo, end=hi, value=v)
        else:
            lo, hi = f.bounds
            whole = all(float(b).is_integer() for b in f.bounds)
            step = 1 if whole else (hi - lo) / 100
            w = pn.widgets.RangeSlider(label=f.column, start=lo, end=hi, value=tuple(value),
                                       step=step)  # fmt: skip
        w.param.watch(lambda e, col=f.column: self._set_value(col, e.new), "value")
        return w

    def _set_value(self, column: str, value: Any) -> None:
        self.values = {**self.values, column: list(value) if isinstance(value, list) else value}

    def selected(self) -> pd.DataFrame:
        """The gold table's rows inside the filters."""
        frame = self.frame if self.frame is not None else pd.DataFrame()
        return filter_frame(frame, self.values)

    @param.depends("frame", "values")
    def _rows(self):
        frame = self.frame if self.frame is not None else pd.DataFrame()
        n, total = len(self.selected()), len(frame)
        return pn.pane.Markdown(f"{n:,} of {total:,} rows", css_classes=["gold-rows"])

    @param.depends("gold", "frame", "values", "error")
    def _chart(self):
        if self.error:
            return pn.pane.Alert(f"The pipeline declarations do not load: {self.error}",
                                 alert_type="danger")  # fmt: skip
        sel = self.selection()
        if sel is None:
            return pn.pane.Markdown("No declared gold table has a chart (`chart:` in its "
                                    "declaration).")  # fmt: skip
        p, g = sel
        if self.frame is None or self.frame.empty:
            return pn.pane.Markdown(no_rows_message(p.name, g.table), css_classes=["no-rows"])
        rows = self.selected()
        if rows.empty:
            return pn.pane.Markdown("No rows match the filters.", css_classes=["no-rows"])
        return pn.pane.HoloViews(draw(rows, g), sizing_mode="stretch_width")

    def __panel__(self):
        controls = pn.Column(
            pn.widgets.Select.from_param(self.param.gold, label="Gold table"),
            self._rows,
            self._widgets,
            width=340,
        )
        return pn.Row(controls, pn.Column(self._chart, sizing_mode="stretch_width"),
                      sizing_mode="stretch_width")  # fmt: skip


if pn.state.served:
    pn.extension(sizing_mode="stretch_width")
    dashboard = GoldDashboard()
    pn.state.add_periodic_callback(dashboard.refresh, period=REFRESH_MS)

    page("Riverlake: dashboards", dashboard).servable(title="Riverlake: dashboards")
