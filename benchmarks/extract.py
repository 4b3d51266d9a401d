"""Extraction benchmark: stream latency at a sustained rate, and each connector's rows/s.

Starts its own NATS JetStream (the stack's nats-server binary) and writes to a local
lake folder, so it needs no running stack:

    python -m benchmarks.extract [--rate 5000] [--seconds 120] [--rounds 3]

Latency is measured per event: from its publication (a timestamp the publisher puts in
the event) to the end of the lake commit that made its row visible. The publisher is
another process (``python -m riverlake.demo replay``), the consumer is Riverlake's
(micro-batches of at most 5,000 events or 0.5 s). Target: p95 <= 2 s at 5,000 events/s
for 2 minutes; each run's table is then read back: every event exactly once (no
duplicate event id) and the stream's sequence numbers without a gap. ``--rounds`` runs
(3), each with a new NATS server and lake; the median p95 and its range are reported.

The connectors (files landed by month, an HTTP API with cursor pages, SQL in 4 key
ranges) against the plainest code doing the same work in the same run: the same input
read and the same output written on the same threads (pyarrow reading the drops as
text and writing each month's part as CSV, the drops on the connector's thread pool;
httpx GETs, or a SELECT per key range on as many threads as the connector's 4 ranges,
then deltalake writing the table), the
outputs compared every round (the landed files byte for byte, the tables value by
value); the rounds take turns at going first and write to new folders.

The results go to stdout; the measurement being made (a spinner on a terminal, a line
per finished one elsewhere) to stderr.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import shutil
import statistics
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


def connectors(tmp: Path, rounds: int) -> dict:
    """Each connector against the plainest code doing the same work: the same input read,
    the same output written (the landed CSV files; a Delta table of the declared
    columns), checked equal value by value every round; ``rounds`` rounds, taking turns
    at going first, each on new output folders."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import sqlalchemy as sa
    import uvicorn

    # files: 365 daily gzip CSV drops (336,776 rows), landed by month
    drops = tmp / "drops"
    demo_drops.deliver_drops(get_settings(lake_url=str(tmp / "x"), home=tmp,
                                          drops_url=str(drops)), *_year())  # fmt: skip
    files = {"name": "drops", "kind": "files", "url": f"{drops}/*.csv.gz", "format": "csv",
             "table": "flights", "schema": None, "sink": "landing"}  # fmt: skip
    # http: the demo weather API (26,115 records), cursor pages of 2,000
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(demo_api.create_api(), port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    time.sleep(2.0)
    url = f"http://127.0.0.1:{port}/weather"
    http = {"name": "weather", "kind": "http", "url": url, "table": "weather", "page_size": 2000,
            "cursor_field": "updated_at", "key": ["id"],
            "schema": {"id": "int64", "origin": "string", "temp": "float64",
                       "updated_at": "string"}}  # fmt: skip
    # sql: SQLite planes x 100 (332,200 rows), 4 key ranges
    db = f"sqlite:///{tmp / 'big.sqlite'}"
    demo_dimensions.seed_dimensions(db)
    eng = sa.create_engine(db)
    with eng.begin() as c:
        for _ in range(99):
            c.execute(sa.text("INSERT INTO planes (tailnum, year, seats, updated_at) "
                              "SELECT tailnum, year, seats, updated_at FROM planes "
                              "WHERE id <= 3322"))  # fmt: skip
    sql = {"name": "planes", "kind": "sql", "url": db, "source_table": "planes",
           "columns": ["id", "tailnum", "seats", "updated_at"], "cursor_column": "updated_at",
           "split_column": "id", "partitions": 4, "table": "planes_big",
           "schema": {"id": "int64", "tailnum": "string", "seats": "int64",
                      "updated_at": "string"}}  # fmt: skip

    def riverlake(raw: dict, out: Path) -> tuple[int, object]:
        settings = get_settings(lake_url=str(out), home=tmp)
        res = ingest.ingest(parse_source(raw, settings), settings,
                            commit_state=raw.get("sink") != "landing")  # fmt: skip
        return res.rows_loaded, settings

    def plain_files(out: Path) -> int:
        """pyarrow reads each drop as text, splits it by month, writes each part as CSV; the
        drops on as many threads as the connector's units get (``ingest.thread_map``)."""
        import pyarrow.compute as pc

        def one(path: Path) -> int:
            with gzip.open(path, "rt") as f:  # the header only: each drop is read once
                names = next(csv.reader(f))
            opts = pacsv.ConvertOptions(strings_can_be_null=True,
                                        column_types={c: pa.string() for c in names})  # fmt: skip
            t = pacsv.read_csv(path, convert_options=opts)
            y, m = pc.cast(t["year"], pa.int32()), pc.cast(t["month"], pa.int32())
            for year, month in sorted(set(zip(y.to_pylist(), m.to_pylist(), strict=True))):
                part = t.filter(pc.and_(pc.equal(y, year), pc.equal(m, month)))
                folder = out / "landing" / "flights" / f"year={year}" / f"month={month:02d}"
                folder.mkdir(parents=True, exist_ok=True)
                pacsv.write_csv(part, folder / path.name.removesuffix(".gz"))
            return t.num_rows

        return sum(ingest.thread_map(one, sorted(drops.glob("*.csv.gz"))))

    def plain_http(out: Path) -> int:
        """httpx GETs the pages; deltalake writes the records as a table."""
        import httpx
        from deltalake import write_deltalake

        rows, cursor = [], None
        with httpx.Client() as c:
            while True:
                doc = c.get(url, params={"limit": 2000, **({"cursor": cursor} if cursor else {})}
                            ).json()  # fmt: skip
                rows += doc["data"]
                cursor = doc["next_cursor"]
                if not cursor:
                    break
        schema = pa.schema([(k, pa.int64() if t == "int64" else pa.float64() if t == "float64"
                             else pa.string()) for k, t in http["schema"].items()])  # fmt: skip
        write_deltalake(str(out / "weather"), pa.Table.from_pylist(rows, schema=schema))
        return len(rows)

    def plain_sql(out: Path) -> int:
        """A SELECT per key range, as many as the connector's (4), on as many threads;
        deltalake writes the rows as a table."""
        from deltalake import write_deltalake

        cols, k = sql["columns"], sql["partitions"]
        with eng.connect() as c:
            hi = c.execute(sa.text("SELECT max(id) FROM planes")).scalar()

        def part(i: int) -> list:
            lo, top = i * hi // k, (i + 1) * hi // k
            with eng.connect() as c:
                return c.execute(sa.text(f"SELECT {', '.join(cols)} FROM planes WHERE id > {lo} "
                                         f"AND id <= {top}")).fetchall()  # fmt: skip

        rows = [r for chunk in ingest.thread_map(part, list(range(k))) for r in chunk]
        t = pa.table({c: [r[i] for r in rows] for i, c in enumerate(cols)})
        types = [(c, pa.int64() if sql["schema"][c] == "int64" else pa.string()) for c in cols]
        write_deltalake(str(out / "planes_big"), t.cast(pa.schema(types)))
        return len(rows)

    def landed(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.csv"))}

    def table(uri: str, columns: list[str]) -> pa.Table:
        from deltalake import DeltaTable

        t = DeltaTable(uri).to_pyarrow_table(columns=columns)
        return t.sort_by([(columns[0], "ascending")]).combine_chunks()

    def same(name: str, settings, base: Path) -> str:
        from riverlake import lake

        if name == "files":
            a = landed(Path(lake.strip_scheme(lake.landing_uri("flights", settings))))
            b = landed(base / "landing" / "flights")
            if a != b:
                diff = sorted(set(a) ^ set(b)) or [k for k in a if a[k] != b[k]]
                raise SystemExit(f"files: the landed files differ: {diff[:3]}")
            return f"{len(a)} landed files, byte for byte"
        raw = http if name == "http" else sql
        cols = list(raw["schema"])
        a = table(lake.table_uri(raw["table"], settings), cols)
        b = table(str(base / raw["table"]), cols)
        if not a.cast(b.schema).equals(b):
            raise SystemExit(f"{name}: the tables differ ({a.num_rows} rows against "
                             f"{b.num_rows})")  # fmt: skip
        return f"{a.num_rows:,} rows, every value"

    plain = {"files": plain_files, "http": plain_http, "sql": plain_sql}
    raws = {"files": files, "http": http, "sql": sql}
    times = {k: {"riverlake": [], "baseline": []} for k in raws}
    rows, checked = {}, {}
    for i in range(rounds):
        for name, raw in raws.items():
            sides = ["riverlake", "baseline"] if i % 2 == 0 else ["baseline", "riverlake"]
            for side in sides:
                out = tmp / f"{side}-{name}-{i}"
                t0 = time.perf_counter()
                if side == "riverlake":
                    n, settings = riverlake(raw, out)
                else:
                    n = plain[name](out)
                times[name][side].append(time.perf_counter() - t0)
                if rows.setdefault((name, side), n) != n:
                    raise SystemExit(f"{name}: {side} read {n} rows, {rows[(name, side)]} before")
            checked[name] = same(name, settings, tmp / f"baseline-{name}-{i}")
    server.should_exit = True
    out = {}
    for name, t in times.items():
        ours, base = statistics.median(t["riverlake"]), statistics.median(t["baseline"])
        n, bn = rows[(name, "riverlake")], rows[(name, "baseline")]
        out[name] = {
            "rows": n,
            "baseline_rows": bn,
            "riverlake_s": record.spread(t["riverlake"]),
            "baseline_s": record.spread(t["baseline"]),
            "rows_per_s": round(n / ours),
            "baseline_rows_per_s": round(bn / base),
            "ratio_to_baseline": round((n / ours) / (bn / base), 2),
            "checked": f"every round: {checked[name]}",
        }
    return out


def _year():
    from datetime import date

    return date(2013, 1, 1), date(2013, 12, 31)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=float, default=5000.0)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-connectors", action="store_true")
    args = p.parse_args()
    from riverlake.ops.progress import Screen

    screen = Screen()
    tmp = Path(tempfile.mkdtemp(prefix="riverlake-extract-"))
    try:
        runs = []
        for i in range(args.rounds):
            with screen.step(f"stream run {i + 1}/{args.rounds}: {args.rate:g} events/s for "
                             f"{args.seconds:g}s"):  # fmt: skip
                (tmp / f"stream-{i}").mkdir()
                runs.append(stream_latency(tmp / f"stream-{i}", args.rate, args.seconds))
        p95 = [r["latency_p95_s"] for r in runs]
        result = {"stream": {
            "runs": runs,
            "latency_p95_s": record.spread(p95),
            "latency_p50_s": record.spread([r["latency_p50_s"] for r in runs]),
            "latency_max_s": max(r["latency_max_s"] for r in runs),
            "target_p95_s": TARGET_P95_S,
            "every_event_once": all(
                r["events_committed"] == r["events_published"] == r["read_back"]["rows"]
                and r["read_back"]["duplicate_event_ids"] == r["read_back"]["sequence_gaps"] == 0
                for r in runs),
        }}  # fmt: skip
        print(json.dumps(result, indent=2), flush=True)
        if not args.skip_connectors:
            with screen.step(f"connectors: files, HTTP and SQL against the plainest code doing "
                             f"the same work, {args.rounds} rounds"):  # fmt: skip
                (tmp / "connectors").mkdir()
                result["connectors"] = connectors(tmp / "connectors", args.rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record.write("extract", result)


if __name__ == "__main__":
    main()
