"""Big-data view: every curated flight, rasterised by datashader on the server.

The dask frame is read once per session (columns pruned); zooming or panning asks the
server for a new aggregate of the visible range, so the browser only ever receives an
image, whatever the number of rows (tens of millions at benchmark scale).
"""

from __future__ import annotations

import hvplot.dask  # noqa: F401  (registers .hvplot on dask frames)
import panel as pn
import param

from riverlake import lake
from riverlake.analytics.flights import CURATED_TABLE
from riverlake.apps.common import page
from riverlake.errors import LakeError
from riverlake.settings import get_settings

AXES = {
    "sched_dep_utc": "Scheduled departure (UTC)",
    "distance": "Distance (miles)",
    "dep_delay": "Departure delay (min)",
    "arr_delay": "Arrival delay (min)",
    "air_time": "Air time (min)",
}


class BigDataView(pn.viewable.Viewer):
    """A datashaded scatter of two columns of the curated flights table."""

    x = param.Selector(default="sched_dep_utc", objects=list(AXES), doc="Horizontal axis.")
    y = param.Selector(default="arr_delay", objects=list(AXES), doc="Vertical axis.")

    def __init__(self, **params):
        super().__init__(**params)
        try:
            self.data = lake.read_table(CURATED_TABLE, columns=list(AXES), settings=get_settings())
        except LakeError:
            self.data = None

    @param.depends("x", "y")
    def plot(self):
        if self.data is None:
            return pn.pane.Markdown("No curated flights table yet: run `riverlake run flights`.")
        frame = self.data[[self.x, self.y]].dropna()
        return frame.hvplot.points(
            x=self.x,
            y=self.y,
            rasterize=True,
            cnorm="eq_hist",
            cmap="viridis",
            xlabel=AXES[self.x],
            ylabel=AXES[self.y],
            responsive=True,
            height=600,
            title=f"{AXES[self.y]} against {AXES[self.x]} (every flight, datashaded)",
        )

    def __panel__(self):
        return pn.Row(
            pn.Column(
                pn.widgets.Select.from_param(self.param.x, label="x"),
                pn.widgets.Select.from_param(self.param.y, label="y"),
                width=260,
            ),
            pn.pane.HoloViews(self.plot, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )


if pn.state.served:
    pn.extension(sizing_mode="stretch_width")
    page("Riverlake: every flight", BigDataView()).servable(title="Riverlake: every flight")
