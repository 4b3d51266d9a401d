"""The platform's Prometheus metrics, computed at scrape time from the lake and Prefect.

``riverlake metrics`` serves them (the local stack runs it; in Kubernetes it is a
container of the apps pod). The Dask scheduler and workers export their own metrics at
``/metrics`` on their dashboard ports; Prometheus scrapes both (deploy/kubernetes).

Metrics (every one is used by an alert rule or the Grafana dashboard):

- ``riverlake_table_rows{table}``: rows in the current version (rows committed);
- ``riverlake_table_version{table}``;
- ``riverlake_table_last_commit_timestamp_seconds{table}``;
- ``riverlake_table_freshness_seconds{table}``: age of the last commit;
- ``riverlake_table_expected_interval_seconds{table}``: older than this is stale;
- ``riverlake_quarantined_rows{source}``: rows (or files, pages, messages) quarantined;
- ``riverlake_flow_runs{flow,state}``: flow runs started in the last 24 hours by state;
- ``riverlake_flow_run_duration_seconds{flow}``: the latest finished run's duration;
- ``riverlake_up{component}``: 1 when the lake / the Prefect API answered this scrape.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from riverlake import lake, pipelines, runs
from riverlake.analytics.flights import QUARANTINE_TABLE
from riverlake.settings import Settings, get_settings

#: Quarantine tables and the column that names their source (None: one source, the table).
QUARANTINE_TABLES = {QUARANTINE_TABLE: None, lake.SOURCE_QUARANTINE: "source"}


def quarantined(settings: Settings) -> dict[str, int]:
    """Quarantined rows per source: the flights contracts and every extraction source."""
    out: dict[str, int] = {}
    for name, column in QUARANTINE_TABLES.items():
        table = lake.table(name, settings)
        if table is None:
            continue
        if column is None:
            out[name.removesuffix("_quarantine")] = table.rows()
            continue
        counts = table.to_arrow(columns=[column])[column].value_counts().to_pylist()
        out.update({c["values"]: int(c["counts"]) for c in counts})
    return out


def flow_runs(settings: Settings, hours: int = 24) -> list[dict[str, Any]]:
    """Flow runs started in the last ``hours`` (flow, state, duration, end), from Prefect."""
    since = datetime.now(UTC) - timedelta(hours=hours)
    return runs.recent_runs(settings, limit=200, since=since)


class PlatformCollector(Collector):
    def __init__(self, settings: Settings | None = None):
        self.settings = settings

    def collect(self):
        settings = self.settings or get_settings()

        def g(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"riverlake_{name}", doc, labels=list(labels))

        up = g("up", "1 when the component answered this scrape.", "component")
        rows = g("table_rows", "Rows in the table's current version.", "table")
        version = g("table_version", "Table version.", "table")
        last = g("table_last_commit_timestamp_seconds", "Unix time of the last commit.", "table")
        fresh = g("table_freshness_seconds", "Seconds since the table's last commit.", "table")
        expected = g("table_expected_interval_seconds", "Older than this is stale.", "table")
        quar = g("quarantined_rows", "Rows, files, pages or messages quarantined.", "source")
        run_counts = g(
            "flow_runs", "Flow runs started in the last 24 h, by state.", "flow", "state"
        )
        duration = g("flow_run_duration_seconds", "The latest finished run's duration.", "flow")
        now = time.time()
        try:
            for t in lake.list_tables(settings, batches=False):
                committed = datetime.fromisoformat(t["last_commit"]).timestamp()
                rows.add_metric([t["name"]], t["rows"])
                version.add_metric([t["name"]], t["version"])
                last.add_metric([t["name"]], committed)
                fresh.add_metric([t["name"]], now - committed)
                interval = pipelines.expected_interval(t["name"], settings)
                expected.add_metric([t["name"]], interval.total_seconds())
            for source, n in quarantined(settings).items():
                quar.add_metric([source], n)
            up.add_metric(["lake"], 1)
        except Exception:  # a scrape never fails; riverlake_up says what did not answer
            up.add_metric(["lake"], 0)
        try:
            counts: dict[tuple[str, str], int] = {}
            latest: dict[str, float] = {}
            for r in flow_runs(settings):
                counts[(r["flow"], r["state"])] = counts.get((r["flow"], r["state"]), 0) + 1
                if r["end"] and r["flow"] not in latest:
                    latest[r["flow"]] = r["duration_s"]
            for (flow, state), n in sorted(counts.items()):
                run_counts.add_metric([flow, state], n)
            for flow, secs in latest.items():
                duration.add_metric([flow], secs)
            up.add_metric(["prefect"], 1)
        except Exception:
            up.add_metric(["prefect"], 0)
        yield from (rows, version, last, fresh, expected, quar, run_counts, duration, up)


#: The exporter's liveness and readiness path: answers without computing any metric.
HEALTH_PATH = "/healthz"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # Prometheus scrapes every 15 s: no access log
        pass


def app(registry: CollectorRegistry) -> Callable:
    """The exporter's WSGI app: ``/healthz`` answers at once (a scrape reads every table's
    log and asks Prefect; a probe or ``riverlake up`` must not wait for that), ``/`` and
    ``/metrics`` are prometheus_client's own exposition, anything else is 404."""
    metrics_app = make_wsgi_app(registry)

    def route(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path == HEALTH_PATH:
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        if path in ("/", "/metrics"):
            return metrics_app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"not found: {path}; the metrics are at /metrics\n".encode()]

    return route


def serve(
    port: int,
    address: str = "127.0.0.1",
    settings: Settings | None = None,
    collector: Collector | None = None,
):
    """Start the exporter's HTTP server in a daemon thread (a thread per request, so a
    slow scrape never holds up a health check); returns (server, thread)."""
    registry = CollectorRegistry()
    registry.register(collector or PlatformCollector(settings))
    server = make_server(address, port, app(registry), ThreadingWSGIServer, _QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server, thread
