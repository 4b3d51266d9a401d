"""HTTP JSON API connector: cursor, offset or page pagination; incremental by a cursor field.

Requests retry on 429, 5xx and connection errors with exponential backoff and jitter,
honouring ``Retry-After`` (seconds or an HTTP date). Refused credentials (401/403) and
other 4xx fail the run at once with one line naming the source. A page that is not
JSON, has no record list, is nested deeper than ``max_json_depth``, names a next cursor
that is not a string or a number or that was already read (an API paging in a loop),
or whose body exceeds ``max_response_bytes`` (Settings) is quarantined with its
original bytes (over the cap: its first ``max_response_bytes``, at most
:data:`~riverlake.sources.base.ORIGINAL_PREFIX_BYTES`); paging stops there and the
cursor advances only over the records before it.

Bodies are streamed and decoded by this module in bounded steps (each coding that
``Content-Encoding`` lists, in reverse: gzip, deflate, zstd, identity), so a response is
never held beyond the cap, and a compressed one, however many layers, is never inflated
past it; a coding it does not know quarantines the page.

Cursor pagination is sequential by nature (each page names the next), so it is one
unit; offset and page APIs that report a total are split into one unit per page and
read in parallel on the cluster.
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import random
import ssl
import threading
import time
import zlib
from datetime import UTC, datetime
from typing import Any, NamedTuple

import httpx
import pyarrow as pa

from riverlake.settings import Settings
from riverlake.sources.base import (
    ORIGINAL_PREFIX_BYTES,
    Bad,
    SourceError,
    UnitOut,
    deeper_than,
    json_too_deep_reason,
    one_line,
    read_capped,
    records_to_table,
)
from riverlake.sources.spec import HttpSource

RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_WAIT_S = 60.0
#: Most units (pages) an offset/page API's reported total may plan.
MAX_PAGES = 100_000
_ZLIB_AUTO = 32 + zlib.MAX_WBITS  # a gzip or zlib header, whichever the body has
_STEP = 64 * 1024  # most bytes one read of a body, or of one of its layers, returns


class MalformedPage(ValueError):
    pass


class BadPage(Bad):
    """A page that could not be read (over the cap, undecodable, malformed, looping), as
    opposed to a record of a page read that does not fit the schema: its records are
    unread, so the cursor must not pass them (see :func:`next_state`)."""


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def backoff(spec: HttpSource, attempt: int) -> float:
    return spec.backoff_s * 2**attempt * (1 + 0.2 * random.random())


class Fetched(NamedTuple):
    """One 2xx response, its body read under the cap."""

    response: httpx.Response  # closed: status, headers and request remain
    body: bytes  # decoded, at most the cap (over it: its first bytes; undecodable: raw)
    problem: str | None  # why the body cannot be used (over the cap, undecodable)


class _Undecodable(ValueError):
    """A body whose content codings cannot be undone: the page is quarantined."""


class _Raw:
    """The bytes of a response as they arrived, ``read(n)`` at a time, up to ``cap``:
    past it ``over`` is set and the stream ends. Its first bytes are kept (``prefix``)."""

    closed = False

    def __init__(self, chunks, cap: int) -> None:
        self._chunks, self._buf, self._cap, self._n = iter(chunks), b"", cap, 0
        self.over, self.prefix = False, bytearray()

    def read(self, n: int = -1) -> bytes:
        while not self._buf:
            chunk = None if self.over else next(self._chunks, None)
            if chunk is None:
                return b""
            self._n += len(chunk)
            self.over = self._n > self._cap
            self._buf = chunk
        n = len(self._buf) if n is None or n < 0 else n
        out, self._buf = self._buf[:n], self._buf[n:]
        if len(self.prefix) < min(self._cap, ORIGINAL_PREFIX_BYTES):
            self.prefix += out[: min(self._cap, ORIGINAL_PREFIX_BYTES) - len(self.prefix)]
        return out

    def close(self) -> None:
        pass


class _Inflate(_Raw):
    """One gzip or deflate layer, never more than ``n`` bytes of output per read."""

    def __init__(self, src, coding: str) -> None:
        self._src, self._coding, self._pending = src, coding, b""
        self._d = zlib.decompressobj(_ZLIB_AUTO)

    def read(self, n: int = -1) -> bytes:
        n = _STEP if n is None or n < 0 else n
        while True:
            data = self._pending or self._src.read(_STEP)
            try:  # max_length: a bomb is never inflated whole
                out = self._d.decompress(data, n)
            except zlib.error as e:
                raise _Undecodable(f"undecodable {self._coding} body: {one_line(e)}") from e
            if self._d.eof:  # concatenated gzip members
                self._pending, self._d = self._d.unused_data, zlib.decompressobj(_ZLIB_AUTO)
            else:
                self._pending = self._d.unconsumed_tail
            if out or not data:
                return out


class _Zstd(_Raw):
    """One zstd layer (pyarrow's stream: bounded output per read)."""

    def __init__(self, src) -> None:
        self._z = pa.CompressedInputStream(pa.PythonFile(src, mode="r"), "zstd")

    def read(self, n: int = -1) -> bytes:
        try:
            return self._z.read(_STEP if n is None or n < 0 else n)
        except (OSError, pa.ArrowException) as e:
            raise _Undecodable(f"undecodable zstd body: {one_line(e)}") from e


#: The content codings this module undoes, each by a layer with bounded output.
_DECODERS = {
    "gzip": lambda src: _Inflate(src, "gzip"),
    "x-gzip": lambda src: _Inflate(src, "x-gzip"),
    "deflate": lambda src: _Inflate(src, "deflate"),
    "zstd": _Zstd,
    "identity": lambda src: src,
}


def _body(r: httpx.Response, cap: int) -> tuple[bytes, str | None]:
    """The decoded body, read in a stream that stops past ``cap`` bytes.

    ``Content-Encoding`` lists the codings in the order they were applied, so they are
    undone in reverse, each by a layer that returns at most what the next read asks for:
    no layer ever holds more than the cap, and httpx's own decoding (no limit) is never
    used. A body over the cap on the wire is over it too. An unknown coding, or a layer
    that does not decode, is a problem: the page is quarantined with its first bytes as
    they arrived.
    """
    over = f"response body exceeds max_response_bytes={cap}"
    codings = [c.strip().lower() for c in r.headers.get("Content-Encoding", "").split(",")]
    codings = [c for c in codings if c]
    raw = _Raw(r.iter_raw(), cap)
    if unknown := [c for c in codings if c not in _DECODERS]:
        read_capped(raw, cap, _STEP)
        return bytes(raw.prefix), f"unsupported Content-Encoding {unknown[0][:40]!r}"
    src: Any = raw
    for coding in reversed(codings):
        src = _DECODERS[coding](src)
    try:
        out = bytes(read_capped(src, cap, _STEP)[0])
    except _Undecodable as e:
        return bytes(raw.prefix), (over if raw.over else one_line(e))
    return (out[:cap], over) if raw.over or len(out) > cap else (out, None)


def get(client: httpx.Client, spec: HttpSource, params: dict[str, Any], max_bytes: int) -> Fetched:
    """GET with retries; returns a 2xx response with its body read up to ``max_bytes``,
    or raises SourceError (one line)."""
    last = ""
    for attempt in range(spec.max_retries + 1):
        try:
            with client.stream("GET", spec.url, params=params) as r:
                if r.status_code in (401, 403):
                    raise SourceError(
                        f"source {spec.name!r}: {spec.url} refused the credentials "
                        f"(HTTP {r.status_code})"
                    )
                if r.status_code in RETRY_STATUS:
                    last = f"HTTP {r.status_code}"
                    wait = retry_after(r.headers.get("Retry-After"))
                    wait = backoff(spec, attempt) if wait is None else wait
                elif r.status_code >= 400:
                    raise SourceError(
                        f"source {spec.name!r}: {spec.url} answered HTTP {r.status_code}"
                    )
                else:
                    return Fetched(r, *_body(r, max_bytes))
        except httpx.TransportError as e:
            last, wait = one_line(e) or type(e).__name__, backoff(spec, attempt)
        if attempt == spec.max_retries:
            break
        time.sleep(min(wait, MAX_WAIT_S))
    raise SourceError(
        f"source {spec.name!r}: {spec.url} unreachable after {spec.max_retries} retries ({last})"
    )


def _path(doc: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(doc, dict) or part not in doc:
            raise MalformedPage(f"no {dotted!r} in the page")
        doc = doc[part]
    return doc


def load_json(body: bytes, max_depth: int | None = None) -> Any:
    """A JSON document; MalformedPage when it is not JSON or nests deeper than
    ``max_depth`` (``max_json_depth``'s default when None), checked on the bytes first."""
    limit = Settings.model_fields["max_json_depth"].default if max_depth is None else max_depth
    if deeper_than(body, limit):
        raise MalformedPage(json_too_deep_reason(limit))
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:  # decoding, UTF-8, digits of an int
        raise MalformedPage(f"not JSON: {one_line(e)}") from e


def parse_page(
    spec: HttpSource, body: bytes, max_depth: int | None = None
) -> tuple[list[dict], Any]:
    """The records of a page and the page document; MalformedPage when it is neither."""
    doc = load_json(body, max_depth)
    records = _path(doc, spec.records_path)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise MalformedPage(f"{spec.records_path!r} is not a list of objects")
    return records, doc


_TLS = threading.local()


def _tls(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    """The TLS context httpx makes for its default ``verify=True`` (certifi's, or
    SSL_CERT_FILE's, or SSL_CERT_DIR's), made once per thread and certificate setting:
    loading the certificates takes 12 ms, and a run makes a client per plan and unit.
    Per thread, as httpcore sets each new connection's protocols on its context."""
    made = _TLS.__dict__.setdefault("contexts", {})
    key = (cert_file, cert_dir)
    if key not in made:
        made[key] = httpx.create_ssl_context()
    return made[key]


def _client(spec: HttpSource) -> httpx.Client:
    headers = dict(spec.headers)
    if not any(k.lower() == "accept-encoding" for k in headers):
        headers["Accept-Encoding"] = "gzip, deflate"  # the encodings _body decodes in steps
    token = os.environ.get(spec.token_env) if spec.token_env else None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    tls = _tls(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    return httpx.Client(headers=headers, timeout=spec.timeout_s, follow_redirects=True,
                        verify=tls)  # fmt: skip


def _base_params(spec: HttpSource, state: dict | None) -> dict[str, Any]:
    params: dict[str, Any] = {spec.limit_param: spec.page_size}
    since = (state or {}).get("cursor")
    if spec.cursor_field and since is not None:
        params[spec.since_param] = since
    return params


def plan(spec: HttpSource, state: dict | None, settings: Settings) -> list[dict[str, Any]]:
    params = _base_params(spec, state)
    cap = settings.max_response_bytes
    if spec.pagination == "cursor" or spec.total_path is None:
        with _client(spec) as c:  # reachability and credentials, before anything is read
            probe = get(c, spec, {**params, spec.limit_param: 1}, cap)
        if spec.cursor_field and params.get(spec.since_param) is not None and not probe.problem:
            # Nothing after the cursor: nothing new (a page that is not one is read,
            # and quarantined, by the run).
            try:
                nothing_new = not parse_page(spec, probe.body, settings.max_json_depth)[0]
            except MalformedPage:
                nothing_new = False
            if nothing_new:
                return []
        return [{"name": spec.url, "params": params, "pages": "all"}]
    with _client(spec) as c:  # one record is enough to learn the total
        first = get(c, spec, {**params, **_page(spec, 0), spec.limit_param: 1}, cap)
    try:
        if first.problem:
            raise MalformedPage(first.problem)
        total = int(_path(load_json(first.body, settings.max_json_depth), spec.total_path))
    except (MalformedPage, ValueError, TypeError, OverflowError) as e:
        raise SourceError(
            f"source {spec.name!r}: no total at {spec.total_path!r} ({one_line(e)})"
        ) from e
    n = max(1, -(-total // spec.page_size))
    if n > MAX_PAGES:
        raise SourceError(
            f"source {spec.name!r}: a total of {total} records is more than {MAX_PAGES} "
            f"pages of {spec.page_size}"
        )
    return [{"name": f"{spec.url}#page{i}", "params": params, "pages": i} for i in range(n)]


def _page(spec: HttpSource, i: int) -> dict[str, Any]:
    if spec.pagination == "offset":
        return {spec.offset_param: i * spec.page_size}
    return {spec.page_param: i + 1}


def _next_cursor(spec: HttpSource, doc: dict, seen: set) -> tuple[Any, str | None]:
    """The page's next cursor (None at the end), or why it cannot be followed."""
    nxt = doc.get(spec.next_cursor_path)
    if nxt is None or nxt == "" or nxt is False:
        return None, None
    if isinstance(nxt, bool) or not isinstance(nxt, str | int | float):
        return None, f"{spec.next_cursor_path!r} is {type(nxt).__name__}, not a string or number"
    if isinstance(nxt, float) and not math.isfinite(nxt):  # NaN is never seen twice
        return None, f"{spec.next_cursor_path!r} is {nxt}, not a finite number"
    if nxt in seen:
        return None, f"next cursor {str(nxt)[:40]!r} was already read: the API pages in a loop"
    return nxt, None


def _comparable(values: list, like: Any = None) -> list:
    """The cursor values of one kind (strings, or finite numbers), so they have a max:
    the kind of ``like`` (the committed cursor), else the more common kind."""
    strs = [v for v in values if isinstance(v, str)]
    nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)
            and math.isfinite(v)]  # fmt: skip
    if isinstance(like, str):
        return strs
    if like is not None:
        return nums
    return strs if len(strs) >= len(nums) else nums


def read(spec: HttpSource, settings: Settings, unit: dict[str, Any]) -> UnitOut:
    records: list[dict] = []
    bad: list[Bad] = []
    cap, depth = settings.max_response_bytes, settings.max_json_depth
    with _client(spec) as c:
        params = dict(unit["params"])
        one_page = unit["pages"] != "all"  # a unit of an offset/page API with a total
        i = unit["pages"] if one_page else 0
        seen = {params.get(spec.cursor_param)}
        while True:
            f = get(
                c,
                spec,
                params if spec.pagination == "cursor" else {**params, **_page(spec, i)},
                cap,
            )
            where = f"{spec.url}?{f.response.request.url.query.decode()}"
            if f.problem:
                bad.append(BadPage(where, f.problem, f.body[:ORIGINAL_PREFIX_BYTES]))
                break
            try:
                page, doc = parse_page(spec, f.body, depth)
            except MalformedPage as e:
                bad.append(BadPage(where, str(e), f.body))
                break
            records.extend(page)
            if one_page or not page:
                break
            if spec.pagination == "cursor":
                nxt, problem = _next_cursor(spec, doc, seen)
                if problem:
                    bad.append(BadPage(where, problem, f.body))
                if nxt is None:
                    break
                seen.add(nxt)
                params[spec.cursor_param] = nxt
            elif len(page) < spec.page_size:
                break
            i += 1
    rows_in = len(records) + len(bad)
    table, rejects = records_to_table(records, spec.arrow_schema(), unit["name"])
    out = UnitOut(table=table, bad=bad + rejects, rows_in=rows_in)
    if spec.cursor_field and records:
        values = _comparable([r.get(spec.cursor_field) for r in records], unit["params"].get(
            spec.since_param))  # fmt: skip
        if bad and values:
            # Paging stopped early: records sharing the last cursor value may be on the
            # pages not read, so the cursor stays below that value (the merge on the key
            # makes reading those records again harmless).
            values = [v for v in values if v < max(values)]
        out.state = max(values) if values else None
    return out


def next_state(spec: HttpSource, state, units, outs) -> dict[str, Any]:
    """The cursor after this run: the highest cursor value read, never below the old one.

    A page that could not be read (:class:`BadPage`) holds the cursor back, so the next
    run asks for its records again. One unit read page after page (cursor pagination)
    stops there, and its state is already below the records it did not read. Several
    units (an offset/page API, one unit per page) are read side by side, so the other
    pages' values say nothing of the failed one's: the cursor keeps its old value, and
    the next run reads the good pages again too, which is harmless for a source with a
    key (their records merge on it; without a key they are appended twice: a duplicate
    beats a loss). A run that failed a page without moving the cursor counts itself in
    ``rereads``: the next run's plan would otherwise repeat this batch exactly and be
    skipped as already committed, leaving the page unread for ever.
    """
    old = (state or {}).get("cursor")
    failed = any(isinstance(b, BadPage) for o in outs for b in o.bad)
    values = [] if failed and len(outs) > 1 else [o.state for o in outs if o.state is not None]
    values = _comparable(values, old)
    if old is not None:
        values.append(old)
    cursor = max(values) if values else None
    if failed and cursor == old:
        return {"cursor": old, "rereads": (state or {}).get("rereads", 0) + 1}
    return {"cursor": cursor}
