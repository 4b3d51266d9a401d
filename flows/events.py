"""The flight_events pipeline: the NATS JetStream of departures and arrivals -> flight_events.

A run drains the stream in micro-batches until it has been idle for ``idle_s`` (or for
at most ``max_seconds``); each micro-batch is committed before it is acknowledged, so
the table is exactly-once (see riverlake.sources.stream). ``riverlake run flights
--watch`` runs the same consumer continuously beside the batch pipeline.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from riverlake import lake, pipelines
from riverlake.flows.runner import export_storage_credentials
from riverlake.settings import get_settings
from riverlake.sources.stream import consume

PIPELINE = "flight_events"


@task(name="consume-stream", persist_result=False)
def consume_stream(name: str, max_seconds: float, idle_s: float) -> dict[str, Any]:
    settings = get_settings()
    stats = consume(pipelines.source(PIPELINE, name, settings), settings, max_seconds, idle_s)
    get_run_logger().info("%s: %s", name, stats.summary())
    return stats.summary()


# One consumer keeps the stream's order: no Dask cluster to start for it.
@flow(name="flight_events", flow_run_name="flight_events drain {max_seconds}s",
      log_prints=True, retries=1, retry_delay_seconds=10, persist_result=True)  # fmt: skip
def flight_events_flow(max_seconds: float = 30.0, idle_s: float = 3.0) -> dict[str, Any]:
    """Consume the flight event stream into the flight_events table."""
    export_storage_credentials()
    lake.check_store(get_settings())
    return consume_stream("flight_events", max_seconds, idle_s)
