"""App performance on the 6-million-row benchmark lake.

* first render: Chromium (Playwright) opens the flights dashboard served by
  `riverlake serve` (one process); the time until the KPI cards hold numbers and the
  four plots are drawn. Median of 5 fresh pages after the first (the first session of a
  server process reads the gold tables: reported as ``cold_first_session``). Target:
  2 s or less.
* filter latency: server side, in process: the dashboard's views are rendered to Bokeh
  models once, then 50 filter changes (carriers, origins, day ranges) are applied to
  its parameters; each change re-computes and re-renders every view that depends on
  it. p50 and p95. Target: p95 300 ms or less.
* load: 20 concurrent sessions for 2 minutes against `riverlake serve --num-procs
  BENCH_PROCS` (2): each opens the dashboard page (which makes the server build a
  session: the app runs) again and again. Errors and p95.

Needs the lake benchmarks/transform.py leaves in benchmarks/data/bench-lake (it is
built if missing). Writes benchmarks/results/apps.json; the result goes to stdout, the
measurement being made (a spinner on a terminal, a line per finished one elsewhere) to
stderr.
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import record  # noqa: E402
from benchmarks.etl import DATA  # noqa: E402

LAKE = DATA / "bench-lake"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
        "--disable-component-update", "--disable-sync", "--disable-quic"]  # fmt: skip
LOAD_SESSIONS = int(os.environ.get("BENCH_SESSIONS", "20"))
LOAD_SECONDS = int(os.environ.get("BENCH_LOAD_SECONDS", "120"))
PROCS = int(os.environ.get("BENCH_PROCS", "2"))  # `riverlake serve --num-procs`


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def first_render(url: str, repeats: int = 5) -> list[float]:
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for _ in range(repeats):
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            t0 = time.perf_counter()
            page.goto(url)
            page.locator(".kpi-cards").get_by_text("Flights", exact=True).wait_for(timeout=60000)
            while page.locator("canvas").count() < 4:
                page.wait_for_timeout(20)
            times.append(time.perf_counter() - t0)
            page.close()
        browser.close()
    return times


def filter_latency(changes: int = 50) -> list[float]:
    import panel as pn
    from bokeh.document import Document

    from riverlake.apps.flights_dashboard import FlightsDashboard

    d = FlightsDashboard()
    doc = Document()
    pn.panel(d).get_root(doc)  # render once, like a served session
    carriers = d.param.carriers.objects
    origins = d.param.origins.objects
    lo, hi = d.param.date_range.bounds
    rng = random.Random(13)
    span = (hi - lo).days
    times = []
    for _ in range(changes):
        start = lo + (hi - lo) * rng.random() * 0.8
        end = min(hi, start + (hi - lo) * 0.2 * (1 + rng.random()))
        update = rng.choice([
            {"carriers": rng.sample(carriers, k=rng.randint(0, 3))},
            {"origins": rng.sample(origins, k=rng.randint(0, 2))},
            {"date_range": (start, end)},
        ])  # fmt: skip
        t0 = time.perf_counter()
        d.param.update(**update)
        times.append(time.perf_counter() - t0)
    assert span > 0
    return times


def load(url: str, sessions: int, seconds: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def user() -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(url, timeout=60) as r:
                    body = r.read()
                    ok = r.status == 200 and b"bokeh" in body.lower()
                elapsed = time.perf_counter() - t0
                with lock:
                    (latencies if ok else errors).append(elapsed if ok else f"status {r.status}")
            except OSError as exc:
                with lock:
                    errors.append(str(exc))

    threads = [threading.Thread(target=user) for _ in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"sessions": sessions, "seconds": seconds, "requests": len(latencies),
            "errors": len(errors), "first_errors": errors[:3],
            "p50_s": p(latencies, 0.5) if latencies else None,
            "p95_s": p(latencies, 0.95) if latencies else None}  # fmt: skip


@contextlib.contextmanager
def served(procs: int):
    """`riverlake serve --num-procs procs` on a free port, until the block ends."""
    from riverlake.ops.stack import free_port

    port = free_port()
    log = open(DATA / "apps-bench-serve.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "riverlake.ops.cli", "serve",
                             "--port", str(port), "--num-procs", str(procs)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}/flights_dashboard"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url, timeout=30).read()
                break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def main() -> None:
    if not (LAKE / "tables" / "carrier_origin_daily").exists():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "transform.py")], check=True)
    os.environ["RIVERLAKE_LAKE_URL"] = str(LAKE)
    from riverlake import lake
    from riverlake.ops.progress import Screen

    screen = Screen()
    rows = next(t["rows"] for t in lake.list_tables() if t["name"] == "flights")
    # First render on the default server (one process), load on PROCS processes.
    with served(1) as url:
        with screen.step("first render: the first session (cold)"):
            cold = first_render(url, repeats=1)[0]  # the first session reads the lake
        with screen.step("first render: 5 fresh pages"):
            render = first_render(url)
    with screen.step("filter latency: 50 filter changes"):
        latency = filter_latency()
    what = f"load: {LOAD_SESSIONS} sessions for {LOAD_SECONDS}s on {PROCS} processes"
    with screen.step(what), served(PROCS) as url:
        loaded = load(url, LOAD_SESSIONS, LOAD_SECONDS)
    result = {
        "curated_rows": rows,
        "load_server_processes": PROCS,
        "first_render_s": {
            "median": statistics.median(render),
            "all": render,
            "target": 2.0,
            "cold_first_session": cold,
        },
        "filter_change_s": {
            "p50": p(latency, 0.5),
            "p95": p(latency, 0.95),
            "changes": len(latency),
            "target_p95": 0.3,
        },
        "load": loaded,
        "meets_first_render": statistics.median(render) <= 2.0,
        "meets_filter_p95": p(latency, 0.95) <= 0.3,
        "meets_load_no_errors": loaded["errors"] == 0,
    }
    record.write("apps", result)


if __name__ == "__main__":
    main()
