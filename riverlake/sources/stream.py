"""Stream connector: NATS JetStream, consumed in micro-batches, exactly-once into the lake.

Why NATS JetStream (over Redis Streams): every message has a stream sequence number
that only grows, so the lake can hold the consumer's high-water mark as an integer in
Delta's own application-transaction action; the server deduplicates republished
messages by their ``Nats-Msg-Id`` within a window; and a durable pull consumer with
ack-all redelivers exactly what was not acknowledged.

One consumer per (stream, table) at a time: a consumer first takes the durable's
*lease*, a key in a JetStream key-value bucket that expires ``LEASE_TTL_S`` after its
holder last renewed it (the holder renews it in the background every
``LEASE_RENEW_S``, commits included). A second consumer (``riverlake run flights
--watch`` beside the scheduled ``flight_events`` deployment) waits for the lease and,
if it does not get it in time, ends having consumed nothing. A holder that loses its
lease stops before committing.

One micro-batch:

1. fetch up to ``batch_size`` messages and at most ``max_batch_bytes`` bytes, waiting
   at most ``batch_wait_s``;
2. drop those at or below the sequence the table already holds, and duplicates of a
   message id within the batch;
3. poison messages (not JSON, nested too deep, a message id that is not a string or an
   integer, missing fields, wrong types, larger than ``max_batch_bytes``) go to the
   quarantine table with their original bytes and the reason;
4. write the rows, then commit them with the last sequence as the transaction version
   and the state ``{"stream_seq": n}``, in one commit that must *follow* the sequence
   the batch started from: if any other commit of this stream landed in between (a
   consumer whose lease expired mid-commit), this one is refused, never rebased;
5. acknowledge (ack-all up to the last message) only after the commit.

The batch must start at the first message after the last committed sequence that the
consumer's subjects match (messages deleted, expired or of other subjects are skipped);
anything else means another consumer holds the earlier messages, and nothing is
committed or acknowledged. The state records which stream was read (its creation
time): a stream deleted and created again starts its sequences over, and is refused
rather than read from the old position. At-least-once
delivery plus these checks make the table exactly-once, whatever point a consumer is
killed at.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from riverlake import lake
from riverlake.settings import Settings
from riverlake.sources.base import (
    ORIGINAL_PREFIX_BYTES,
    Bad,
    SourceError,
    batch_id,
    deeper_than,
    json_too_deep_reason,
    one_line,
    quarantine,
    records_to_table,
)
from riverlake.sources.spec import StreamSource

log = logging.getLogger(__name__)

DUPLICATE_WINDOW_S = 600.0
ACK_WAIT_S = 30.0
#: The key-value bucket of consumer leases, and how long a lease outlives its holder's
#: last renewal (so a killed consumer's successor waits at most this long).
LEASE_BUCKET = "riverlake_leases"
LEASE_TTL_S = 10.0
LEASE_RENEW_S = 2.0


@dataclass
class StreamStats:
    batches: int = 0
    rows_in: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    rows_deduplicated: int = 0
    redelivered_skipped: int = 0
    expired_skipped: int = 0
    last_seq: int | None = None
    lease_holder: str | None = None  # who held the lease when this consumer got none
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
    """Create the stream if it does not exist (idempotent); a broker that refuses (no
    storage left for the stream's max_bytes, a subject owned by another stream) fails
    in one line naming the source."""
    from nats.js.api import StreamConfig
    from nats.js.errors import APIError, NotFoundError

    try:
        await js.stream_info(spec.stream)
    except NotFoundError:
        try:
            await js.add_stream(
                StreamConfig(
                    name=spec.stream,
                    subjects=spec.subjects,
                    max_age=float(spec.max_age_s),
                    max_bytes=spec.max_bytes,
                    duplicate_window=DUPLICATE_WINDOW_S,
                )
            )
        except APIError as e:
            raise SourceError(
                f"source {spec.name!r}: {spec.url} refused to create stream {spec.stream} "
                f"(max_bytes={spec.max_bytes}): {e.description or e}"
            ) from e


def _record(spec: StreamSource, data: bytes, max_bytes: int, max_depth: int) -> dict:
    """One message as a record; ValueError naming what makes it poison."""
    if len(data) > max_bytes:
        raise ValueError(f"message of {len(data)} bytes exceeds max_batch_bytes={max_bytes}")
    if deeper_than(data, max_depth):  # measured on the bytes: json and pyarrow recurse
        raise ValueError(json_too_deep_reason(max_depth))
    rec = json.loads(data)
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    mid = rec.get(spec.id_field)
    if mid is None:
        raise ValueError(f"no {spec.id_field!r}")
    if isinstance(mid, bool) or not isinstance(mid, str | int):
        raise ValueError(f"{spec.id_field!r} is {type(mid).__name__}, not a string or an integer")
    return rec


def _parse(
    spec: StreamSource, msgs: list, max_bytes: int, max_depth: int
) -> tuple[list, list[Bad], int]:
    """The batch's records (with their messages), its poison messages, and the number of
    in-batch duplicates. Whatever a message holds, it ends in one of the three."""
    records, bad, dupes, seen = [], [], 0, set()
    for m in msgs:
        seq = m.metadata.sequence.stream
        try:
            rec = _record(spec, m.data, max_bytes, max_depth)
        except Exception as e:  # any message, however hostile, is quarantined
            bad.append(Bad(f"{spec.stream}#{seq}", f"poison message: {one_line(e)}",
                           bytes(m.data[:ORIGINAL_PREFIX_BYTES])))  # fmt: skip
            continue
        mid = rec[spec.id_field]
        if mid in seen:
            dupes += 1
            continue
        seen.add(mid)
        rec["stream_seq"] = seq
        records.append((rec, m))
    return records, bad, dupes


def _typed(spec: StreamSource, schema, records: list, unit: str):
    """Type the records against ``schema``; one that does not fit is quarantined with the
    message's original bytes. Only the declared fields are kept."""
    if schema is not None:
        records = [({n: r[n] for n in schema.names if n in r}, m) for r, m in records]
    try:
        table, rejects = records_to_table([r for r, _ in records], schema, unit)
        if not rejects:
            return table, []
    except Exception:  # type them one by one below
        pass
    good, bad = [], []
    for rec, m in records:
        one = f"{spec.stream}#{m.metadata.sequence.stream}"
        try:
            t, rejects = records_to_table([rec], schema, one)
            reason = rejects[0].reason if rejects else None
        except Exception as e:  # whatever pyarrow makes of it
            t, reason = None, one_line(e)
        if reason is None:
            good.append(t)
        else:
            bad.append(Bad(one, reason, bytes(m.data[:ORIGINAL_PREFIX_BYTES])))
    table = pa.concat_tables(good) if good else schema.empty_table()
    return table, bad


class Lease:
    """The right to consume one durable, held in a JetStream key-value bucket.

    The key expires ``LEASE_TTL_S`` after its last write (the bucket's TTL). Creating it
    succeeds only when nobody holds it; the holder renews it every ``LEASE_RENEW_S`` in
    the background, by compare-and-set on the revision it last wrote, and takes it again
    when it expired with nobody else taking it. A holder whose lease was taken learns it
    at once (``lost``) and commits nothing more.
    """

    def __init__(self, js, key: str):
        self.js, self.key = js, key
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.kv = None
        self.rev: int | None = None
        self.lost: str | None = None
        self._keeper: asyncio.Task | None = None

    async def _bucket(self):
        from nats.js.errors import BucketNotFoundError

        try:
            kv = await self.js.key_value(LEASE_BUCKET)
        except BucketNotFoundError:
            return await self.js.create_key_value(bucket=LEASE_BUCKET, ttl=LEASE_TTL_S, history=1)
        ttl = (await kv.status()).ttl
        if ttl is None or abs(ttl - LEASE_TTL_S) > 0.01:  # leases that never expire, or soon
            raise SourceError(
                f"key-value bucket {LEASE_BUCKET} has a TTL of {ttl} s, not the "
                f"{LEASE_TTL_S} s consumer leases need; delete it (nats kv del "
                f"{LEASE_BUCKET}) and it is made again"
            )
        return kv

    async def acquire(self, wait_s: float) -> str | None:
        """Take the lease, waiting up to ``wait_s``; None when taken, else who holds it."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        self.kv = await self._bucket()
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.rev = await self.kv.create(self.key, self.holder.encode())
                self._keeper = asyncio.create_task(self._keep())
                return None
            except KeyNotFoundError:  # nats-py's create found the key taken, then gone:
                continue  # it expired between its two requests; take it now
            except KeyWrongLastSequenceError:
                try:
                    holder = (await self.kv.get(self.key)).value.decode()
                except KeyNotFoundError:
                    continue  # it expired just now
            if time.monotonic() >= deadline:
                return holder
            await asyncio.sleep(0.25)

    async def _renew(self) -> None:
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        try:
            self.rev = await self.kv.update(self.key, self.holder.encode(), last=self.rev)
            return
        except KeyWrongLastSequenceError:
            pass
        try:  # expired: ours again if nobody took it meanwhile
            holder = (await self.kv.get(self.key)).value.decode()
        except KeyNotFoundError:
            holder = None
        if holder is None:
            try:
                self.rev = await self.kv.create(self.key, self.holder.encode())
                return
            except (KeyWrongLastSequenceError, KeyNotFoundError):  # (the second: taken by
                holder = "another consumer"  # another, and expired again, meanwhile)
        self.lost = holder

    async def _keep(self) -> None:
        while self.lost is None:
            await asyncio.sleep(LEASE_RENEW_S)
            try:
                await self._renew()
            except Exception as e:  # the broker away: the lease lapses unless it returns
                log.warning("stream consumer %s: lease not renewed: %s", self.key, one_line(e))

    def check(self, what: str) -> None:
        """Raise SourceError when the lease was taken by another consumer."""
        if self.lost is not None:
            raise SourceError(
                f"stream consumer {self.key}: lease lost before {what} (taken by "
                f"{self.lost}); nothing committed or acknowledged"
            )

    async def release(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._keeper
        if self.rev is not None and self.lost is None:
            with contextlib.suppress(Exception):
                await self.kv.delete(self.key, last=self.rev)


class Consumer:
    """A durable pull consumer that commits each micro-batch before acknowledging it.

    ``lease_wait_s``: how long to wait for another consumer's lease (by default long
    enough for a killed holder's lease to expire); ``leased`` tells whether it was taken.
    Broker errors (the connection lost, a request refused) are raised as SourceError.
    """

    def __init__(self, spec: StreamSource, settings: Settings, lease_wait_s: float | None = None):
        self.spec, self.settings = spec, settings
        self.uri = lake.table_uri(spec.table, settings)
        # One durable consumer per (stream, table): two lakes reading one stream never
        # move each other's position.
        self.durable = f"{spec.durable}-{hashlib.sha256(self.uri.encode()).hexdigest()[:8]}"
        self.schema = spec.arrow_schema()
        self.stats = StreamStats()
        self.dt = None
        self.leased = False
        self.lease: Lease | None = None
        self.lease_wait_s = 2 * LEASE_TTL_S if lease_wait_s is None else lease_wait_s
        self.max_bytes = settings.max_batch_bytes
        self.created: str | None = None  # the stream's creation time: which stream this is

    def _broker_error(self, e: Exception, what: str) -> SourceError:
        reason = one_line(e) if str(e) else type(e).__name__
        return SourceError(f"source {self.spec.name!r}: {what} on {self.spec.url} failed: {reason}")

    async def __aenter__(self) -> Consumer:
        import nats.errors

        self.nc = await connect(self.spec)
        try:
            await self._open()
        except nats.errors.Error as e:
            await self.__aexit__()
            raise self._broker_error(e, "opening the consumer") from e
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _open(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        self.js = self.nc.jetstream()
        await ensure_stream(self.js, self.spec)
        self.lease = Lease(self.js, self.durable)
        holder = await self.lease.acquire(self.lease_wait_s)
        if holder is not None:  # another consumer is running: touch nothing
            self.stats.lease_holder = holder
            log.warning("stream %s: another consumer (%s) holds the lease of %s; nothing "
                        "consumed", self.spec.name, holder, self.durable)  # fmt: skip
            return
        self.leased = True
        self.dt = lake.table(self.spec.table, self.settings)
        info = await self.js.stream_info(self.spec.stream)
        self.created = str(info.created)
        self._check_same_stream(info)
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

    def _check_same_stream(self, info) -> None:
        """Refuse a stream that is not the one the lake read (deleted and created again,
        e.g. a broker restarted without its storage): its sequence numbers start over,
        and the lake's position would skip its first messages."""
        done = self.committed_seq()
        state = (self.dt.state(self.spec.name) if self.dt is not None else None) or {}
        read = state.get("stream_created")
        if done and ((read and read != self.created) or info.state.last_seq < done):
            raise SourceError(
                f"source {self.spec.name!r}: stream {self.spec.stream} is not the one the "
                f"lake read up to sequence {done} (created {self.created}, the lake's was "
                f"{read or 'unknown'}; it holds up to {info.state.last_seq}): it was "
                "deleted and created again; nothing consumed"
            )

    async def __aexit__(self, *exc) -> None:
        if self.lease is not None and self.leased:
            await self.lease.release()
        with contextlib.suppress(Exception):
            await self.nc.close()

    def committed_seq(self) -> int:
        if self.dt is None:
            return 0
        return self.dt.batch_version(app_id(self.spec)) or 0

    async def _fetch(self) -> list:
        """Up to ``batch_size`` messages and at most about ``max_batch_bytes`` bytes,
        waiting at most ``batch_wait_s``. A pull request cannot be bounded in bytes, so
        each asks for no more messages than fit at the broker's largest message size:
        the batch ends within one message of the bound."""
        msgs: list = []
        size = 0
        largest = max(1, self.nc.max_payload or 1 << 20)
        deadline = time.monotonic() + self.spec.batch_wait_s
        while len(msgs) < self.spec.batch_size and size < self.max_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0.01:
                break
            want = min(self.spec.batch_size - len(msgs),
                       max(1, (self.max_bytes - size) // largest))  # fmt: skip
            try:
                got = await self.sub.fetch(want, timeout=remaining)
            except TimeoutError:  # nats raises both its own and asyncio's
                break
            msgs += got
            size += sum(len(m.data) for m in got)
        return msgs

    async def _next_seq(self, after: int) -> int | None:
        """The sequence of the first message after ``after`` that this consumer's
        subjects match (deleted, expired and other subjects' messages are skipped);
        None when the broker cannot say."""
        from nats.js.errors import NotFoundError

        found = []
        for subject in self.spec.subjects:
            try:
                m = await self.js.get_msg(self.spec.stream, seq=after + 1, subject=subject,
                                          next=True)  # fmt: skip
            except NotFoundError:
                continue
            except Exception:  # an older broker without next-by-subject
                return None
            found.append(m.seq)
        return min(found) if found else None

    async def batch(self) -> int:
        """Fetch, commit and acknowledge one micro-batch; the number of messages fetched."""
        import nats.errors

        try:
            return await self._batch()
        except nats.errors.Error as e:
            raise self._broker_error(e, "consuming") from e

    async def _batch(self) -> int:
        self.lease.check("fetching")
        msgs = await self._fetch()
        if not msgs:
            return 0
        first, last = msgs[0].metadata.sequence.stream, msgs[-1].metadata.sequence.stream
        log.debug("stream %s: fetched %d messages, seq %d-%d", self.spec.name, len(msgs),
                  first, last)  # fmt: skip
        if self.dt is not None:
            self.dt.refresh()  # another consumer may have committed meanwhile
        done = self.committed_seq()
        fresh = [m for m in msgs if m.metadata.sequence.stream > done]
        self.stats.redelivered_skipped += len(msgs) - len(fresh)
        if fresh and fresh[0].metadata.sequence.stream != done + 1:
            start = fresh[0].metadata.sequence.stream
            expected = await self._next_seq(done)
            if expected is None:  # no next-by-subject: only expiry explains a gap
                info = await self.js.stream_info(self.spec.stream)
                expected = max(done + 1, info.state.first_seq)
            if start != expected:
                raise SourceError(
                    f"source {self.spec.name!r}: batch starts at {start}, not at {expected}, "
                    f"the next message after the last committed {done} (another consumer of "
                    f"{self.durable}?); nothing committed or acknowledged"
                )
            log.info("stream %s: sequences %d-%d are gone or not this consumer's subjects",
                     self.spec.name, done + 1, start - 1)  # fmt: skip
            self.stats.expired_skipped += start - done - 1
        if fresh:
            self.lease.check("committing")
            # in a thread: the lease keeps being renewed while the commit runs
            await asyncio.to_thread(self._commit, fresh, done)
        await msgs[-1].ack()  # ack-all: everything up to here is in the lake
        return len(msgs)

    def _commit(self, msgs: list, follows: int) -> None:
        spec, st = self.spec, self.stats
        first, last = msgs[0].metadata.sequence.stream, msgs[-1].metadata.sequence.stream
        unit = f"{spec.stream}#{first}-{last}"
        records, bad, dupes = _parse(spec, msgs, self.max_bytes, self.settings.max_json_depth)
        table, rejects = _typed(spec, self.schema, records, unit)
        bad += rejects
        batch = batch_id(spec.name, first, [last])
        quarantine(spec.name, bad, batch, self.settings)
        adds = lake.write_fragments(table, self.uri, spec.partition_by, self.settings)
        state = {spec.name: {"stream_seq": last, "stream_created": self.created}}
        try:
            res = lake.commit(
                self.uri, adds, self.schema, partition_by=spec.partition_by,
                batch=lake.Batch(app_id(spec), version=last, state=state, follows=follows),
                table=self.dt, settings=self.settings,
            )  # fmt: skip
        except lake.CommitConflict as e:
            raise SourceError(f"source {spec.name!r}: batch {first}-{last} raced another "
                              f"consumer of {self.durable}: {e}") from e  # fmt: skip
        if res.skipped:  # a concurrent consumer committed past us: acknowledging would lose
            raise SourceError(f"source {spec.name!r}: batch {first}-{last} raced another "
                              f"consumer of {self.durable}; nothing acknowledged")  # fmt: skip
        if self.dt is None:  # the first commit created the table
            self.dt = lake.table(spec.table, self.settings)
        # (an open table is brought up to date at the start of the next batch)
        log.debug("stream %s: committed seq %d-%d", spec.name, first, last)
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
    # wait for the lease at most half the run (a killed holder's lease expires first)
    wait = None if max_seconds is None else min(max_seconds / 2, 2 * LEASE_TTL_S)
    async with Consumer(spec, settings, lease_wait_s=wait) as c:
        if not c.leased:
            return c.stats
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
