"""Hostile inputs to the file and HTTP connectors: each ends loaded or quarantined with a
one-line reason, the manifest or cursor advances, and nothing crashes the process.

Everything is real: files on disk, a local Delta lake under tmp_path, HTTP servers on
threads of this process (the standard library's http.server).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import resource
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pytest

from riverlake import lake
from riverlake.settings import Settings, get_settings
from riverlake.sources import files, http, ingest
from riverlake.sources.base import SourceError
from riverlake.sources.spec import parse_source
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

FLIGHT_COLS = ["year", "month", "day", "flight"]
CSV_COLS = ["id", "name", "value"]
SCHEMA = {"id": "int64", "name": "string", "value": "float64"}
MiB = 1 << 20


def local(tmp_path: Path, **kw) -> Settings:
    return get_settings(lake_url=str(tmp_path / "lake"), home=tmp_path, **kw)


def drops_spec(s: Settings, url: str, **kw):
    return parse_source({"name": "flight_drops", "kind": "files", "url": url, "format": "csv",
                         "sink": "landing", "table": "flights", "columns": FLIGHT_COLS, **kw},
                        s)  # fmt: skip


def table_spec(s: Settings, url: str, fmt: str = "csv", name: str = "t", **kw):
    return parse_source({"name": name, "kind": "files", "url": url, "format": fmt, "table": name,
                         "columns": CSV_COLS, "schema": SCHEMA, **kw}, s)  # fmt: skip


def quarantined(s: Settings, source: str) -> list[dict]:
    t = lake.table(lake.SOURCE_QUARANTINE, s)
    if t is None:
        return []
    return [r for r in t.to_arrow().to_pylist() if r["source"] == source]


def ids(s: Settings, table: str) -> list[int]:
    t = lake.table(table, s)
    return [] if t is None else sorted(t.to_arrow()["id"].to_pylist())


def landed(s: Settings) -> dict[str, bytes]:
    fs = lake.filesystem(s)
    root = lake.strip_scheme(lake.landing_uri("flights", s))
    return {p[len(root) + 1 :]: fs.cat_file(p) for p in sorted(fs.glob(f"{root}/**/*.csv"))}


def one_unit(spec, s: Settings) -> dict:
    (unit,) = files.plan(spec, None, s)
    return unit


# ------------------------------------------------------- 3. year/month and duplicate headers

LAND_ROWS = [
    ("2013", "1", "good"),
    ("2013", "01", "good"),
    ("2013", "12", "good"),
    (" 2013", "1", "year ' 2013' is not a plain ASCII calendar year (1-9999)"),
    ("٢٠١٣", "1", "year '٢٠١٣' is not a plain ASCII calendar year (1-9999)"),
    ("99999999999", "1", "year '99999999999' is not a plain ASCII calendar year (1-9999)"),
    ("0", "1", "year '0' is not a plain ASCII calendar year (1-9999)"),
    ("", "1", "year is missing"),
    ("2013", "²", "month '²' is not a plain ASCII calendar month (1-12)"),
    ("2013", "1 ", "month '1 ' is not a plain ASCII calendar month (1-12)"),
    ("2013", "13", "month '13' is not a plain ASCII calendar month (1-12)"),
    ("2013", "0", "month '0' is not a plain ASCII calendar month (1-12)"),
    ("2013", "99999999999", "month '99999999999' is not a plain ASCII calendar month (1-12)"),
]


def test_land_quarantines_rows_whose_year_or_month_is_not_a_plain_ascii_calendar_value(tmp_path):
    drops = tmp_path / "drops"
    drops.mkdir()
    body = "year,month,day,flight\n" + "".join(
        f'"{y}","{m}",{i},{100 + i}\n' for i, (y, m, _) in enumerate(LAND_ROWS)
    )
    (drops / "flights-2013-01-01.csv.gz").write_bytes(gzip.compress(body.encode()))
    s = local(tmp_path)
    spec = drops_spec(s, f"{drops}/*.csv.gz")
    res = ingest.ingest(spec, s, commit_state=False)
    n_bad = sum(r != "good" for *_, r in LAND_ROWS)
    assert (res.rows_in, res.rows_loaded, res.rows_quarantined) == (len(LAND_ROWS), 3, n_bad)
    got = {json.loads(r["original"])["flight"]: r["reason"] for r in quarantined(s, spec.name)}
    want = {str(100 + i): r for i, (_, _, r) in enumerate(LAND_ROWS) if r != "good"}
    assert got == want
    out = landed(s)
    assert sorted(out) == ["year=2013/month=01/flights-2013-01-01.csv",
                           "year=2013/month=12/flights-2013-01-01.csv"]  # fmt: skip
    assert out["year=2013/month=01/flights-2013-01-01.csv"].count(b"\n") == 3  # header + 2
    # The manifest advanced: the next run plans nothing.
    assert res.state["files"][str(drops / "flights-2013-01-01.csv.gz")][0] > 0
    assert files.plan(spec, res.state, s) == []


def test_a_duplicate_csv_header_quarantines_the_file_whole_naming_the_column(tmp_path):
    drops = tmp_path / "drops"
    drops.mkdir()
    dup = b"year,month,day,flight,month\n2013,1,1,1,2\n2013,2,1,2,3\n"
    packed = gzip.compress(dup, mtime=0)  # once: gzip's header holds the second it ran
    (drops / "dup.csv.gz").write_bytes(packed)
    (drops / "ok.csv.gz").write_bytes(gzip.compress(b"year,month,day,flight\n2013,1,1,7\n"))
    s = local(tmp_path)
    spec = drops_spec(s, f"{drops}/*.csv.gz")
    res = ingest.ingest(spec, s, commit_state=False)
    assert (res.rows_in, res.rows_loaded, res.rows_quarantined) == (2, 1, 1)
    (bad,) = quarantined(s, spec.name)
    assert bad["reason"] == "unreadable csv file: duplicate column 'month' in the header"
    assert bad["original"] == packed and bad["unit"].startswith(f"{drops}/dup.csv.gz#")
    assert files.plan(spec, res.state, s) == []

    # A table sink: the duplicate column is not silently collapsed into one (last wins).
    (drops / "t.csv").write_bytes(b"id,name,value,id\n1,a,1.0,2\n")
    tspec = table_spec(s, f"{drops}/t.csv")
    tres = ingest.ingest(tspec, s)
    assert (tres.rows_in, tres.rows_loaded, tres.rows_quarantined) == (1, 0, 1)
    assert ids(s, "t") == []
    (tbad,) = quarantined(s, "t")
    assert tbad["reason"] == "unreadable csv file: duplicate column 'id' in the header"


def test_csv_header_with_a_bom_quotes_and_crlf_reads_every_column_as_text(tmp_path):
    """The header is parsed as CSV (quotes, BOM, CRLF), so every column is read as text and
    a padded year stays ' 2013' (quarantined) instead of becoming an integer column."""
    drops = tmp_path / "drops"
    drops.mkdir()
    body = '\ufeff"year","month",day,"flight"\r\n2013,1,1,1\r\n 2013,1,1,2\r\n2013,02,3,3\r\n'
    (drops / "bom.csv.gz").write_bytes(gzip.compress(body.encode()))
    s = local(tmp_path)
    res = ingest.ingest(drops_spec(s, f"{drops}/*.csv.gz"), s, commit_state=False)
    assert (res.rows_in, res.rows_loaded, res.rows_quarantined) == (3, 2, 1)
    assert sorted(landed(s)) == ["year=2013/month=01/bom.csv", "year=2013/month=02/bom.csv"]


# ------------------------------------------------------------------------ 4. nesting depth


def test_json_depth_scan_counts_structure_outside_strings():
    from riverlake.sources.base import deep_json_lines, json_depth

    assert json_depth(b"") == 0
    assert json_depth(b'{"a": 1}') == 1
    assert json_depth(b'[[{"a": [1]}]]') == 4
    assert json_depth(b'["[[[[", "}}}"]') == 1  # brackets in strings do not count
    assert json_depth(b'["\\"[[[[", 1]') == 1  # an escaped quote does not end a string
    assert json_depth(b'["x\\\\", [[1]]]') == 3  # an escaped backslash does not escape
    assert json_depth(b'["x\\\\\\"[[[", [1]]') == 2  # three backslashes: quote escaped
    assert json_depth(b"[\n[\n[\n]\n]\n]") == 3  # a document may span lines
    data = b'{"a": 1}\n' + b"[" * 65 + b"]" * 65 + b'\n["[[["]\r\n' + b"{" * 64 + b"\n"
    assert deep_json_lines(data, 64) == [1]
    assert deep_json_lines(data, 63) == [1, 3]
    # the scan is chunked: the same answer at every chunk boundary
    for chunk in (1, 2, 3, 5, 7, 64):
        assert deep_json_lines(data, 64, chunk_bytes=chunk) == [1]
        assert json_depth(b'["x\\\\\\"[[[", [1]]', chunk_bytes=chunk) == 2


def _jsonl_read_script(path: Path, lake_dir: Path) -> str:
    return f"""
import json
from riverlake.settings import get_settings
from riverlake.sources import files
from riverlake.sources.base import conform
from riverlake.sources.spec import parse_source
s = get_settings(lake_url={str(lake_dir)!r})
spec = parse_source({{"name": "js", "kind": "files", "url": {str(path)!r}, "format": "jsonl",
    "table": "js", "columns": ["id", "name", "value"],
    "schema": {{"id": "int64", "name": "string", "value": "float64"}}}}, s)
(unit,) = files.plan(spec, None, s)
out = files.read(spec, s, unit)
table, bad = (None, []) if out.table is None else conform(out.table, spec.arrow_schema(), "u")
print(json.dumps({{"rows_in": out.rows_in, "ids": [] if table is None else table["id"].to_pylist(),
                  "bad": [(b.reason, len(b.original)) for b in out.bad + bad]}}))
"""


def test_jsonl_line_nested_20000_deep_is_quarantined_instead_of_crashing_the_process(tmp_path):
    """In pyarrow's JSON reader such a line is a segfault (the whole flow-run process with
    thread workers); it runs in a child process here so the failure is visible, not fatal."""
    deep = b'{"id": 1, "name": "a", "value": 1, "x": ' + b"[" * 20000 + b"]" * 20000 + b"}"
    path = tmp_path / "deep.jsonl"
    path.write_bytes(deep + b'\n{"id": 2, "name": "b", "value": 2.5, "x": []}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVERLAKE_")}
    p = subprocess.run([sys.executable, "-c", _jsonl_read_script(path, tmp_path / "lake")],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)  # fmt: skip
    assert p.returncode == 0, f"rc={p.returncode}: {p.stderr[-500:]}"
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out == {"rows_in": 2, "ids": [2],
                   "bad": [["JSON nested deeper than 64 levels (line 1)", len(deep)]]}  # fmt: skip


def test_jsonl_line_nested_2000_deep_is_quarantined_and_the_rest_loads(tmp_path):
    drops = tmp_path / "drops"
    drops.mkdir()
    deep = b'{"id": 2, "name": ' + b"[" * 2000 + b"]" * 2000 + b', "value": 2}'
    ok64 = b'{"id": 3, "name": "c", "value": 3, "x": ' + b"[" * 63 + b"]" * 63 + b"}"
    (drops / "a.jsonl").write_bytes(b'{"id": 1, "name": "a", "value": 1.5}\n' + deep + b"\n"
                                    + ok64 + b"\n")  # fmt: skip
    s = local(tmp_path)
    spec = table_spec(s, f"{drops}/*.jsonl", "jsonl", "js")
    res = ingest.ingest(spec, s)
    assert (res.rows_in, res.rows_loaded, res.rows_quarantined) == (3, 2, 1)
    assert ids(s, "js") == [1, 3]
    (bad,) = quarantined(s, "js")
    assert bad["reason"] == "JSON nested deeper than 64 levels (line 2)"
    assert bad["original"] == deep
    assert ingest.ingest(spec, s).skipped  # the manifest advanced


def test_jsonl_first_line_null_is_quarantined_instead_of_crashing_the_process(tmp_path):
    """Found by tests/unit/test_sources_fuzz.py: pyarrow's JSON reader segfaults on a file
    whose first line is ``null``; lines that are not objects never reach it."""
    path = tmp_path / "null.jsonl"
    path.write_bytes(b'null\n{"id": 2, "name": "b", "value": 2.5}\n[1]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVERLAKE_")}
    p = subprocess.run([sys.executable, "-c", _jsonl_read_script(path, tmp_path / "lake")],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)  # fmt: skip
    assert p.returncode == 0, f"rc={p.returncode}: {p.stderr[-500:]}"
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out == {"rows_in": 3, "ids": [2], "bad": [["line 1 is not a JSON object", 4],
                                                      ["line 3 is not a JSON object", 3]]}  # fmt: skip


def test_jsonl_invalid_utf8_line_is_quarantined_and_the_rest_loads(tmp_path):
    """Found by the fuzz tests: pyarrow loads invalid UTF-8 in a JSON string as it is, and
    the typing of the rows then failed with an uncaught UnicodeDecodeError."""
    path = tmp_path / "a.jsonl"
    bad_line = b'{"id": 1, "name": "\xff\xfe", "value": 1}'
    path.write_bytes(bad_line + b'\n{"id": 2, "name": "b", "value": 2.5}\n')
    s = local(tmp_path)
    spec = table_spec(s, str(path), "jsonl", "js")
    res = ingest.ingest(spec, s)
    assert (res.rows_in, res.rows_loaded, res.rows_quarantined) == (2, 1, 1)
    assert ids(s, "js") == [2]
    (q,) = quarantined(s, "js")
    assert (q["reason"], q["original"]) == ("line 1 is not valid UTF-8", bad_line)


def test_max_json_depth_is_a_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("RIVERLAKE_MAX_JSON_DEPTH", "3")
    s = local(tmp_path)
    assert s.max_json_depth == 3
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"id": 1, "name": "a", "value": 1, "x": [[1]]}\n'
                     b'{"id": 2, "name": "b", "value": 2, "x": [[[1]]]}\n')  # fmt: skip
    spec = table_spec(s, str(path), "jsonl", "js")
    out = files.read(spec, s, one_unit(spec, s))
    assert out.table["id"].to_pylist() == [1]
    assert [b.reason for b in out.bad] == ["JSON nested deeper than 3 levels (line 2)"]


def test_depth_scan_of_100_mb_of_json_lines_is_fast():
    from riverlake.sources.base import deep_json_lines

    line = (b'{"id": 123456, "name": "a [string] with {brackets} and \\"quotes\\" \\\\", '
            b'"tags": ["x", "y", {"k": [1, 2, 3]}], "value": 1.25}\n')  # fmt: skip
    data = line * (100 * MiB // len(line)) + b"[" * 65 + b"]" * 65 + b"\n"
    t0 = time.perf_counter()
    deep = deep_json_lines(data, 64)
    took = time.perf_counter() - t0
    print(f"depth scan: {len(data) / MiB:.0f} MiB in {took:.2f} s")
    assert deep == [100 * MiB // len(line)]
    assert took < 15, f"the depth scan took {took:.1f} s for 100 MiB"


def test_http_page_nested_too_deep_is_a_malformed_page():
    s = get_settings()
    spec = parse_source({"name": "w", "kind": "http", "url": "http://x/w", "table": "w",
                         "schema": {"id": "int64"}}, s)  # fmt: skip
    for n in (2000, 200_000):
        body = b'{"data": [{"id": 1, "x": ' + b"[" * n + b"]" * n + b"}]}"
        with pytest.raises(http.MalformedPage, match=r"^JSON nested deeper than 64 levels$"):
            http.parse_page(spec, body)
    assert http.parse_page(spec, b'{"data": [{"id": 1}]}')[0] == [{"id": 1}]


# ------------------------------------------------------------ 6. a file rewritten mid-run


def _csv(ids_: range) -> bytes:
    return ("id,name,value\n" + "".join(f"{i},n{i},{i / 2}\n" for i in ids_)).encode()


def test_a_file_rewritten_between_plan_and_read_is_recorded_as_read(tmp_path):
    """The mapper (a Dask cluster in production) runs after plan(): the writer rewrites
    the file there, so read() sees bytes the plan never listed."""
    drops = tmp_path / "drops"
    drops.mkdir()
    f = drops / "a.csv"
    f.write_bytes(_csv(range(1, 2)))
    s = local(tmp_path)
    spec = table_spec(s, f"{drops}/*.csv")
    planned = one_unit(spec, s)

    def rewrite_then_read(fn: Callable, units: list) -> list:
        time.sleep(0.01)  # a later mtime, whatever the filesystem's resolution
        f.write_bytes(_csv(range(1, 3)))
        return ingest.thread_map(fn, units)

    first = ingest.ingest(spec, s, mapper=rewrite_then_read)
    assert first.rows_loaded == 2
    entry = lake.read_state("t", "t", s)["files"][str(f)]
    assert entry != [planned["size"], planned["tag"]]
    assert entry[0] == len(_csv(range(1, 3))) == f.stat().st_size
    second = ingest.ingest(spec, s)
    assert second.skipped and second.units == 0
    assert ids(s, "t") == [1, 2]  # every id exactly once (was 1, 1, 2, 2)


class Server:
    """A real HTTP server on a thread; ``handler(method, path) -> (status, headers, body)``."""

    def __init__(self, handler: Callable[[str, str], tuple[int, dict, bytes]]):
        outer = self
        self.requests: list[tuple[str, str]] = []

        class H(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                outer.requests.append((method, self.path))
                status, headers, body = handler(method, self.path)
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                if method == "GET":  # the client may stop reading: what a cap does
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        self.wfile.write(body)

            def do_GET(self):
                self._answer("GET")

            def do_HEAD(self):
                self._answer("HEAD")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _http_file_unit(url: str) -> dict:
    return {"path": url, "size": 0, "tag": "planned"}


def test_a_file_that_changes_during_the_read_is_read_again_and_recorded_as_read(tmp_path):
    versions = [_csv(range(1, 3)), _csv(range(1, 5))]
    gets = []

    def serve(method: str, path: str):
        body = versions[min(len(gets), 1)]
        if method == "GET":
            gets.append(path)  # the first GET sends version 1, later requests version 2
        return 200, {"ETag": f'"v{versions.index(body)}"'}, body

    s = local(tmp_path)
    with Server(serve) as srv:
        spec = table_spec(s, f"{srv.url}/a.csv")
        out = files.read(spec, s, _http_file_unit(f"{srv.url}/a.csv"))
    assert len(gets) == 2  # read twice: the file changed while the first read ran
    assert out.table["id"].to_pylist() == ["1", "2", "3", "4"]  # CSV columns are text
    state = files.next_state(spec, None, [_http_file_unit(f"{srv.url}/a.csv")], [out])
    assert state == {"files": {f"{srv.url}/a.csv": [len(versions[1]), "v1"]}}


def test_a_file_that_never_holds_still_fails_the_unit_in_one_line(tmp_path):
    n = []

    def serve(method: str, path: str):
        n.append(method)
        body = _csv(range(1, 2 + len(n)))
        return 200, {"ETag": f'"v{len(n)}"'}, body

    s = local(tmp_path)
    with Server(serve) as srv:
        spec = table_spec(s, f"{srv.url}/a.csv")
        with pytest.raises(SourceError) as e:
            files.read(spec, s, _http_file_unit(f"{srv.url}/a.csv"))
    assert str(e.value) == (
        f"source 't': {srv.url}/a.csv changed while it was read (3 tries); "
        "the next run plans it again"
    )


# ------------------------------------------------------------------------- 11. input caps


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """A real gzip bomb: 1 GiB of CSV (a header, then zeros) in about 4.5 MB."""
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    zeros = bytes(MiB)
    parts = [c.compress(b"year,month,day,flight\n")]
    parts += [c.compress(zeros) for _ in range(1024)]
    return b"".join([*parts, c.flush()])


def _peak_while(fn: Callable) -> tuple[object, int, int]:
    """fn's result, the peak of Python allocations and the growth of the process's peak RSS."""
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    try:
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    return result, peak, rss


def test_a_gzip_bomb_stops_at_max_file_bytes_with_bounded_memory(tmp_path, gzip_bomb):
    assert len(gzip_bomb) < 6 * MiB
    drops = tmp_path / "drops"
    drops.mkdir()
    (drops / "bomb.csv.gz").write_bytes(gzip_bomb)
    s = local(tmp_path, max_file_bytes=8 * MiB)
    spec = drops_spec(s, f"{drops}/*.csv.gz")
    t0 = time.perf_counter()
    out, peak, rss = _peak_while(lambda: files.read(spec, s, one_unit(spec, s)))
    took = time.perf_counter() - t0
    print(f"bomb: peak {peak / MiB:.1f} MiB traced, RSS +{rss / MiB:.0f} MiB, {took:.2f} s")
    assert (out.rows_in, out.rows_loaded) == (1, 0)
    (bad,) = out.bad
    assert bad.reason == f"decompressed size exceeds max_file_bytes={8 * MiB}"
    assert bad.original == gzip_bomb[: 1 * MiB]  # a bounded prefix of the file as it arrived
    assert peak < 40 * MiB and rss < 200 * MiB
    res = ingest.ingest(spec, s, commit_state=False)
    assert (res.rows_in, res.rows_quarantined) == (1, 1)
    assert files.plan(spec, res.state, s) == []  # the manifest advanced
    (q,) = quarantined(s, spec.name)
    assert len(q["original"]) == MiB


def test_a_zstd_bomb_stops_at_max_file_bytes(tmp_path):
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as z:
        z.write(b"id,name,value\n")
        for _ in range(256):
            z.write(bytes(MiB))
    bomb = sink.getvalue().to_pybytes()
    (tmp_path / "b.csv.zst").write_bytes(bomb)
    s = local(tmp_path, max_file_bytes=4 * MiB)
    spec = table_spec(s, f"{tmp_path}/b.csv.zst")
    out, peak, _ = _peak_while(lambda: files.read(spec, s, one_unit(spec, s)))
    assert [b.reason for b in out.bad] == [f"decompressed size exceeds max_file_bytes={4 * MiB}"]
    assert out.bad[0].original == bomb[:MiB] and out.rows_in == 1
    assert peak < 30 * MiB


def test_a_file_larger_than_max_file_bytes_is_quarantined_with_a_prefix(tmp_path):
    big = _csv(range(200_000))  # about 3.5 MB
    (tmp_path / "big.csv").write_bytes(big)
    (tmp_path / "small.csv").write_bytes(_csv(range(3)))
    s = local(tmp_path, max_file_bytes=2 * MiB)
    spec = table_spec(s, f"{tmp_path}/*.csv")
    res = ingest.ingest(spec, s)
    assert (res.rows_in, res.rows_loaded, res.rows_quarantined) == (4, 3, 1)
    (q,) = quarantined(s, "t")
    assert q["reason"] == f"file size exceeds max_file_bytes={2 * MiB}"
    assert q["original"] == big[:MiB]
    assert ingest.ingest(spec, s).skipped


def _weather_spec(s: Settings, url: str, **kw):
    return parse_source({"name": "w", "kind": "http", "url": url, "table": "w", "key": ["id"],
                         "cursor_field": "updated_at", "page_size": 3,
                         "schema": {"id": "int64", "updated_at": "string"}, **kw},
                        s)  # fmt: skip


def _page(ids_, nxt=None, pad: int = 0) -> bytes:
    recs = [{"id": i, "updated_at": f"t{i:03d}", "pad": "x" * pad} for i in ids_]
    return json.dumps({"data": recs, "next_cursor": nxt}).encode()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("nxt", "reason"),
    [
        ("c1", "next cursor 'c1' was already read: the API pages in a loop"),
        (float("nan"), "'next_cursor' is nan, not a finite number"),
        ({"a": 1}, "'next_cursor' is dict, not a string or number"),
    ],
)
def test_an_api_paging_in_a_loop_stops_with_the_page_quarantined(tmp_path, nxt, reason):
    """Every page names the same next cursor (or NaN, which never equals itself): paging
    stopped only at the test's timeout; now the page that loops is quarantined."""

    def serve(method: str, path: str):
        doc = {"data": [{"id": 1, "updated_at": "t001"}], "next_cursor": nxt}
        return 200, {}, json.dumps(doc).encode()

    s = local(tmp_path)
    with Server(serve) as srv:
        spec = _weather_spec(s, f"{srv.url}/w")
        res = ingest.ingest(spec, s)
        n = len(srv.requests)
    assert n <= 4  # the probe, then at most two pages
    assert res.rows_quarantined == 1
    assert res.rows_in == res.rows_loaded + 1 + res.rows_deduplicated  # c1: record 1 twice
    assert [q["reason"] for q in quarantined(s, "w")] == [reason]
    assert ids(s, "w") == [1]


def test_an_http_response_over_max_response_bytes_is_quarantined_and_paging_stops(tmp_path):
    big = _page(range(4, 7), "p3", pad=300_000)  # about 900 KB

    def serve(method: str, path: str):
        if "cursor=p2" in path:
            return 200, {"Content-Type": "application/json"}, big
        if "cursor=p3" in path:
            return 200, {}, _page(range(7, 9))
        return 200, {"Content-Type": "application/json"}, _page(range(1, 4), "p2")

    s = local(tmp_path, max_response_bytes=256 * 1024)
    with Server(serve) as srv:
        spec = _weather_spec(s, f"{srv.url}/w")
        res = ingest.ingest(spec, s)
    assert (res.rows_in, res.rows_loaded, res.rows_quarantined) == (4, 3, 1)
    assert ids(s, "w") == [1, 2, 3]
    (q,) = quarantined(s, "w")
    assert q["reason"] == f"response body exceeds max_response_bytes={256 * 1024}"
    assert q["original"] == big[: 256 * 1024]
    assert res.state == {"cursor": "t002"}  # below the last value read: resume there


def test_a_gzip_encoded_response_bomb_is_never_inflated_whole(tmp_path, gzip_bomb):
    def serve(method: str, path: str):
        return 200, {"Content-Encoding": "gzip", "Content-Type": "application/json"}, gzip_bomb

    s = local(tmp_path, max_response_bytes=2 * MiB)
    with Server(serve) as srv:
        spec = _weather_spec(s, f"{srv.url}/w")
        unit = {"name": spec.url, "params": {"limit": 3}, "pages": "all"}
        out, peak, _ = _peak_while(lambda: http.read(spec, s, unit))
    assert [b.reason for b in out.bad] == [f"response body exceeds max_response_bytes={2 * MiB}"]
    assert out.bad[0].original == (b"year,month,day,flight\n" + bytes(MiB))[:MiB]
    assert peak < 40 * MiB


def test_the_input_caps_are_settings_read_from_the_environment(monkeypatch):
    d = get_settings()
    assert (d.max_file_bytes, d.max_response_bytes, d.max_batch_bytes, d.max_json_depth) == (
        2 << 30, 64 * MiB, 64 * MiB, 64)  # fmt: skip
    for k, v in {"MAX_FILE_BYTES": "1000", "MAX_RESPONSE_BYTES": "2000",
                 "MAX_BATCH_BYTES": "3000", "MAX_JSON_DEPTH": "5"}.items():  # fmt: skip
        monkeypatch.setenv(f"RIVERLAKE_{k}", v)
    s = get_settings()
    assert (s.max_file_bytes, s.max_response_bytes, s.max_batch_bytes, s.max_json_depth) == (
        1000, 2000, 3000, 5)  # fmt: skip
    monkeypatch.setenv("RIVERLAKE_MAX_JSON_DEPTH", "0")
    with pytest.raises(ValueError, match="max_json_depth"):
        get_settings()


def test_a_record_with_an_integer_beyond_64_bits_is_quarantined_not_raised():
    """Found by the fuzzing of HTTP pages: 2**63 raised OverflowError out of the typing."""
    from riverlake.sources.base import records_to_table

    schema = pa.schema([("id", pa.int64()), ("value", pa.int64())])
    table, bad = records_to_table(
        [{"id": 1, "value": 2}, {"id": 2, "value": 2**63}], schema, "page#1"
    )
    assert table.to_pylist() == [{"id": 1, "value": 2}]
    assert [b.reason for b in bad] == ["Python int too large to convert to C long"]


@pytest.fixture(scope="module")
def layered_gzip_bomb() -> bytes:
    """``Content-Encoding: gzip, gzip``: 200 MiB of a JSON page's start (then zeros),
    gzipped twice into about 500 bytes."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MiB)
    parts = [c.compress(b'{"data": ["'), *(c.compress(zeros) for _ in range(200)), c.flush()]
    return gzip.compress(b"".join(parts), 9)


def test_a_response_bomb_in_several_content_codings_is_never_inflated_whole(
    tmp_path, layered_gzip_bomb
):
    """A list of codings went to httpx's own decoding, which has no limit: the 509 bytes
    here inflated to 200 MiB in memory before the cap applied."""
    assert len(layered_gzip_bomb) < 1024

    def serve(method: str, path: str):
        return 200, {"Content-Encoding": "gzip, gzip"}, layered_gzip_bomb

    s = local(tmp_path, max_response_bytes=MiB)
    with Server(serve) as srv:
        spec = _weather_spec(s, f"{srv.url}/w")
        unit = {"name": spec.url, "params": {"limit": 3}, "pages": "all"}
        out, peak, _ = _peak_while(lambda: http.read(spec, s, unit))
    print(f"layered bomb: peak {peak / MiB:.1f} MiB traced")
    assert [b.reason for b in out.bad] == [f"response body exceeds max_response_bytes={MiB}"]
    assert out.bad[0].original == (b'{"data": ["' + bytes(MiB))[:MiB]
    assert (out.rows_in, out.table.num_rows) == (1, 0)
    assert peak < 50 * MiB


@pytest.mark.parametrize(
    ("encoding", "reason"),
    [
        ("deflate, zstd", None),  # deflate applied first, then zstd: decoded in reverse
        ("x-gzip , identity,zstd", None),
        ("GZIP", None),
        ("gzip, br", "unsupported Content-Encoding 'br'"),
        ("compress", "unsupported Content-Encoding 'compress'"),
        ("zstd, deflate", "undecodable deflate body: "),  # the layers in the wrong order
    ],
)
def test_each_content_coding_of_a_list_is_decoded_in_reverse_or_the_page_quarantined(
    tmp_path, encoding, reason
):
    page = _page(range(1, 3))
    layers = {"deflate": zlib.compress, "gzip": gzip.compress, "x-gzip": gzip.compress,
              "zstd": lambda b: pa.compress(b, "zstd", asbytes=True),
              "identity": lambda b: b}  # fmt: skip
    body = page
    for coding in (c.strip().lower() for c in encoding.split(",")):
        body = layers.get(coding, zlib.compress)(body)
    if reason and reason.startswith("undecodable"):
        body = pa.compress(zlib.compress(page), "zstd", asbytes=True)

    def serve(method: str, path: str):
        return 200, {"Content-Encoding": encoding}, body

    s = local(tmp_path)
    with Server(serve) as srv:
        spec = _weather_spec(s, f"{srv.url}/w")
        out = http.read(spec, s, {"name": spec.url, "params": {"limit": 3}, "pages": "all"})
    if reason is None:
        assert out.bad == []
        assert out.table["id"].to_pylist() == [1, 2]
    else:
        (bad,) = out.bad
        assert bad.reason.startswith(reason) and "\n" not in bad.reason
        assert bad.original == body  # the page as it arrived
        assert out.table.num_rows == 0


@pytest.mark.parametrize(
    ("pagination", "failure", "failed_runs"),
    [("offset", "malformed", 1), ("page", "over the cap", 1), ("offset", "malformed", 2)],
)
def test_a_page_quarantined_among_parallel_pages_is_read_again_by_the_next_run(
    tmp_path, pagination, failure, failed_runs
):
    """An offset/page API read as one unit per page: the middle page fails (not JSON, or
    over max_response_bytes). The cursor took the highest value of the other pages, and
    the API (records after ``since``) never sent the middle page's records again."""
    records = [{"id": i, "updated_at": f"t{i:03d}"} for i in range(1, 10)]
    broken = [True]

    def serve(method: str, path: str):
        q = {k: v[0] for k, v in parse_qs(urlsplit(path).query).items()}
        after = [r for r in records if r["updated_at"] > q.get("since", "")]
        limit = int(q["limit"])
        first = int(q["offset"]) if pagination == "offset" else (int(q["page"]) - 1) * limit
        page = after[first : first + limit]
        if broken[0] and limit == 3 and first == 3:
            if failure == "malformed":
                return 200, {}, b"<html>502 Bad Gateway</html>"
            page = [{**r, "pad": "x" * 8192} for r in page]
        return 200, {}, json.dumps({"data": page, "total": len(after)}).encode()

    s = local(tmp_path, max_response_bytes=4096)
    with Server(serve) as srv:
        spec = _weather_spec(s, f"{srv.url}/w", pagination=pagination, total_path="total")
        for _ in range(failed_runs):
            res = ingest.ingest(spec, s)
            assert (res.units, res.rows_quarantined) == (3, 1)
            assert ids(s, "w") == [1, 2, 3, 7, 8, 9]
            assert res.state["cursor"] is None  # not past the page that failed
        broken[0] = False
        res = ingest.ingest(spec, s)
        assert not res.skipped and res.rows_quarantined == 0
        assert ids(s, "w") == list(range(1, 10))  # every record, exactly once
        assert res.state == {"cursor": "t009"}
        assert ingest.ingest(spec, s).skipped  # nothing after t009
    reasons = {q["reason"] for q in quarantined(s, "w")}
    assert reasons == {"not JSON: Expecting value: line 1 column 1 (char 0)"
                       if failure == "malformed"
                       else "response body exceeds max_response_bytes=4096"}  # fmt: skip
