"""Flights dashboard: KPI cards, delay over time and a carrier comparison, filtered by carrier.

Reads the gold table ``carrier_origin_daily`` (never raw rows). State lives in
``param`` parameters, so tests drive it by setting them and reading the outputs.
"""

from __future__ import annotations

import hvplot.pandas  # noqa: F401  (registers .hvplot on pandas)
import pandas as pd
import panel as pn
import param

from analytics.flights import by_carrier, delay_by_day, summarize
from riverlake import lake

GOLD = "carrier_origin_daily"


def load_kpis() -> pd.DataFrame:
    """The gold KPIs, or an empty frame with the gold columns when nothing is committed yet."""
    from analytics.flights import DAILY_KPI_SCHEMA

    try:
        return lake.read_pandas(GOLD)
    except lake.LakeError:
        return DAILY_KPI_SCHEMA.empty_table().to_pandas()


class FlightsDashboard(pn.viewable.Viewer):
    """The flights dashboard over the carrier/origin/day gold table."""

    carriers = param.ListSelector(default=[], objects=[], doc="Carriers shown; empty means all.")
    kpis = param.DataFrame(doc="The gold table (loaded once, refreshed on new versions).")

    def __init__(self, kpis: pd.DataFrame | None = None, **params):
        data = load_kpis() if kpis is None else kpis
        super().__init__(kpis=data, **params)
        self.param.carriers.objects = sorted(data["carrier"].dropna().unique().tolist())
        self._picker = pn.widgets.MultiChoice.from_param(
            self.param.carriers, name="Carriers", placeholder="All carriers", width=320
        )

    def _selection(self) -> list[str] | None:
        return list(self.carriers) or None

    @param.depends("carriers", "kpis")
    def summary(self) -> dict[str, float]:
        return summarize(self.kpis, self._selection())

    @param.depends("carriers", "kpis")
    def daily(self) -> pd.DataFrame:
        return delay_by_day(self.kpis, self._selection())

    @param.depends("carriers", "kpis")
    def per_carrier(self) -> pd.DataFrame:
        return by_carrier(self.kpis, self._selection())

    @param.depends("carriers", "kpis")
    def _cards(self):
        s = self.summary()
        return pn.Row(
            pn.indicators.Number(name="Flights", value=s["flights"], format="{value:,.0f}"),
            pn.indicators.Number(name="Cancelled", value=s["cancelled"], format="{value:,.0f}"),
            pn.indicators.Number(
                name="Mean arrival delay (min)", value=round(s["mean_arr_delay"], 1)
            ),
            pn.indicators.Number(
                name="On time", value=round(100 * s["on_time_rate"], 1), format="{value}%"
            ),
        )

    @param.depends("carriers", "kpis")
    def _timeseries(self):
        return self.daily().hvplot.line(
            x="flight_date", y="mean_arr_delay", title="Mean arrival delay per day (min)",
            responsive=True, height=300, xlabel="", ylabel="minutes",
        )  # fmt: skip

    @param.depends("carriers", "kpis")
    def _bars(self):
        return self.per_carrier().hvplot.bar(
            x="carrier", y="on_time_rate", title="On-time rate by carrier",
            responsive=True, height=300, ylim=(0, 1), ylabel="on-time rate",
        )  # fmt: skip

    def __panel__(self):
        return pn.Column(
            pn.pane.Markdown("# Riverlake: NYC flights 2013"),
            self._picker,
            self._cards,
            pn.pane.HoloViews(self._timeseries, sizing_mode="stretch_width"),
            pn.pane.HoloViews(self._bars, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )


if pn.state.served:
    pn.extension(sizing_mode="stretch_width")
    FlightsDashboard().servable(title="Riverlake flights")
