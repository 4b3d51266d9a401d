"""Flights dashboard: KPI cards, delay over time, carrier comparison, routes, delay by hour
and by weather, with linked filters (date range, carriers, origins).

Reads gold tables only, never raw rows. State lives in ``param`` parameters, so tests
drive it by setting them and reading the outputs. New commits to the gold tables are
picked up by a periodic version check, without a page reload.
"""

from __future__ import annotations

import holoviews as hv
import hvplot.pandas  # noqa: F401  (registers .hvplot on pandas)
import pandas as pd
import panel as pn
import param
from bokeh.models import NumeralTickFormatter

from riverlake.analytics.analysis import filter_rows
from riverlake.analytics.flights import (
    DAILY_KPI_SCHEMA,
    DAILY_TABLE,
    HOURLY_TABLE,
    ROUTES_TABLE,
    WEATHER_TABLE,
    by_carrier,
    delay_by_day,
    summarize,
)
from riverlake.apps.common import TableWatcher, load_table, page, table_widget
from riverlake.apps.formats import COUNT, DELAY, PYTHON, RATE

#: The yearly gold tables the dashboard shows, by the parameter that holds each.
YEARLY = {ROUTES_TABLE: "routes", HOURLY_TABLE: "hourly", WEATHER_TABLE: "weather"}
REFRESH_MS = 10_000


class FlightsDashboard(pn.viewable.Viewer):
    """The flights dashboard over the gold tables."""

    carriers = param.ListSelector(default=[], objects=[], doc="Carriers shown; empty: all.")
    origins = param.ListSelector(default=[], objects=[], doc="Origins shown; empty: all.")
    date_range = param.DateRange(default=None, doc="Days shown (inclusive).")
    kpis = param.DataFrame(doc="carrier_origin_daily, refreshed on new versions.")
    routes = param.DataFrame(doc="route_stats.")
    hourly = param.DataFrame(doc="delay_by_hour.")
    weather = param.DataFrame(doc="delay_by_weather.")

    def __init__(self, **params):
        super().__init__(**params)
        self._watcher = TableWatcher([DAILY_TABLE, *YEARLY])
        self._numbers = {
            "flights": _card("Flights", COUNT),
            "cancelled": _card("Cancelled", COUNT),
            "delay": _card("Mean arrival delay (min)", DELAY),
            "on_time": _card("On time", RATE),
        }
        # Cards share the row and wrap onto a second line before their text would spill.
        self._cards = pn.FlexBox(*self._numbers.values(), css_classes=["kpi-cards"],
                                 flex_wrap="wrap", sizing_mode="stretch_width")  # fmt: skip
        self.refresh(force=True)
        self._update_cards()
        self._widgets = pn.Column(
            pn.widgets.DateRangeSlider.from_param(self.param.date_range, label="Days"),
            pn.widgets.MultiChoice.from_param(
                self.param.carriers, label="Carriers", placeholder="All carriers"
            ),
            pn.widgets.MultiChoice.from_param(
                self.param.origins, label="Origins", placeholder="All origins"
            ),
            width=320,
        )

    # ------------------------------------------------------------------ data

    def refresh(self, force: bool = False) -> bool:
        """Reload the tables whose version changed; True when anything was reloaded."""
        changed = self._watcher.changed() if not force else self._watcher.all()
        if not changed:
            return False
        if DAILY_TABLE in changed:
            kpis = load_table(DAILY_TABLE, DAILY_KPI_SCHEMA)
            carriers = sorted(kpis["carrier"].dropna().unique().tolist())
            origins = sorted(kpis["origin"].dropna().unique().tolist())
            self.param.carriers.objects = carriers
            self.param.origins.objects = origins
            update: dict = {"kpis": kpis}
            if len(kpis):
                lo, hi = kpis["flight_date"].min(), kpis["flight_date"].max()
                new = (lo.to_pydatetime(), hi.to_pydatetime())
                # A selection of the whole old range follows the data as it grows.
                whole = (
                    self.date_range is None
                    or force
                    or (tuple(self.date_range) == tuple(self.param.date_range.bounds or ()))
                )
                self.param.date_range.bounds = new
                if whole:
                    update["date_range"] = new
            elif self.param.date_range.bounds is None:  # no day yet: the slider needs bounds
                today = pd.Timestamp.now().normalize().to_pydatetime()
                self.param.date_range.bounds = (today - pd.Timedelta(days=1), today)
            self.param.update(**update)  # one event: views recompute once
        for name, attr in YEARLY.items():
            if name in changed:
                setattr(self, attr, load_table(name))
        return True

    def selected(self) -> pd.DataFrame:
        """The daily KPIs inside the filters (computed once per filter state)."""
        key = (tuple(self.carriers), tuple(self.origins), self.date_range, id(self.kpis))
        if getattr(self, "_selected_key", None) != key:
            self._selected_key, self._selected = key, self._select()
        return self._selected

    def _select(self) -> pd.DataFrame:
        k = self.kpis if self.kpis is not None else DAILY_KPI_SCHEMA.empty_table().to_pandas()
        filters = []
        if self.carriers:
            filters.append(("carrier", "in", list(self.carriers)))
        if self.origins:
            filters.append(("origin", "in", list(self.origins)))
        if self.date_range:
            lo, hi = (pd.Timestamp(d).normalize() for d in self.date_range)
            filters.append(("flight_date", "between", (lo, hi)))
        return filter_rows(k, filters) if len(k) else k

    @param.depends("carriers", "origins", "date_range", "kpis")
    def summary(self) -> dict[str, float]:
        return summarize(self.selected())

    @param.depends("carriers", "origins", "date_range", "kpis")
    def daily(self) -> pd.DataFrame:
        return delay_by_day(self.selected())

    @param.depends("carriers", "origins", "date_range", "kpis")
    def per_carrier(self) -> pd.DataFrame:
        return by_carrier(self.selected())

    @param.depends("origins", "routes")
    def route_table(self) -> pd.DataFrame:
        r = self.routes if self.routes is not None else pd.DataFrame()
        if len(r) and self.origins:
            r = r[r["origin"].isin(list(self.origins))]
        return r.sort_values("flights", ascending=False) if len(r) else r

    # ------------------------------------------------------------------ views

    @param.depends("carriers", "origins", "date_range", "kpis", watch=True)
    def _update_cards(self) -> None:
        """Update the KPI numbers in place (no re-render of the cards)."""
        s = self.summary()
        self._numbers["flights"].value = s["flights"]
        self._numbers["cancelled"].value = s["cancelled"]
        delay = s["mean_arr_delay"]
        self._numbers["delay"].value = round(delay, 1) if delay == delay else 0
        rate = s["on_time_rate"]
        self._numbers["on_time"].value = rate if rate == rate else 0

    @param.depends("carriers", "origins", "date_range", "kpis")
    def _timeseries(self):
        return self.daily().hvplot.line(
            x="flight_date", y="mean_arr_delay", title="Mean arrival delay per day (min)",
            responsive=True, height=280, xlabel="", ylabel="minutes",
        )  # fmt: skip

    @param.depends("carriers", "origins", "date_range", "kpis")
    def _bars(self):
        # One bar slot per known carrier, empty when filtered out: the plot's data keeps
        # its length, which an in-place update needs (BokehJS refuses a shrinking source
        # under a stale view: "Size mismatch").
        per = self.per_carrier().set_index("carrier").reindex(self.param.carriers.objects)
        return per.rename_axis("carrier").reset_index().hvplot.bar(
            x="carrier", y="on_time_rate", title="On-time rate by carrier",
            responsive=True, height=280, ylim=(0, 1), ylabel="on-time rate",
            yformatter=NumeralTickFormatter(format="0%"),
        )  # fmt: skip

    @param.depends("hourly")
    def _hours(self):
        h = self.hourly if self.hourly is not None and len(self.hourly) else None
        if h is None:
            return hv.Div("<p>No delay-by-hour table yet.</p>")  # in a HoloViews pane
        # Categorical hours ("05".."23"): one bar per hour, whatever hours exist.
        h = h.assign(hour=h["hour"].astype("int64").map("{:02d}".format))
        return h.hvplot.bar(x="hour", y="mean_dep_delay", title="Mean departure delay by hour",
                            responsive=True, height=260, ylabel="minutes")  # fmt: skip

    @param.depends("weather")
    def _weather(self):
        w = self.weather if self.weather is not None and len(self.weather) else None
        if w is None:
            return pn.pane.Markdown("No delay-by-weather table yet.")
        titles = {"visib": "visibility", "wind_speed": "wind", "precip": "precipitation"}
        return pn.Row(
            *[
                pn.pane.HoloViews(
                    w[w["condition"] == c].hvplot.bar(
                        x="bucket",
                        y="mean_dep_delay",
                        title=f"Departure delay by {t}",
                        height=240,
                        responsive=True,
                        ylabel="minutes",
                        xlabel="",
                        rot=20,
                    ),
                    sizing_mode="stretch_width",
                    linked_axes=False,  # each chart has its own buckets
                )
                for c, t in titles.items()
            ],
            sizing_mode="stretch_width",
        )

    @param.depends("origins", "routes")
    def _routes(self):
        cols = ["origin", "dest", "flights", "distance", "arr_delay_p50", "arr_delay_p90",
                "arr_delay_p99"]  # fmt: skip
        r = self.route_table()
        r = r[cols] if len(r) else pd.DataFrame(columns=cols)
        return table_widget(r, pagination="remote", page_size=10, sizing_mode="stretch_width")

    def __panel__(self):
        return pn.Row(
            self._widgets,
            pn.Column(
                self._cards,
                pn.pane.HoloViews(
                    _live(self._timeseries), sizing_mode="stretch_width", linked_axes=False
                ),
                pn.Row(
                    pn.pane.HoloViews(
                        _live(self._bars), sizing_mode="stretch_width", linked_axes=False
                    ),
                    pn.pane.HoloViews(self._hours, sizing_mode="stretch_width", linked_axes=False),
                ),
                self._weather,
                pn.pane.Markdown("### Routes"),
                self._routes,
                sizing_mode="stretch_width",
            ),
            sizing_mode="stretch_width",
        )


#: A KPI card: a light box whose number scales with the window (between 20 and 34 px).
CARD_STYLES = {"background": "#f4f7fb", "border": "1px solid #d5dde8", "border-radius": "8px",
               "padding": "4px 14px 8px 14px", "flex": "1 1 180px"}  # fmt: skip


def _card(label: str, kind: str) -> pn.indicators.Number:
    return pn.indicators.Number(
        label=label, value=0, format=PYTHON[kind], font_size="clamp(20px, 2.2vw, 34px)",
        title_size="11pt", css_classes=["kpi-card"], styles=CARD_STYLES, min_width=180,
        sizing_mode="stretch_width", margin=(4, 10, 8, 0),
    )  # fmt: skip


def _live(method):
    """A DynamicMap over a param method: a filter change updates the plot's data in place
    instead of rebuilding the Bokeh figure (the difference is most of the latency)."""
    return hv.DynamicMap(method).opts(framewise=True, axiswise=True)


if pn.state.served:
    pn.extension("tabulator", sizing_mode="stretch_width")
    dashboard = FlightsDashboard()
    pn.state.add_periodic_callback(dashboard.refresh, period=REFRESH_MS)

    page("Riverlake: NYC flights", dashboard).servable(title="Riverlake: NYC flights")
