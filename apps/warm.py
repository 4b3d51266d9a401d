"""Run once by `panel serve --setup` (riverlake serve) before the server takes requests:
what a process pays for only once is paid here, so a new server's first visitor waits
no longer than its later ones: the apps' imports, HoloViews' Bokeh backend, and one
flights dashboard rendered into a throwaway document (which also reads its gold tables
into the apps' ``pn.cache``, keyed by table version: a later commit is still read).
Panel's own ``--warm`` would run every app, the big-data one over the whole curated
table included (17 s on the 6M-row benchmark lake against 3 s for this)."""

from __future__ import annotations

import logging

from bokeh.document import Document

from riverlake.apps.common import page
from riverlake.apps.flights_dashboard import FlightsDashboard


def warm() -> None:
    view = page("warm-up", FlightsDashboard())
    root = view.get_root(Document())
    view._cleanup(root)  # nothing of it stays alive in the server


try:
    warm()
except Exception:  # a failed warm-up costs the first visitor time; it must not stop the server
    logging.getLogger("riverlake.apps").warning("riverlake: app warm-up failed", exc_info=True)
