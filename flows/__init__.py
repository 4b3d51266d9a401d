"""Prefect flows: they wire sources -> lake -> analytics; the logic lives in analytics/."""

from __future__ import annotations

import importlib

from riverlake.errors import RiverlakeError

#: Pipeline name -> "module:flow object". Pipelines are imported only when run.
PIPELINES = {
    "flights": "riverlake.flows.flights:flights_flow",
    "flight_events": "riverlake.flows.events:flight_events_flow",
}


def get_pipeline(name: str):
    """The Prefect flow of pipeline ``name``."""
    if name not in PIPELINES:
        known = ", ".join(sorted(PIPELINES))
        raise RiverlakeError(f"unknown pipeline {name!r}; known pipelines: {known}")
    module, attr = PIPELINES[name].split(":")
    return getattr(importlib.import_module(module), attr)
