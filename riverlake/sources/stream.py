"""Stream connector: NATS JetStream, consumed in micro-batches, exactly-once into the lake.

Why NATS JetStream (over Redis Streams): every message has a stream sequence number
that only grows, so the lake can hold the consumer's high-water mark as an integer in
Delta's own application-transaction action; the server deduplicates republished
messages by their ``Nats-Msg-Id`` within a window; and a durable pull consumer with
ack-all redelivers exactly what was not acknowledged.

One micro-batch:

1. fetch up to ``batch_size`` messages, waiting at most ``batch_wait_s``;
2. drop those at or below the sequence the table already holds (a redelivery after a
   crash between commit and ack), and duplicates of a message id within the batch;
3. poison messages (not JSON, missing fields, wrong types) go to the quarantine table
   with their original bytes;
4. write the rows, then commit them with the last sequence as the transaction version
   and the state ``{"stream_seq": n}``, in one commit;
5. acknowledge (ack-all up to the last message) only after the commit.

At-least-once delivery plus the sequence check in the commit make the table
exactly-once, whatever point a consumer is killed at.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from riverlake import lake
from riverlake.settings import Settings
from riverlake.sources.base import (
    Bad,
    SourceError,
    batch_id,
    one_line,
    quarantine,
    records_to_table,
)
from riverlake.sources.spec import StreamSource

DUPLICATE_WINDOW_S = 600.0
ACK_WAIT_S = 30.0


@dataclass
class StreamStats:
    batches: int = 0
    rows_in: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    rows_deduplicated: int = 0
    redelivered_skipped: int = 0
    last_seq: int | None = None
    latencies_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "latencies_s"}
        return d


def app_id(spec: StreamSource) -> str:
    return f"stream:{spec.stream}:{spec.durable}"


async def connect(spec: StreamSource):
    import nats

    async def quiet(_e: Exception) -> None:  # errors surface below, as one line
        return None

    try:
        return await asyncio.wait_for(
            nats.connect(spec.url, connect_timeout=3, allow_reconnect=False,
                         max_reconnect_attempts=0, error_cb=quiet),
            timeout=10,
        )  # fmt: skip
    except Exception as e:  # whatever nats raises, the broker is unreachable
        reason = one_line(e) if str(e) else type(e).__name__
        msg = f"source {spec.name!r}: cannot connect to {spec.url}: {reason}"
        raise SourceError(msg) from e


async def ensure_stream(js, spec: StreamSource) -> None:
    """Create the stream if it does not exist (idempotent)."""
    from nats.js.api import StreamConfig
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(spec.stream)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=spec.stream,
                subjects=spec.subjects,
                max_age=float(spec.max_age_s),
                max_bytes=spec.max_bytes,
                duplicate_window=DUPLICATE_WINDOW_S,
            )
        )


def _parse(spec: StreamSource, msgs: list) -> tuple[list[dict], list[Bad], int]:
    records, bad, dupes, seen = [], [], 0, set()
    for m in msgs:
        seq = m.metadata.sequence.stream
        try:
            rec = json.loads(m.data)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
            mid = rec.get(spec.id_field)
            if mid is None:
                raise ValueError(f"no {spec.id_field!r}")
        except (ValueError, UnicodeDecodeError) as e:
            bad.append(Bad(f"{spec.stream}#{seq}", f"poison message: {one_line(e)}", m.data))
            continue
        if mid in seen:
            dupes += 1
            continue
        seen.add(mid)
        rec["stream_seq"] = seq
        records.append(rec)
    return records, bad, dupes


class Consumer:
    """A durable pull consumer that commits each micro-batch before acknowledging it."""

    def __init__(self, spec: StreamSource, settings: Settings):
        self.spec, self.settings = spec, settings
        self.uri = lake.table_uri(spec.table, settings)
        # One durable consumer per (stream, table): two lakes reading one stream never
        # move each other's position.
        self.durable = f"{spec.durable}-{hashlib.sha256(self.uri.encode()).hexdigest()[:8]}"
        self.schema = spec.arrow_schema()
        self.stats = StreamStats()
        self.dt = None

    async def __aenter__(self) -> Consumer:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        self.nc = await connect(self.spec)
        self.js = self.nc.jetstream()
        await ensure_stream(self.js, self.spec)
        self.dt = lake.table(self.spec.table, self.settings)
        # The lake, not the broker, holds the position: the durable consumer is re-created
        # to start right after the last committed sequence, so messages a killed consumer
        # had fetched but not committed come again at once, in order.
        start = self.committed_seq() + 1
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(self.spec.stream, self.durable)
        self.sub = await self.js.pull_subscribe(
            "",
            durable=self.durable,
            stream=self.spec.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.ALL, ack_wait=ACK_WAIT_S, max_ack_pending=-1,
                filter_subjects=self.spec.subjects,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start,
            ),
        )  # fmt: skip
        return self

    async def __aexit__(self, *exc) -> None:
        await self.nc.close()

    def committed_seq(self) -> int:
        if self.dt is None:
            return 0
        return self.dt.batch_version(app_id(self.spec)) or 0

    async def batch(self) -> int:
        """Fetch, commit and acknowledge one micro-batch; the number of messages fetched."""

        msgs: list = []
        deadline = time.monotonic() + self.spec.batch_wait_s
        while len(msgs) < self.spec.batch_size:  # fill the batch until its wait is over
            remaining = deadline - time.monotonic()
            if remaining <= 0.01:
                break
            try:
                msgs += await self.sub.fetch(self.spec.batch_size - len(msgs), timeout=remaining)
            except TimeoutError:  # nats raises both its own and asyncio's
                break
        if not msgs:
            return 0
        if self.dt is not None:
            self.dt.refresh()  # another consumer may have committed meanwhile
        done = self.committed_seq()
        fresh = [m for m in msgs if m.metadata.sequence.stream > done]
        self.stats.redelivered_skipped += len(msgs) - len(fresh)
        if fresh and done and fresh[0].metadata.sequence.stream != done + 1:
            info = await self.js.stream_info(self.spec.stream)
            if info.state.first_seq <= done + 1:  # not expired: someone else has them
                raise SourceError(
                    f"source {self.spec.name!r}: sequence gap after {done} (another consumer "
                    f"of {self.durable} is running?); nothing acknowledged"
                )
        if fresh:
            self._commit(fresh)
        await msgs[-1].ack()  # ack-all: everything up to here is in the lake
        return len(msgs)

    def _commit(self, msgs: list) -> None:
        spec, st = self.spec, self.stats
        first, last = msgs[0].metadata.sequence.stream, msgs[-1].metadata.sequence.stream
        records, bad, dupes = _parse(spec, msgs)
        table, rejects = records_to_table(records, self.schema, f"{spec.stream}#{first}-{last}")
        bad += rejects
        batch = batch_id(spec.name, first, [last])
        quarantine(spec.name, bad, batch, self.settings)
        adds = lake.write_fragments(table, self.uri, spec.partition_by, self.settings)
        res = lake.commit(
            self.uri, adds, self.schema, partition_by=spec.partition_by,
            batch=lake.Batch(app_id(spec), version=last, state={spec.name: {"stream_seq": last}}),
            table=self.dt, settings=self.settings,
        )  # fmt: skip
        if res.skipped:  # a concurrent consumer committed past us: acknowledging would lose
            raise SourceError(f"source {spec.name!r}: batch {first}-{last} raced another "
                              f"consumer of {self.durable}; nothing acknowledged")  # fmt: skip
        if self.dt is None:  # the first commit created the table
            self.dt = lake.table(spec.table, self.settings)
        # (an open table is brought up to date at the start of the next batch)
        now = time.time()
        st.batches += 1
        st.rows_in += len(msgs)
        st.rows_quarantined += len(bad)
        st.rows_deduplicated += dupes
        st.rows_loaded += table.num_rows
        st.last_seq = last
        if spec.time_field is None and "published_at" in table.column_names:
            st.latencies_s.extend(now - t for t in table["published_at"].to_pylist() if t)


async def _consume(
    spec: StreamSource,
    settings: Settings,
    max_seconds: float | None,
    idle_s: float | None,
    stop: Any = None,
) -> StreamStats:
    async with Consumer(spec, settings) as c:
        start = last_msg = time.monotonic()
        while True:
            n = await c.batch()
            now = time.monotonic()
            if n:
                last_msg = now
            if max_seconds is not None and now - start >= max_seconds:
                break
            if idle_s is not None and now - last_msg >= idle_s:
                break
            if stop is not None and stop.is_set():
                break
        return c.stats


def consume(
    spec: StreamSource,
    settings: Settings,
    max_seconds: float | None = None,
    idle_s: float | None = 2.0,
    stop: Any = None,
) -> StreamStats:
    """Consume micro-batches until ``idle_s`` without messages, ``max_seconds``, or ``stop``."""
    return asyncio.run(_consume(spec, settings, max_seconds, idle_s, stop))
