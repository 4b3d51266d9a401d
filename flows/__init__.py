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
        try:
            return import_path(p.flow)
        except ValueError as e:
            raise RiverlakeError(f"pipeline {name!r}: flow: {e}") from None
    from riverlake.flows.pipeline import declared_flow

    try:
        return declared_flow(name)
    except RiverlakeError:
        raise


def deployments(targets: dict, settings=None, only: list[str] | None = None) -> list[dict]:
    """One Prefect deployment per declared pipeline and target (pure): the declaration
    gives the entrypoint, description, schedule, concurrency and parameters; ``targets``
    (prefect.yaml's ``targets``) the work pool, job variables and pull steps."""
    from riverlake import pipelines

    out = []
    for p in pipelines.pipelines(settings).values():
        schedules = []
        if p.schedule is not None:
            s = p.schedule
            when = {"cron": s.cron, "timezone": s.timezone} if s.cron else {"interval": s.interval}
            schedules = [{**when, "active": True}]
        for target, spec in targets.items():
            if only is not None and target not in only:
                continue
            d = {
                "name": f"{p.name}-{target}",
                # A module path, never a file: Prefect loads a file as a module of its
                # own name ("pipeline"), and Dask workers in other processes cannot
                # unpickle tasks of a module they cannot import.
                "entrypoint": entrypoint(p.name, settings),
                "description": p.description or f"the declared pipeline {p.name}",
                "tags": ["riverlake", p.name],
                "parameters": dict(p.parameters),
                # One run of a pipeline at a time; later ones wait or are dropped.
                "concurrency_limit": {"limit": 1, "collision_strategy": p.concurrency.upper()},
                "schedules": schedules,
                **spec,
            }
            out.append(d)
    return out
