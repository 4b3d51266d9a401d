"""Prefect flows: they wire sources -> lake -> analytics; the logic lives in analytics/.

Every declared pipeline runs on the generic flow (:mod:`riverlake.flows.pipeline`) unless
its declaration names a flow of its own (``flow:``, e.g. the event stream's drain).
"""

from __future__ import annotations

from riverlake.errors import RiverlakeError


def entrypoint(name: str, settings=None) -> str:
    """The Prefect entrypoint of pipeline ``name`` (``module:attribute``)."""
    from riverlake import pipelines

    p = pipelines.pipeline(name, settings)
    return p.flow if p.flow is not None else f"riverlake.flows.pipeline:{name}"


def get_pipeline(name: str, settings=None):
    """The Prefect flow of pipeline ``name``."""
    from riverlake import pipelines
    from riverlake.pipelines.model import import_path

    p = pipelines.pipeline(name, settings)  # an unknown pipeline: one line
    if p.flow is not None:
        return import_path(p.flow)
    from riverlake.flows.pipeline import declared_flow

    try:
        return declared_flow(name)
    except RiverlakeError:
        raise
