"""The stream connector under concurrency and hostile messages, on the machine's NATS.

Two consumers of one stream do happen (`riverlake run flights --watch` beside the
scheduled `flight_events` deployment): one holds the stream's lease and the other
consumes nothing; a consumer whose lease was taken over stops before it commits; and
a commit that does not follow the last committed sequence is refused, never rebased.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from riverlake import lake
from riverlake.sources import stream
from riverlake.sources.base import ORIGINAL_PREFIX_BYTES, SourceError
from tests.conftest import ROOT, need
from tests.integration.test_sources import (
    _event,
    delete_streams,
    local,
    publish,
    quarantined,
    rows,
)
from tests.integration.test_sources import stream_spec as _stream_spec

pytestmark = pytest.mark.integration

NATS = "nats://127.0.0.1:4222"


@pytest.fixture(scope="module", autouse=True)
def machine_nats():
    with socket.socket() as sock:
        up = sock.connect_ex(("127.0.0.1", 4222)) == 0
    need(up, "no NATS server on 127.0.0.1:4222")


_CREATED: list[str] = []


@pytest.fixture(autouse=True)
def _delete_streams():
    """The machine's NATS reserves each stream's max_bytes: leave none behind."""
    yield
    delete_streams(NATS, [n.upper() for n in _CREATED])
    _CREATED.clear()


def _name() -> str:
    name = f"ev{uuid.uuid4().hex[:6]}"
    _CREATED.append(name)
    return name


def stream_spec(settings, url: str, name: str, **kw):
    return _stream_spec(settings, url, name, **{"max_bytes": 64 << 20, **kw})


# ------------------------------------------------------------ the commit must follow


def _events(lo: int, hi: int) -> pa.Table:
    return pa.table({"event_id": [f"e{i}" for i in range(lo, hi + 1)],
                     "stream_seq": pa.array(range(lo, hi + 1), pa.int64())})  # fmt: skip


def _commit(s, name: str, lo: int, hi: int, follows: int, table=None):
    uri = lake.table_uri(name, s)
    data = _events(lo, hi)
    return lake.commit(
        uri, lake.write_fragments(data, uri, [], s), data.schema,
        batch=lake.Batch(f"stream:{name}", version=hi, follows=follows), table=table, settings=s,
    )  # fmt: skip


def test_a_stale_handle_cannot_recommit_a_range_another_consumer_committed(tmp_path):
    """The review's case: 1-100 committed; another handle commits 101-200; a handle
    opened before that retries 101-250. Without the check: 350 rows, 250 distinct."""
    s = local(tmp_path)
    name = _name()
    _commit(s, name, 1, 100, follows=0)
    stale = lake.table(name, s)  # opened at 1-100
    _commit(s, name, 101, 200, follows=100, table=lake.table(name, s))
    with pytest.raises(lake.CommitConflict, match=r"must follow 100 but the table holds 200"):
        _commit(s, name, 101, 250, follows=100, table=stale)
    ids = [r["event_id"] for r in rows(s, name)]
    assert len(ids) == len(set(ids)) == 200
    assert lake.table(name, s).batch_version(f"stream:{name}") == 200


def test_a_first_batch_must_start_at_the_streams_first_message(tmp_path):
    """Nothing committed yet: a consumer that fetched 101-150 (another holds 1-100) must
    not commit, or the ack-all of 150 would acknowledge 1-100 that were never loaded."""
    s = local(tmp_path)
    name = _name()
    spec = stream_spec(s, NATS, name, batch_size=50)
    stream.consume(spec, s, idle_s=0.3)  # creates the stream
    publish(NATS, spec.subjects[0], [_event(i) for i in range(150)])

    async def scenario() -> str:
        import nats
        from nats.js.api import ConsumerConfig, DeliverPolicy

        c = stream.Consumer(spec, s)
        async with c:
            # what a second subscriber of the same durable would get: the later messages
            nc = await nats.connect(NATS)
            js = nc.jetstream()
            await js.delete_consumer(spec.stream, c.durable)
            c.sub = await js.pull_subscribe(
                "", durable=c.durable, stream=spec.stream,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                      opt_start_seq=101, filter_subjects=spec.subjects),
            )  # fmt: skip
            try:
                await c.batch()
            except SourceError as e:
                return str(e)
            finally:
                await nc.close()
        return "committed"

    message = asyncio.run(scenario())
    assert "batch starts at 101, not at 1, the next message after the last committed 0" in message
    assert "\n" not in message
    assert lake.table(name, s) is None  # nothing committed
    assert stream.consume(spec, s, idle_s=1.0).rows_loaded == 150  # a proper consumer: all
    seqs = sorted(r["stream_seq"] for r in rows(s, name))
    assert seqs == list(range(1, 151))


# ----------------------------------------------------------------------- the lease


def _consumer_code(spec, lake_url: str, home: str, seconds: float) -> str:
    raw = spec.model_dump(by_alias=True)
    return (
        "import json, sys\n"
        "from riverlake.settings import get_settings\n"
        "from riverlake.sources.spec import parse_source\n"
        "from riverlake.sources.stream import consume\n"
        f"s = get_settings(lake_url={lake_url!r}, home={home!r})\n"
        f"spec = parse_source({raw!r}, s)\n"
        f"st = consume(spec, s, idle_s=None, max_seconds={seconds})\n"
        "print(json.dumps(st.summary()))\n"
    )


def test_two_live_consumers_load_every_message_once(tmp_path):
    """Two consumer processes of one stream and one lake, started together while
    events are published: one holds the lease and loads everything; the other waited
    for the lease the whole time and consumed nothing."""
    s = local(tmp_path)
    name = _name()
    spec = stream_spec(s, NATS, name, batch_size=100)
    stream.consume(spec, s, idle_s=0.3)  # creates the stream
    total = 2000
    code = _consumer_code(spec, s.lake_url, str(tmp_path), 12.0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    time.sleep(3)  # both are up and one holds the lease
    publish(NATS, spec.subjects[0], [_event(i) for i in range(total)])
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    stats = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    loaded = sorted(st["rows_loaded"] for st in stats)
    assert loaded == [0, total]  # both live at once; only one consumed
    refused = next(st for st in stats if st["rows_loaded"] == 0)
    assert refused["lease_holder"] and refused["batches"] == 0  # the conflict happened
    ids = [r["event_id"] for r in rows(s, name)]
    assert len(ids) == len(set(ids)) == total


def test_a_consumer_that_lost_its_lease_commits_nothing(tmp_path):
    """A holder's process stalls (its event loop blocked) past its lease; another
    consumer, in another thread, takes over and loads the messages; the first, waking
    up, learns at its next renewal that the lease is taken and stops before fetching."""
    s = local(tmp_path)
    name = _name()
    spec = stream_spec(s, NATS, name, batch_size=100)
    stream.consume(spec, s, idle_s=0.3)
    publish(NATS, spec.subjects[0], [_event(i) for i in range(100)])
    taken, done = threading.Event(), threading.Event()
    loaded: list[int] = []

    def second() -> None:
        async def run() -> None:
            async with stream.Consumer(spec, s, lease_wait_s=3 * stream.LEASE_TTL_S) as c:
                assert c.leased
                loaded.append(await c.batch())
                taken.set()
                while not done.is_set():  # hold the lease until the first has looked
                    await asyncio.sleep(0.1)

        asyncio.run(run())

    async def scenario() -> str:
        async with stream.Consumer(spec, s) as first:
            assert first.leased
            thread = threading.Thread(target=second)
            thread.start()
            time.sleep(stream.LEASE_TTL_S + 1)  # stalled: no renewal, the lease expires
            assert taken.wait(30)  # the other consumer took it and loaded the batch
            await asyncio.sleep(stream.LEASE_RENEW_S + 1)  # the first's next renewal
            try:
                await first.batch()
                message = "first consumer went on"
            except SourceError as e:
                message = str(e)
            done.set()
            thread.join(30)
            return message

    message = asyncio.run(scenario())
    assert loaded == [100]
    assert "lease lost before fetching (taken by " in message
    ids = [r["event_id"] for r in rows(s, name)]
    assert len(ids) == len(set(ids)) == 100


def test_a_batch_longer_than_the_lease_keeps_it(tmp_path):
    """The lease is renewed in the background: a batch whose wait alone is longer than
    the lease's TTL (a slow commit is the same) loads its messages and keeps the lease."""
    s = local(tmp_path)
    name = _name()
    spec = stream_spec(s, NATS, name, batch_size=1000, batch_wait_s=stream.LEASE_TTL_S + 3)
    stream.consume(spec, s, idle_s=0.3, max_seconds=0.5)
    publish(NATS, spec.subjects[0], [_event(i) for i in range(50)])
    st_ = stream.consume(spec, s, idle_s=None, max_seconds=1.0)
    assert (st_.rows_loaded, st_.batches) == (50, 1)
    assert len(rows(s, name)) == 50


def test_a_stream_deleted_and_created_again_is_refused_not_skipped(tmp_path):
    """Its sequences start over: read from the lake's old position, x1 would be lost
    silently. The consumer refuses in one line and loads nothing."""
    s = local(tmp_path)
    name = _name()
    spec = stream_spec(s, NATS, name)
    stream.consume(spec, s, idle_s=0.3)
    publish(NATS, spec.subjects[0], [_event(i) for i in range(3)])
    assert stream.consume(spec, s, idle_s=0.5).rows_loaded == 3
    delete_streams(NATS, [spec.stream])
    asyncio.run(_recreate(spec))
    publish(NATS, spec.subjects[0], [(f"x{i}", _event(100 + i)[1]) for i in range(5)])
    with pytest.raises(SourceError) as e:
        stream.consume(spec, s, idle_s=0.5)
    msg = str(e.value)
    assert "\n" not in msg and "was deleted and created again; nothing consumed" in msg
    assert len(rows(s, name)) == 3


async def _recreate(spec) -> None:
    import nats

    nc = await nats.connect(spec.url)
    await stream.ensure_stream(nc.jetstream(), spec)
    await nc.close()


# ------------------------------------------------------------------------- poison


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def test_every_hostile_message_ends_loaded_or_quarantined_and_is_acknowledged(tmp_path):
    s = local(tmp_path, max_batch_bytes=4096)
    name = _name()
    spec = stream_spec(s, NATS, name)
    stream.consume(spec, s, idle_s=0.3)
    good = [_event(i) for i in range(20)]
    big = b'{"event_id": "x' + b"y" * 5000 + b'", "carrier": "UA", "flight": 1, "published_at": 1}'
    hostile = [
        b'{"event_id": [1]}',  # an unhashable id: TypeError before
        b'{"event_id": {"a": 1}}',
        b'{"event_id": true}',
        b'{"event_id": "d1", "carrier": ' + _deep(20_000) + b"}",  # RecursionError before
        _deep(2_000),
        b'{"event_id": "d2", "carrier": "UA", "flight": 1, "published_at": 1, "x": '
        + _deep(100)
        + b"}",  # deep, in an undeclared field
        b'{"event_id": "big", "carrier": "UA", "flight": 99999999999999999999999, '
        b'"published_at": 1}',  # overflows int64
        b'{"event_id": "f", "carrier": "UA", "flight": 1.5e400, "published_at": 1}',
        b'{"event_id": "u", "carrier": "\xff\xfe", "flight": 1, "published_at": 1}',
        b'{"event_id": "n", "carrier": null, "flight": null, "published_at": null}',
        big,
        b"",
        b"\x00\x01",
        b'"just a string"',
    ]
    publish(NATS, spec.subjects[0], [*good, *((None, h) for h in hostile)])
    st = stream.consume(spec, s, idle_s=1.0)
    assert st.rows_in == len(good) + len(hostile)
    assert st.rows_loaded + st.rows_quarantined + st.rows_deduplicated == st.rows_in
    got = {r["event_id"] for r in rows(s, name)}
    assert {f"e{i}" for i in range(20)} <= got
    q = quarantined(s, name)
    assert len(q) == st.rows_quarantined >= 10
    reasons = " | ".join(r["reason"] for r in q)
    for text in ("'event_id' is list, not a string or an integer",
                 "'event_id' is dict", "'event_id' is bool",
                 "JSON nested deeper than 64 levels",
                 f"message of {len(big)} bytes exceeds max_batch_bytes=4096",
                 "not a JSON object"):  # fmt: skip
        assert text in reasons, text
    assert all(r["reason"] and "\n" not in r["reason"] for r in q)
    assert all(len(r["original"]) <= ORIGINAL_PREFIX_BYTES for r in q)
    # everything was acknowledged: nothing comes again, nothing is quarantined twice
    again = stream.consume(spec, s, idle_s=0.5)
    assert again.rows_in == 0
    assert len(quarantined(s, name)) == len(q)


def test_batches_are_bounded_in_bytes(tmp_path):
    s = local(tmp_path, max_batch_bytes=20_000)
    name = _name()
    spec = stream_spec(s, NATS, name, batch_size=1000)
    stream.consume(spec, s, idle_s=0.3)
    pad = "p" * 900
    msgs = [(f"e{i}", json.dumps({"event_id": f"e{i}", "carrier": pad, "flight": i,
                                  "published_at": 1.0}).encode()) for i in range(300)]  # fmt: skip
    publish(NATS, spec.subjects[0], msgs)
    st = stream.consume(spec, s, idle_s=1.0)
    assert st.rows_loaded == 300
    sizes = [c["rows"] for c in lake.table(name, s).commits() if c["rows"]]
    assert sum(sizes) == 300
    assert max(sizes) <= 22  # about 20 kB of ~960-byte messages a batch, not 1000


# ------------------------------------------------------------------------- fuzzed

_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
)  # fmt: skip
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)  # fmt: skip
_field_names = st.sampled_from(["event_id", "carrier", "flight", "published_at", "stream_seq", "x"])
_records = st.dictionaries(_field_names, _json, max_size=6)


def _encoded(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


_messages = st.one_of(
    _records.map(_encoded),  # objects with hostile fields
    _json.map(_encoded),  # any JSON at all
    st.binary(max_size=200),  # not JSON, not UTF-8
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),  # deep
    st.builds(lambda i, c: _encoded({"event_id": f"ok{i}", "carrier": c, "flight": i,
                                     "published_at": 1.0}),
              st.integers(0, 50), st.text(max_size=5)),  # good ones, repeats included
)  # fmt: skip


class _Msg:
    """A fetched message as the consumer sees it: its bytes and its stream sequence."""

    def __init__(self, data: bytes, seq: int):
        self.data = data
        self.metadata = type("M", (), {"sequence": type("S", (), {"stream": seq})()})()


@settings(max_examples=400, deadline=2000, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(st.lists(_messages, min_size=1, max_size=20))
def test_fuzzed_messages_end_loaded_quarantined_or_deduplicated(payloads):
    """Parsing and typing of any batch of messages: each ends loaded, quarantined with a
    one-line reason and its bytes, or dropped as a repeat of a message id; no exception."""
    from riverlake.settings import Settings

    spec = stream_spec(Settings(lake_url="/tmp/unused"), NATS, "fz")
    msgs = [_Msg(p, i + 1) for i, p in enumerate(payloads)]
    records, bad, dupes = stream._parse(spec, msgs, max_bytes=1 << 20, max_depth=64)
    table, rejects = stream._typed(spec, spec.arrow_schema(), records, "FZ#1")
    assert table.num_rows + len(bad) + len(rejects) + dupes == len(msgs)
    for b in [*bad, *rejects]:
        assert b.reason and "\n" not in b.reason
        assert b.original in payloads
    assert table.schema == spec.arrow_schema()


@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
@given(st.lists(_messages, min_size=20, max_size=60))
def test_fuzzed_batches_through_the_real_broker_and_lake(tmp_path, payloads):
    """The same hostile batches published to the machine's NATS and consumed into a lake:
    every message is acknowledged and accounted for, and a second consumer finds none."""
    s = local(tmp_path / uuid.uuid4().hex[:6])
    name = _name()
    spec = stream_spec(s, NATS, name)
    stream.consume(spec, s, idle_s=0.3)
    publish(NATS, spec.subjects[0], [(None, p) for p in payloads])
    st_ = stream.consume(spec, s, idle_s=1.0)
    assert st_.rows_in == len(payloads)
    assert st_.rows_loaded + st_.rows_quarantined + st_.rows_deduplicated == len(payloads)
    assert stream.consume(spec, s, idle_s=0.3).rows_in == 0


def test_a_broker_refusing_the_stream_fails_in_one_line(tmp_path):
    """No storage left for the stream's max_bytes (a server reserves it): one line
    naming the source and the broker's reason, nothing written."""
    s = local(tmp_path)
    name = _name()
    spec = stream_spec(s, NATS, name, max_bytes=1 << 55)
    with pytest.raises(SourceError) as e:
        stream.consume(spec, s, idle_s=0.3)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"source {name!r}: {NATS} refused to create stream {name.upper()}")
    assert "insufficient storage" in msg
    assert lake.table(name, s) is None


# ------------------------------------------------------- a broker of the test's own


@pytest.fixture
def own_nats(tmp_path):
    """A nats-server with JetStream of this test's own (the wheel the stack uses), so
    the test may stop it or shape its buckets."""
    from riverlake.ops.stack import free_port

    port = free_port()
    server = ROOT / ".venv" / "bin" / "nats-server"
    cmd = [str(server), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path / "js")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"nats://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield url, proc
    proc.kill()
    proc.wait()


def test_deleted_messages_leave_a_gap_the_consumer_steps_over(tmp_path, own_nats):
    """An operator deleted message 2: the next message after the committed 1 is 3, and
    the batch starting there loads (it used to stop the stream for good)."""
    url, _ = own_nats
    s = local(tmp_path)
    spec = stream_spec(s, url, _name())
    stream.consume(spec, s, idle_s=0.3)
    publish(url, spec.subjects[0], [_event(1)])
    assert stream.consume(spec, s, idle_s=0.5).rows_loaded == 1
    publish(url, spec.subjects[0], [_event(2), _event(3)])

    async def delete_second() -> None:
        import nats

        nc = await nats.connect(url)
        await nc.jetstream().delete_msg(spec.stream, 2)
        await nc.close()

    asyncio.run(delete_second())
    st_ = stream.consume(spec, s, idle_s=0.5)
    assert (st_.rows_loaded, st_.expired_skipped) == (1, 1)
    assert sorted(r["event_id"] for r in rows(s, spec.table)) == ["e1", "e3"]


def test_a_broker_going_away_mid_run_is_a_source_error(tmp_path, own_nats):
    """`--watch` retries source errors: the broker stopping mid-consume must be one
    (it raised nats' own ConnectionClosedError, which stopped the watch)."""
    url, proc = own_nats
    s = local(tmp_path)
    spec = stream_spec(s, url, _name())
    stream.consume(spec, s, idle_s=0.3)
    threading.Timer(1.5, proc.kill).start()
    with pytest.raises(SourceError) as e:
        stream.consume(spec, s, idle_s=None, max_seconds=15)
    assert str(e.value).startswith(f"source {spec.name!r}: consuming on {url} failed: ")
    assert "\n" not in str(e.value)


def test_a_lease_bucket_whose_leases_would_not_expire_is_refused(tmp_path, own_nats):
    """A bucket made elsewhere without a TTL would keep a killed holder's lease forever:
    every run would wait, consume nothing and look fine."""
    url, _ = own_nats
    s = local(tmp_path)
    spec = stream_spec(s, url, _name())

    async def bucket_without_ttl() -> None:
        import nats

        nc = await nats.connect(url)
        await nc.jetstream().create_key_value(bucket=stream.LEASE_BUCKET, history=1)
        await nc.close()

    asyncio.run(bucket_without_ttl())
    with pytest.raises(
        SourceError, match=rf"bucket {stream.LEASE_BUCKET} has a TTL of .* s, not the"
    ):
        stream.consume(spec, s, idle_s=0.3)


# ------------------------------------------------------------ the demo publisher's pace


def test_the_replayer_keeps_its_rate_from_the_first_event(tmp_path):
    """The pace counts from the first event, not from building the events (a few
    seconds of pandas): the replayer once sent that many seconds' worth at once, and
    the stream benchmark measured its own publisher's burst as latency."""
    import nats

    from riverlake.demo.replayer import replay

    name = _name()
    subject, stream_name = f"{name}.events", name.upper()
    sent = replay(local(tmp_path, nats_url=NATS), rate=2000, count=2000, subject=subject,
                  stream=stream_name)  # fmt: skip
    assert sent == 2000

    async def published_at(seqs):
        nc = await nats.connect(NATS)
        try:
            js = nc.jetstream()
            return [json.loads((await js.get_msg(stream_name, s)).data)["published_at"]
                    for s in seqs]  # fmt: skip
        finally:
            await nc.close()

    first, mid, last = asyncio.run(published_at([1, 1000, 2000]))
    assert mid - first >= 0.4, (first, mid)  # 1,000 events at 2,000/s: 0.5 s, not a burst
    assert last - first >= 0.9, (first, last)
