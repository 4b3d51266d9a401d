"""Extraction benchmark: stream latency at a sustained rate, and each connector's rows/s.

Starts its own NATS JetStream (the stack's nats-server binary) and writes to a local
lake folder, so it needs no running stack:

    python -m benchmarks.extract [--rate 5000] [--seconds 120]

Latency is measured per event: from its publication (a timestamp the publisher puts in
the event) to the end of the lake commit that made its row visible. The publisher is
another process (``python -m riverlake.demo replay``), the consumer is Riverlake's
(micro-batches of at most 5,000 events or 0.5 s). Target: p95 <= 2 s at 5,000 events/s
for 2 minutes; then the table is read back: every event exactly once (no duplicate
event id) and the stream's sequence numbers without a gap. Baseline for the connectors:
the same rows read by the plainest client of each source in the same run (pyarrow.csv
for files, one httpx GET per page for the API, one SELECT for SQL), reported as a ratio.

The results go to stdout; the measurement being made (a spinner on a terminal, a line
per finished one elsewhere) to stderr.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import record
from riverlake.demo import api as demo_api
from riverlake.demo import dimensions as demo_dimensions
from riverlake.demo import drops as demo_drops
from riverlake.demo import replayer as demo_replayer
from riverlake.ops.stack import _bin, free_port
from riverlake.settings import get_settings
from riverlake.sources import ingest
from riverlake.sources.spec import parse_source

TARGET_P95_S = 2.0


def stream_latency(tmp: Path, rate: float, seconds: float) -> dict:
    from riverlake.sources.stream import Consumer

    port = free_port()
    nats = subprocess.Popen(
        [_bin("nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp / "js")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)
    url = f"nats://127.0.0.1:{port}"
    settings = get_settings(lake_url=str(tmp / "lake"), home=tmp, nats_url=url)
    spec = parse_source(
        {"name": "flight_events", "kind": "stream", "url": url, "stream": "FLIGHT_EVENTS",
         "subjects": [demo_replayer.EVENTS_SUBJECT], "durable": "bench", "table": "flight_events",
         "batch_size": 5000, "batch_wait_s": 0.5,
         "schema": {"event_id": "string", "event": "string", "carrier": "string",
                    "flight": "int64", "published_at": "float64", "stream_seq": "int64"}},
        settings,
    )  # fmt: skip
    import asyncio
    import os

    async def consume(stop: threading.Event, out: dict) -> None:
        async with Consumer(spec, settings) as c:
            out["consumer"] = c
            while not stop.is_set():
                await c.batch()

    stop, out = threading.Event(), {}
    # Create the stream and consumer first, so the publisher's events are all captured.
    asyncio.run(_warm(spec, settings))
    t = threading.Thread(target=lambda: asyncio.run(consume(stop, out)), daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while "consumer" not in out and time.monotonic() < deadline:
        time.sleep(0.05)  # consuming (its lease held, its table open) before the first event
    # The publisher is another process, as the systems that publish flight events are:
    # it does not share this process's interpreter with the consumer.
    env = {**os.environ, "RIVERLAKE_NATS_URL": url}
    pub = subprocess.run(
        [sys.executable, "-m", "riverlake.demo", "replay", "--rate", str(rate),
         "--seconds", str(seconds)],
        capture_output=True, text=True, env=env, timeout=seconds + 300, check=True,
    )  # fmt: skip
    sent = int(pub.stdout.split()[-1])  # "published N"
    deadline = time.monotonic() + 60
    while out["consumer"].stats.rows_in < sent and time.monotonic() < deadline:
        time.sleep(0.2)  # the last batches commit
    stop.set()
    t.join(30)
    nats.terminate()
    nats.wait()
    c = out["consumer"]
    lat = np.array(c.stats.latencies_s)
    # Read the table back: every event once, and the stream's sequence without a gap.
    from riverlake import lake

    rows = lake.table(spec.table, settings).to_arrow(
        columns=["event_id", "stream_seq", "published_at"]
    )
    seqs = np.sort(rows["stream_seq"].to_numpy())
    stamps = rows["published_at"].to_numpy()  # the publisher's rate, first event to last
    elapsed = float(stamps.max() - stamps.min()) if len(stamps) > 1 else float("nan")
    return {
        "events_published": sent,
        "publish_rate_per_s": round((sent - 1) / elapsed, 1),
        "events_committed": c.stats.rows_loaded,
        "batches": c.stats.batches,
        "latency_p50_s": round(float(np.percentile(lat, 50)), 3),
        "latency_p95_s": round(float(np.percentile(lat, 95)), 3),
        "latency_max_s": round(float(lat.max()), 3),
        "target_p95_s": TARGET_P95_S,
        "read_back": {
            "rows": rows.num_rows,
            "duplicate_event_ids": rows.num_rows - len(set(rows["event_id"].to_pylist())),
            "sequence_gaps": int((np.diff(seqs) != 1).sum()) if len(seqs) else 0,
            "first_seq": int(seqs[0]) if len(seqs) else None,
            "last_seq": int(seqs[-1]) if len(seqs) else None,
        },
    }


async def _warm(spec, settings) -> None:
    from riverlake.sources.stream import Consumer

    async with Consumer(spec, settings):
        pass


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    res = fn()
    return time.perf_counter() - t0, res


def connectors(tmp: Path) -> dict:
    import httpx
    import pyarrow.csv as pacsv
    import sqlalchemy as sa
    import uvicorn

    settings = get_settings(lake_url=str(tmp / "lake2"), home=tmp)
    out = {}
    # files: 365 daily gzip CSV drops (336,776 rows)
    drops = tmp / "drops"
    s = settings.model_copy(update={"drops_url": str(drops)})
    demo_drops.deliver_drops(s, *_year())
    spec = parse_source({"name": "drops", "kind": "files", "url": f"{drops}/*.csv.gz",
                         "format": "csv", "table": "flights", "schema": None,
                         "sink": "landing"}, s)  # fmt: skip
    secs, res = _timed(lambda: ingest.ingest(spec, s, commit_state=False))
    base, n = _timed(lambda: sum(pacsv.read_csv(p).num_rows for p in sorted(drops.glob("*.gz"))))
    out["files"] = _rate(res.rows_loaded, secs, n, base)
    # http: the demo weather API (26,115 records), cursor pages of 2,000
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(demo_api.create_api(), port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    time.sleep(2.0)
    url = f"http://127.0.0.1:{port}/weather"
    wspec = parse_source({"name": "weather", "kind": "http", "url": url, "table": "weather",
                          "page_size": 2000, "cursor_field": "updated_at", "key": ["id"],
                          "schema": {"id": "int64", "origin": "string", "temp": "float64",
                                     "updated_at": "string"}}, settings)  # fmt: skip
    secs, res = _timed(lambda: ingest.ingest(wspec, settings))

    def plain_http() -> int:
        n, cursor = 0, None
        with httpx.Client() as c:
            while True:
                doc = c.get(url, params={"limit": 2000, **({"cursor": cursor} if cursor else {})}
                            ).json()  # fmt: skip
                n += len(doc["data"])
                cursor = doc["next_cursor"]
                if not cursor:
                    return n

    base, n = _timed(plain_http)
    out["http"] = _rate(res.rows_loaded, secs, n, base)
    server.should_exit = True
    # sql: SQLite planes x 100 (332,200 rows), 4 key ranges
    db = f"sqlite:///{tmp / 'big.sqlite'}"
    demo_dimensions.seed_dimensions(db)
    eng = sa.create_engine(db)
    with eng.begin() as c:
        for _ in range(99):
            c.execute(sa.text("INSERT INTO planes (tailnum, year, seats, updated_at) "
                              "SELECT tailnum, year, seats, updated_at FROM planes "
                              "WHERE id <= 3322"))  # fmt: skip
    sspec = parse_source({"name": "planes", "kind": "sql", "url": db, "source_table": "planes",
                          "columns": ["id", "tailnum", "seats", "updated_at"],
                          "cursor_column": "updated_at", "split_column": "id", "partitions": 4,
                          "table": "planes_big",
                          "schema": {"id": "int64", "tailnum": "string", "seats": "int64",
                                     "updated_at": "string"}}, settings)  # fmt: skip
    secs, res = _timed(lambda: ingest.ingest(sspec, settings))
    with eng.connect() as c:
        base, n = _timed(lambda: len(c.execute(sa.text(
            "SELECT id, tailnum, seats, updated_at FROM planes")).fetchall()))  # fmt: skip
    out["sql"] = _rate(res.rows_loaded, secs, n, base)
    return out


def _year():
    from datetime import date

    return date(2013, 1, 1), date(2013, 12, 31)


def _rate(rows: int, secs: float, base_rows: int, base_secs: float) -> dict:
    return {
        "rows": rows,
        "seconds": round(secs, 2),
        "rows_per_s": round(rows / secs),
        "baseline_rows_per_s": round(base_rows / base_secs),
        "ratio_to_baseline": round((rows / secs) / (base_rows / base_secs), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=float, default=5000.0)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--skip-connectors", action="store_true")
    args = p.parse_args()
    from riverlake.ops.progress import Screen

    screen = Screen()
    tmp = Path(tempfile.mkdtemp(prefix="riverlake-extract-"))
    try:
        with screen.step(f"stream latency: {args.rate:g} events/s for {args.seconds:g}s"):
            result = {"stream": stream_latency(tmp, args.rate, args.seconds)}
        print(json.dumps(result, indent=2), flush=True)
        if not args.skip_connectors:
            with screen.step("connectors: files, HTTP and SQL against their baselines"):
                result["connectors"] = connectors(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record.write("extract", result)


if __name__ == "__main__":
    main()
