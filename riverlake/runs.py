"""Prefect flow runs as plain data, through Prefect's own client.

The CLI, the metrics exporter and the pipeline-health app read runs here, never with
raw HTTP: the client speaks Prefect's API as Prefect does, and a Prefect API key
(``PREFECT_API_KEY``, Prefect Cloud or a server behind auth) is honoured.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from riverlake.settings import Settings

#: Seconds any one call to the Prefect API may take.
TIMEOUT_S = 5.0


def ui_url(settings: Settings) -> str:
    """The Prefect UI that belongs to the settings' API."""
    return str(settings.prefect_api_url).removesuffix("/api")


def run_url(settings: Settings, run_id: Any) -> str:
    return f"{ui_url(settings)}/runs/flow-run/{run_id}"


def client(settings: Settings, timeout: float = TIMEOUT_S):
    """A synchronous Prefect client for the settings' API (use it as a context manager)."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import PREFECT_API_KEY

    return SyncPrefectClient(
        str(settings.prefect_api_url),
        api_key=PREFECT_API_KEY.value(),
        httpx_settings={"timeout": timeout},
    )


def healthy(settings: Settings, timeout: float = 3.0) -> bool:
    """True when the Prefect API answers its health check."""
    try:
        with client(settings, timeout) as c:
            return c.api_healthcheck() is None
    except Exception:  # unreachable, refused, timed out: not healthy
        return False


def recent_runs(
    settings: Settings, limit: int = 10, since: datetime | None = None
) -> list[dict[str, Any]]:
    """The latest flow runs, newest first: id, name, flow, state, start, end, duration (s).

    Raises whatever the client raises when the API cannot be reached: callers decide.
    """
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterId,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    run_filter = None
    if since is not None:
        run_filter = FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since))
    with client(settings) as c:
        runs = c.read_flow_runs(
            flow_run_filter=run_filter, sort=FlowRunSort.START_TIME_DESC, limit=limit
        )
        ids = sorted({r.flow_id for r in runs})
        flows = c.read_flows(flow_filter=FlowFilter(id=FlowFilterId(any_=ids))) if ids else []
    names = {f.id: f.name for f in flows}
    return [
        {
            "id": str(r.id),
            "name": r.name,
            "flow": names.get(r.flow_id, "?"),
            "state": r.state_type.value if r.state_type else "UNKNOWN",
            "start": r.start_time,
            "end": r.end_time,
            "duration_s": float(r.total_run_time.total_seconds()) if r.total_run_time else 0.0,
        }
        for r in runs
    ]
