"""Source connectors against real servers: files (local, S3, HTTP), the HTTP API, SQL
(SQLite and the machine's PostgreSQL), and NATS JetStream (the stack's and the machine's).

Lakes are local folders here unless a test is about S3, so each test owns its state.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from riverlake import lake
from riverlake.demo import api as demo_api
from riverlake.demo import dimensions as demo_dimensions
from riverlake.ops.stack import free_port
from riverlake.settings import get_settings
from riverlake.sources import ingest
from riverlake.sources.base import SourceError
from riverlake.sources.spec import parse_source
from tests.conftest import ROOT, need

pytestmark = pytest.mark.integration

CSV_COLS = ["id", "name", "value"]
SCHEMA = {"id": "int64", "name": "string", "value": "float64"}


def local(tmp_path, **kw):
    return get_settings(lake_url=str(tmp_path / "lake"), home=tmp_path, **kw)


def quarantined(settings, source: str) -> list[dict]:
    t = lake.table(lake.SOURCE_QUARANTINE, settings)
    if t is None:
        return []
    return [r for r in t.to_arrow().to_pylist() if r["source"] == source]


def rows(settings, table: str) -> list[dict]:
    return lake.table(table, settings).to_arrow().to_pylist()


def _csv(ids) -> bytes:
    return ("id,name,value\n" + "".join(f"{i},n{i},{i / 2}\n" for i in ids)).encode()


def _zstd(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


def _parquet(ids) -> bytes:
    buf = io.BytesIO()
    t = pa.table({"id": list(ids), "name": [f"n{i}" for i in ids], "value": [i / 2 for i in ids]})
    pq.write_table(t, buf)
    return buf.getvalue()


# ----------------------------------------------------------------------------------- files


@pytest.fixture
def drop_dir(tmp_path):
    d = tmp_path / "drops"
    d.mkdir()
    (d / "a.csv").write_bytes(_csv(range(0, 10)))
    (d / "b.csv.gz").write_bytes(gzip.compress(_csv(range(10, 25))))
    (d / "c.csv.zst").write_bytes(_zstd(_csv(range(25, 30))))
    (d / "corrupt.csv.gz").write_bytes(gzip.compress(_csv(range(99, 100)))[:30] + b"\x00garbage")
    (d / "latin1.csv").write_bytes("id,name,value\n1,caf\xe9,1.0\n".encode("latin-1"))
    (d / "semicolon.csv").write_bytes(b"id;name;value\n1;x;1.0\n")
    (d / "p1.parquet").write_bytes(_parquet(range(0, 7)))
    (d / "p2.parquet.zst").write_bytes(_zstd(_parquet(range(7, 10))))
    (d / "truncated.parquet").write_bytes(_parquet(range(50, 60))[:200])
    (d / "j1.jsonl").write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in
                                          [{"id": 1, "name": "x", "value": 1.5}]))  # fmt: skip
    (d / "j2.jsonl.gz").write_bytes(gzip.compress(b'{"id": 2, "name": "y", "value": 2}\n'))
    return d


def files_spec(settings, url: str, fmt: str, name: str = "files", **kw):
    return parse_source({"name": name, "kind": "files", "url": url, "format": fmt,
                         "table": name, "columns": CSV_COLS, "schema": SCHEMA, **kw},
                        settings)  # fmt: skip


def test_files_every_format_and_codec_loads_and_bad_files_are_quarantined(tmp_path, drop_dir):
    s = local(tmp_path)
    res = ingest.ingest(files_spec(s, f"{drop_dir}/*.csv*", "csv", "csvs"), s)
    assert res.units == 6
    assert res.rows_loaded == 30 and res.rows_quarantined == 3
    assert res.rows_in == res.rows_loaded + res.rows_quarantined
    assert sorted(r["id"] for r in rows(s, "csvs")) == list(range(30))
    bad = {r["unit"].split("#")[0].rsplit("/", 1)[1]: r for r in quarantined(s, "csvs")}
    assert set(bad) == {"corrupt.csv.gz", "latin1.csv", "semicolon.csv"}
    assert "gzip" in bad["corrupt.csv.gz"]["reason"].lower()
    assert "utf" in bad["latin1.csv"]["reason"].lower()
    assert "wrong delimiter" in bad["semicolon.csv"]["reason"]
    assert bad["latin1.csv"]["original"] == (drop_dir / "latin1.csv").read_bytes()

    pres = ingest.ingest(files_spec(s, f"{drop_dir}/*.parquet*", "parquet", "pq"), s)
    assert (pres.rows_loaded, pres.rows_quarantined) == (10, 1)
    assert sorted(r["id"] for r in rows(s, "pq")) == list(range(10))
    (tq,) = quarantined(s, "pq")
    assert tq["unit"].split("#")[0].endswith("truncated.parquet") and tq["reason"]

    jres = ingest.ingest(files_spec(s, f"{drop_dir}/*.jsonl*", "jsonl", "js"), s)
    assert (jres.rows_loaded, jres.rows_quarantined) == (2, 0)
    assert {r["id"]: r["value"] for r in rows(s, "js")} == {1: 1.5, 2: 2.0}


def test_files_rerun_reads_only_new_or_changed_files(tmp_path, drop_dir):
    s = local(tmp_path)
    spec = files_spec(s, f"{drop_dir}/*.csv*", "csv", "csvs")
    first = ingest.ingest(spec, s)
    again = ingest.ingest(spec, s)
    assert again.skipped and again.units == 0 and again.batch is None
    (drop_dir / "d.csv").write_bytes(_csv(range(30, 33)))  # new
    (drop_dir / "a.csv").write_bytes(_csv(range(0, 11)))  # changed (size and mtime)
    third = ingest.ingest(spec, s)
    assert third.units == 2 and third.rows_loaded == 14
    state = lake.read_state("csvs", "csvs", s)
    assert state["files"][str(drop_dir / "d.csv")][0] == len(_csv(range(30, 33)))
    assert first.version < third.version
    assert len(quarantined(s, "csvs")) == 3  # the bad files were not quarantined twice


def test_files_over_http(tmp_path, drop_dir):
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                            "127.0.0.1", "--directory", str(drop_dir)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_port(port)
        s = local(tmp_path)
        res = ingest.ingest(files_spec(s, f"http://127.0.0.1:{port}/*.csv.gz", "csv", "web"), s)
        assert (res.units, res.rows_loaded, res.rows_quarantined) == (2, 15, 1)
        assert ingest.ingest(files_spec(s, f"http://127.0.0.1:{port}/*.csv.gz", "csv", "web"),
                             s).skipped  # fmt: skip
    finally:
        srv.terminate()
        srv.wait()


def test_files_on_s3_and_an_unreachable_store(stack_env, tmp_path):
    s = get_settings(lake_url="s3://riverlake-test/files-lake")
    fs = lake.filesystem(s)
    fs.pipe({f"riverlake-test/incoming/{i}.csv.gz": gzip.compress(_csv(range(i * 5, i * 5 + 5)))
             for i in range(4)})  # fmt: skip
    spec = files_spec(s, "s3://riverlake-test/incoming/*.csv.gz", "csv", "s3files")
    res = ingest.ingest(spec, s)
    assert (res.units, res.rows_loaded) == (4, 20)
    state = lake.read_state("s3files", "s3files", s)
    assert all(tag for _, tag in state["files"].values())  # S3 etags in the manifest
    dead = get_settings(lake_url="s3://riverlake-test/files-lake",
                        s3_endpoint=f"http://127.0.0.1:{free_port()}")  # fmt: skip
    with pytest.raises(SourceError, match=r"^source 's3files': cannot list s3://"):
        ingest.connector_for("files").plan(spec, None, dead)


def _wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} never opened")


# ------------------------------------------------------------------------------------- http


class Api:
    """The demo weather API, served by uvicorn on a free port in this process."""

    def __init__(self, **kw):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(demo_api.create_api(**kw), port=self.port, log_level="warning")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        _wait_port(self.port)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def api(request):
    a = Api(**getattr(request, "param", {}))
    yield a
    a.stop()


WEATHER = {"id": "int64", "origin": "string", "temp": "float64", "time_hour": "string",
           "updated_at": "string"}  # fmt: skip


def weather_spec(settings, url, **kw):
    return parse_source({"name": "weather", "kind": "http", "url": url, "table": "weather",
                         "cursor_field": "updated_at", "key": ["id"], "schema": WEATHER,
                         "page_size": 5000, "backoff_s": 0.1, **kw}, settings)  # fmt: skip


def test_http_cursor_pagination_then_incremental_updates(tmp_path, api):
    import httpx

    s = local(tmp_path)
    spec = weather_spec(s, f"{api.url}/weather")
    first = ingest.ingest(spec, s)
    n = len(demo_api.weather_records())
    assert first.rows_loaded == n == 26115
    assert ingest.ingest(spec, s).skipped
    touched = [httpx.post(f"{api.url}/weather/{i}/touch").json() for i in (5, 77)]
    second = ingest.ingest(spec, s)
    assert second.rows_in == 2 and second.rows_loaded == 2  # only the updated records
    got = {r["id"]: r for r in rows(s, "weather")}
    assert len(got) == n
    assert [got[t["id"]]["temp"] for t in touched] == [t["temp"] for t in touched]
    state = lake.read_state("weather", "weather", s)
    assert state["cursor"] == max(t["updated_at"] for t in touched)


def test_http_cursor_with_nothing_after_it_plans_nothing(tmp_path, api):
    """The probe from the cursor comes back empty: no unit, so a run with nothing new
    reads nothing (it read the API again before, only to find no record)."""
    import httpx

    s = local(tmp_path)
    spec = weather_spec(s, f"{api.url}/weather")
    assert ingest.reach_sources([spec], s) == {"weather": 1}
    ingest.ingest(spec, s)
    assert ingest.reach_sources([spec], s) == {"weather": 0}
    version = lake.table_version("weather", s)
    again = ingest.ingest(spec, s)
    assert again.skipped and again.batch is None  # nothing new, not an old batch again
    assert lake.table_version("weather", s) == version
    httpx.post(f"{api.url}/weather/12/touch")
    assert ingest.reach_sources([spec], s) == {"weather": 1}
    assert ingest.ingest(spec, s).rows_loaded == 1


def test_http_offset_pages_are_read_in_parallel_units(tmp_path, api):
    s = local(tmp_path)
    spec = weather_spec(s, f"{api.url}/weather/offset", pagination="offset", page_size=3000,
                        total_path="total")  # fmt: skip
    res = ingest.ingest(spec, s)
    assert res.units == 9 and res.rows_loaded == 26115


def test_http_page_numbers_without_a_total_are_read_in_one_unit(tmp_path, api):
    s = local(tmp_path)
    spec = weather_spec(s, f"{api.url}/weather/pages", pagination="page", page_size=4000)
    res = ingest.ingest(spec, s)  # pages 1..7, the last one short: paging stops there
    assert res.units == 1 and res.rows_loaded == 26115
    assert len({r["id"] for r in rows(s, "weather")}) == 26115


@pytest.mark.parametrize("api", [{"fault_every": 2}], indirect=True)
def test_http_retries_429_and_5xx_honouring_retry_after(tmp_path, api):
    s = local(tmp_path)
    t0 = time.monotonic()
    res = ingest.ingest(weather_spec(s, f"{api.url}/weather", page_size=10000), s)
    assert res.rows_loaded == 26115
    assert time.monotonic() - t0 >= 1.0  # at least one Retry-After: 1 was waited out


@pytest.mark.parametrize("api", [{"malformed_page": 3}], indirect=True)
def test_http_malformed_page_is_quarantined_and_the_rest_loads(tmp_path, api):
    s = local(tmp_path)
    spec = weather_spec(s, f"{api.url}/weather", page_size=5000)
    first = ingest.ingest(spec, s)  # request 1 is the reachability probe; page 2 is broken
    assert first.rows_quarantined == 1 and first.rows_loaded == 5000
    (bad,) = quarantined(s, "weather")
    assert bad["reason"].startswith("not JSON") and bad["original"] == b'{"data": [{"id": 1'
    rest = ingest.ingest(spec, s)  # the cursor stopped before the bad page: resume there
    assert 26115 - 5000 <= rest.rows_loaded < 26115 - 4990  # the boundary hour again
    assert len(rows(s, "weather")) == 26115


@pytest.mark.parametrize("api", [{"token": "s3cret"}], indirect=True)
def test_http_wrong_credentials_fail_in_one_line_and_commit_nothing(tmp_path, api, monkeypatch):
    s = local(tmp_path)
    spec = weather_spec(s, f"{api.url}/weather", token_env="WEATHER_TOKEN")
    monkeypatch.setenv("WEATHER_TOKEN", "wrong")
    with pytest.raises(SourceError) as e:
        ingest.ingest(spec, s)
    assert str(e.value) == (
        f"source 'weather': {api.url}/weather refused the credentials (HTTP 401)"
    )
    assert lake.table("weather", s) is None
    monkeypatch.setenv("WEATHER_TOKEN", "s3cret")
    assert ingest.ingest(spec, s).rows_loaded == 26115


def test_http_unreachable_api_fails_naming_the_source(tmp_path):
    s = local(tmp_path)
    spec = weather_spec(s, f"http://127.0.0.1:{free_port()}/weather", max_retries=1)
    with pytest.raises(SourceError, match=r"^source 'weather': .* unreachable after 1 retries"):
        ingest.ingest(spec, s)


# -------------------------------------------------------------------------------------- sql

PLANES = {"id": "int64", "tailnum": "string", "seats": "int64", "updated_at": "string"}


def planes_spec(settings, url, **kw):
    return parse_source({"name": "planes", "kind": "sql", "url": url, "source_table": "planes",
                         "columns": list(PLANES), "cursor_column": "updated_at",
                         "split_column": "id", "partitions": 4, "table": "planes",
                         "key": ["id"], "schema": PLANES, **kw}, settings)  # fmt: skip


def _sql_roundtrip(tmp_path, url: str):
    import sqlalchemy as sa

    s = local(tmp_path)
    demo_dimensions.seed_dimensions(url)
    spec = planes_spec(s, url)
    first = ingest.ingest(spec, s)
    assert (first.units, first.rows_loaded) == (4, 3322)
    assert ingest.ingest(spec, s).skipped
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.execute(sa.text("UPDATE planes SET seats = 999, updated_at = '2014-01-01T00:00:00Z' "
                          "WHERE id IN (3, 3000)"))  # fmt: skip
    second = ingest.ingest(spec, s)
    assert second.rows_in == 2 and second.units == 4
    got = {r["id"]: r["seats"] for r in rows(s, "planes")}
    assert len(got) == 3322 and got[3] == got[3000] == 999
    engine.dispose()


def test_sql_sqlite_ranges_and_cursor(tmp_path):
    _sql_roundtrip(tmp_path, f"sqlite:///{tmp_path / 'dims.sqlite'}")


@pytest.fixture
def pg_url():
    import sqlalchemy as sa

    base = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    try:
        with sa.create_engine(base).connect():
            pass
    except sa.exc.OperationalError as e:
        need(False, f"PostgreSQL at 127.0.0.1:5432 is not reachable: {str(e.orig).strip()[:80]}")
    schema = f"rl_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(base)
    with engine.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield f"{base}?options=-csearch_path%3D{schema}"
    with engine.begin() as c:
        c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()


def test_sql_postgresql_ranges_and_cursor(tmp_path, pg_url):
    _sql_roundtrip(tmp_path, pg_url)


def test_sql_bad_credentials_and_unreachable_fail_in_one_line(tmp_path, pg_url):
    s = local(tmp_path)
    wrong_user = pg_url.replace("postgres@", "nobody@")  # a role the server refuses
    with pytest.raises(SourceError, match=r"^source 'planes': cannot read planes at postgresql"):
        ingest.ingest(planes_spec(s, wrong_user), s)
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    with pytest.raises(SourceError) as e:
        ingest.ingest(planes_spec(s, dead), s)
    assert "\n" not in str(e.value) and "planes" in str(e.value)
    assert lake.table("planes", s) is None


# ----------------------------------------------------------------------------------- stream

EVENTS = {"event_id": "string", "carrier": "string", "flight": "int64", "published_at": "float64",
          "stream_seq": "int64"}  # fmt: skip


def stream_spec(settings, url: str, name: str, **kw):
    return parse_source({"name": name, "kind": "stream", "url": url, "stream": name.upper(),
                         "subjects": [f"{name}.events"], "durable": f"{name}-consumer",
                         "table": name, "schema": EVENTS, "batch_size": 500,
                         "batch_wait_s": 0.2, **kw}, settings)  # fmt: skip


async def _publish(url: str, subject: str, payloads: list[tuple[str | None, bytes]]) -> None:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    for mid, data in payloads:
        await js.publish(subject, data, headers={"Nats-Msg-Id": mid} if mid else None)
    await nc.close()


def publish(url, subject, payloads):
    import asyncio

    asyncio.run(_publish(url, subject, payloads))


def delete_streams(url: str, names: list[str]) -> None:
    """Delete test streams (a server reserves each one's max_bytes of its storage)."""
    import asyncio

    import nats
    from nats.js.errors import NotFoundError

    async def run() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        for n in names:
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(n)
        await nc.close()

    asyncio.run(run())


def _event(i: int) -> tuple[str, bytes]:
    ev = {"event_id": f"e{i}", "carrier": "UA", "flight": i, "published_at": time.time()}
    return ev["event_id"], json.dumps(ev).encode()


def test_stream_poison_messages_and_duplicates(stack_env, tmp_path):
    from riverlake.sources.stream import consume

    s = local(tmp_path)
    name = f"ev{uuid.uuid4().hex[:6]}"
    spec = stream_spec(s, str(get_settings().nats_url), name)
    consume(spec, s, idle_s=0.5)  # creates the stream
    msgs = [_event(i) for i in range(100)]
    msgs += [(None, b"not json"), (None, b'{"carrier": "UA"}'), (None, b'{"event_id": "x", '
             b'"carrier": "UA", "flight": "abc", "published_at": 1}')]  # fmt: skip
    msgs += [(None, _event(7)[1])]  # the same event id again, without the broker's dedupe header
    publish(spec.url, spec.subjects[0], msgs)
    stats = consume(spec, s, idle_s=1.0)
    got = rows(s, name)
    assert sorted(r["flight"] for r in got) == list(range(100))
    assert stats.rows_in == 104 and stats.rows_quarantined == 3
    assert stats.rows_loaded + stats.rows_quarantined + stats.rows_deduplicated == 104
    reasons = sorted(r["reason"] for r in quarantined(s, name))
    assert reasons[0] == "Failed to parse string: 'abc' as a scalar of type int64"
    assert reasons[1].startswith("poison message: Expecting value")  # not JSON
    assert reasons[2] == "poison message: no 'event_id'"
    assert {r["original"] for r in quarantined(s, name)} >= {b"not json"}


def _lines(proc) -> queue.Queue:
    """The process's stderr lines, as they come, on a queue (None at the end)."""
    q: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stderr:
            q.put(line.rstrip("\n"))
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _until(q: queue.Queue, pattern: str, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        if m := re.search(pattern, line):
            return m
    raise AssertionError(f"no line matching {pattern!r} within {timeout}s")


def test_stream_consumer_killed_mid_run_loses_and_duplicates_nothing(stack_env, tmp_path):
    """SIGKILL a consumer process three times, each right after it fetched a batch it had
    not committed (proved from its log and the lake), while events flow; each successor
    fetches those messages again (the redelivery path); then drain: every event once."""
    name = f"ev{uuid.uuid4().hex[:6]}"
    url = str(get_settings().nats_url)
    lake_url = str(tmp_path / "lake")
    raw = stream_spec(get_settings(), url, name, batch_size=100).model_dump(by_alias=True)
    code = (
        "import logging, sys\n"
        "from riverlake.settings import get_settings\n"
        "from riverlake.sources.spec import parse_source\n"
        "from riverlake.sources.stream import consume\n"
        "logging.basicConfig(stream=sys.stderr, format='%(message)s')\n"
        "logging.getLogger('riverlake.sources.stream').setLevel(logging.DEBUG)\n"
        f"s = get_settings(lake_url={lake_url!r}, home={str(tmp_path)!r})\n"
        f"spec = parse_source({raw!r}, s)\n"
        "consume(spec, s, idle_s=None, max_seconds=float(sys.argv[1]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, "-c", code, "2"], env=env)
    first.wait(60)  # creates the stream and the durable consumer
    total = 3000
    pub = threading.Thread(target=publish, args=(url, f"{name}.events",
                                                 [_event(i) for i in range(total)]))  # fmt: skip
    pub.start()
    s = local(tmp_path)
    fetched = r"fetched \d+ messages, seq (\d+)-(\d+)"
    killed: list[tuple[int, int]] = []  # (first, last) of each batch in flight at a kill
    uncommitted = 0
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-c", code, "60"], env=env,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
        log = _lines(p)
        if killed:  # the redelivery path: the successor starts at the killed batch again
            m = _until(log, fetched, 60)
            committed = lake.table(name, s).batch_version(f"stream:{name.upper()}:{name}-consumer")
            assert int(m.group(1)) == committed + 1 <= killed[-1][0] or committed >= killed[-1][1]
        _until(log, r"committed seq", 60)  # it has loaded something
        m = _until(log, fetched, 60)  # and has a batch in flight now
        p.send_signal(signal.SIGKILL)
        p.wait()
        killed.append((int(m.group(1)), int(m.group(2))))
        done = lake.table(name, s).batch_version(f"stream:{name.upper()}:{name}-consumer")
        uncommitted += done < killed[-1][1]  # the kill landed between fetch and commit
    pub.join()
    t = lake.table(name, s)
    assert t is not None
    last = subprocess.Popen([sys.executable, "-c", code, "8"], env=env)
    assert last.wait(120) == 0
    from riverlake.sources.stream import consume

    consume(stream_spec(s, url, name, batch_size=100), s, idle_s=2.0)  # what was left unacked
    got = rows(s, name)
    ids = [r["event_id"] for r in got]
    assert len(ids) == len(set(ids)) == total
    seqs = sorted(r["stream_seq"] for r in got)
    assert seqs == list(range(seqs[0], seqs[0] + total))
    assert len(killed) == 3 and uncommitted >= 1, (killed, uncommitted)


def test_stream_on_the_machines_nats(tmp_path):
    """The system NATS with JetStream (127.0.0.1:4222), as on this kind of machine."""
    from riverlake.sources.stream import consume

    with socket.socket() as sock:
        up = sock.connect_ex(("127.0.0.1", 4222)) == 0
    need(up, "no NATS server on 127.0.0.1:4222")
    s = local(tmp_path)
    name = f"ev{uuid.uuid4().hex[:6]}"
    spec = stream_spec(s, "nats://127.0.0.1:4222", name, max_bytes=64 << 20)
    try:
        consume(spec, s, idle_s=0.3)
        publish(spec.url, spec.subjects[0], [_event(i) for i in range(50)])
        assert consume(spec, s, idle_s=1.0).rows_loaded == 50
        assert consume(spec, s, idle_s=0.5).rows_loaded == 0
    finally:
        delete_streams(spec.url, [spec.stream])


def test_stream_unreachable_broker_fails_in_one_line(tmp_path):
    from riverlake.sources.stream import consume

    s = local(tmp_path)
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(SourceError, match=rf"^source 'evx': cannot connect to {url}"):
        consume(stream_spec(s, url, "evx"), s, idle_s=0.5)


def test_files_ingest_killed_at_any_point_resumes_exactly_once(tmp_path):
    """SIGKILL ingests of 400 files (one bad) at points spread over a run; the re-run loads
    every row once, and the files the killed runs wrote are never visible."""
    d = tmp_path / "many"
    d.mkdir()
    n_files = 400
    for i in range(n_files):
        (d / f"f{i:03d}.csv.gz").write_bytes(gzip.compress(_csv(range(i * 50, i * 50 + 50))))
    (d / "zz-bad.csv.gz").write_bytes(b"\x1f\x8b\x08\x00nope")
    raw = files_spec(get_settings(), f"{d}/*.csv.gz", "csv", "many").model_dump(by_alias=True)

    def code(lake_dir) -> str:
        return (
            "from riverlake.settings import get_settings\n"
            "from riverlake.sources import ingest\n"
            "from riverlake.sources.spec import parse_source\n"
            f"s = get_settings(lake_url={str(lake_dir)!r}, home={str(tmp_path)!r})\n"
            f"print(ingest.ingest(parse_source({raw!r}, s), s).summary())\n"
        )

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()  # how long one whole run takes here, on a lake of its own
    subprocess.run([sys.executable, "-c", code(tmp_path / "timing")], env=env, check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    whole = time.monotonic() - t0
    for frac in (0.3, 0.5, 0.7, 0.85, 0.95):
        p = subprocess.Popen([sys.executable, "-c", code(tmp_path / "lake")], env=env,
                             stdout=subprocess.DEVNULL)  # fmt: skip
        time.sleep(whole * frac)
        p.send_signal(signal.SIGKILL)
        p.wait()
    on_disk = list((tmp_path / "lake" / "tables" / "many").rglob("*.parquet"))
    done = subprocess.run([sys.executable, "-c", code(tmp_path / "lake")], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    s = local(tmp_path)
    ids = [r["id"] for r in rows(s, "many")]
    assert len(ids) == len(set(ids)) == n_files * 50
    assert len(quarantined(s, "many")) == 1
    live = {f["path"] for f in lake.table("many", s).files()}
    orphans = [f for f in on_disk if f.name not in {p.rsplit("/", 1)[-1] for p in live}]
    assert on_disk and orphans  # the killed runs did write files, which never became visible
    again = ingest.ingest(files_spec(s, f"{d}/*.csv.gz", "csv", "many"), s)
    assert again.skipped and again.units == 0
