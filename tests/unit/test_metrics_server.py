"""The metrics exporter's HTTP server: a health endpoint that never pays for a scrape.

A scrape reads every table's log and asks Prefect for the day's runs: seconds on a full
lake or a loaded machine. Health checks (the local stack's ``up`` waits on it, and the
apps pod's readiness probe, whose timeout is 1 s) must not wait for that.
"""

from __future__ import annotations

import threading
import time
import urllib.request

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from riverlake.ops import metrics
from riverlake.ops.stack import free_port, services
from riverlake.settings import get_settings


class SlowCollector(Collector):
    """A scrape that takes ``seconds`` (as one on a full lake does), then one gauge."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started = threading.Event()

    def collect(self):
        self.started.set()
        time.sleep(self.seconds)
        gauge = GaugeMetricFamily("riverlake_test_value", "A value.", labels=["k"])
        gauge.add_metric(["a"], 7)
        yield gauge


def get(url: str, timeout: float) -> tuple[int, str, float]:
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read().decode(), time.monotonic() - t0


def test_health_answers_at_once_while_a_scrape_is_running():
    slow = SlowCollector(5.0)
    port = free_port()
    server, _thread = metrics.serve(port, collector=slow)
    try:
        scrape: dict = {}
        scraper = threading.Thread(
            target=lambda: scrape.update(result=get(f"http://127.0.0.1:{port}/metrics", 30))
        )
        scraper.start()
        assert slow.started.wait(10), "the scrape never reached the collector"
        status, body, took = get(f"http://127.0.0.1:{port}/healthz", 2)
        assert (status, body) == (200, "ok\n")
        assert took < 1.0, took  # the 5 s scrape is still running beside it
        assert scraper.is_alive()
        scraper.join(30)
        status, body, took = scrape["result"]
        assert status == 200 and took >= 5.0
        assert 'riverlake_test_value{k="a"} 7.0' in body
    finally:
        server.shutdown()
        server.server_close()


def test_unknown_paths_are_404_and_the_root_is_the_metrics():
    port = free_port()
    server, _thread = metrics.serve(port, collector=SlowCollector(0))
    try:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=5)
            raise AssertionError("expected 404")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
        status, body, _ = get(f"http://127.0.0.1:{port}/metrics", 5)
        assert status == 200 and "riverlake_test_value" in body
    finally:
        server.shutdown()
        server.server_close()


def test_the_local_stack_waits_on_the_health_endpoint_not_a_scrape():
    svc = {s.name: s for s in services(get_settings())}["metrics"]
    assert svc.health_url.endswith("/healthz")
    assert svc.url.endswith("/metrics")  # what a person or Prometheus opens
