"""HTTP JSON API connector: cursor, offset or page pagination; incremental by a cursor field.

Requests retry on 429, 5xx and connection errors with exponential backoff and jitter,
honouring ``Retry-After`` (seconds or an HTTP date). Refused credentials (401/403) and
other 4xx fail the run at once with one line naming the source. A page that is not
JSON, or has no record list, is quarantined with its original bytes; paging stops
there and the cursor advances only over the records before it.

Cursor pagination is sequential by nature (each page names the next), so it is one
unit; offset and page APIs that report a total are split into one unit per page and
read in parallel on the cluster.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from riverlake.settings import Settings
from riverlake.sources.base import Bad, SourceError, UnitOut, one_line, records_to_table
from riverlake.sources.spec import HttpSource

RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_WAIT_S = 60.0


class MalformedPage(ValueError):
    pass


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


def get(client: httpx.Client, spec: HttpSource, params: dict[str, Any]) -> httpx.Response:
    """GET with retries; returns a 2xx response or raises SourceError (one line)."""
    last = ""
    for attempt in range(spec.max_retries + 1):
        try:
            r = client.get(spec.url, params=params)
        except httpx.TransportError as e:
            last, wait = one_line(e) or type(e).__name__, backoff(spec, attempt)
        else:
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
                raise SourceError(f"source {spec.name!r}: {spec.url} answered HTTP {r.status_code}")
            else:
                return r
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


def parse_page(spec: HttpSource, body: bytes) -> tuple[list[dict], Any]:
    """The records of a page and the page document; MalformedPage when it is neither."""
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MalformedPage(f"not JSON: {one_line(e)}") from e
    records = _path(doc, spec.records_path)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise MalformedPage(f"{spec.records_path!r} is not a list of objects")
    return records, doc


def _client(spec: HttpSource) -> httpx.Client:
    headers = dict(spec.headers)
    token = os.environ.get(spec.token_env) if spec.token_env else None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(headers=headers, timeout=spec.timeout_s, follow_redirects=True)


def _base_params(spec: HttpSource, state: dict | None) -> dict[str, Any]:
    params: dict[str, Any] = {spec.limit_param: spec.page_size}
    since = (state or {}).get("cursor")
    if spec.cursor_field and since is not None:
        params[spec.since_param] = since
    return params


def plan(spec: HttpSource, state: dict | None, settings: Settings) -> list[dict[str, Any]]:
    params = _base_params(spec, state)
    if spec.pagination == "cursor" or spec.total_path is None:
        with _client(spec) as c:  # reachability and credentials, before anything is read
            get(c, spec, {**params, spec.limit_param: 1})
        return [{"name": spec.url, "params": params, "pages": "all"}]
    with _client(spec) as c:  # one record is enough to learn the total
        first = get(c, spec, {**params, **_page(spec, 0), spec.limit_param: 1})
    try:
        total = int(_path(json.loads(first.content), spec.total_path))
    except (MalformedPage, ValueError, TypeError) as e:
        raise SourceError(f"source {spec.name!r}: no total at {spec.total_path!r}") from e
    n = max(1, -(-total // spec.page_size))
    return [{"name": f"{spec.url}#page{i}", "params": params, "pages": i} for i in range(n)]


def _page(spec: HttpSource, i: int) -> dict[str, Any]:
    if spec.pagination == "offset":
        return {spec.offset_param: i * spec.page_size}
    return {spec.page_param: i + 1}


def read(spec: HttpSource, settings: Settings, unit: dict[str, Any]) -> UnitOut:
    records: list[dict] = []
    bad: list[Bad] = []
    with _client(spec) as c:
        params = dict(unit["params"])
        one_page = unit["pages"] != "all"  # a unit of an offset/page API with a total
        i = unit["pages"] if one_page else 0
        while True:
            r = get(
                c, spec, params if spec.pagination == "cursor" else {**params, **_page(spec, i)}
            )
            try:
                page, doc = parse_page(spec, r.content)
            except MalformedPage as e:
                bad.append(Bad(f"{spec.url}?{r.request.url.query.decode()}", str(e), r.content))
                break
            records.extend(page)
            if one_page or not page:
                break
            if spec.pagination == "cursor":
                nxt = doc.get(spec.next_cursor_path)
                if not nxt:
                    break
                params[spec.cursor_param] = nxt
            elif len(page) < spec.page_size:
                break
            i += 1
    rows_in = len(records) + len(bad)
    table, rejects = records_to_table(records, spec.arrow_schema(), unit["name"])
    out = UnitOut(table=table, bad=bad + rejects, rows_in=rows_in)
    if spec.cursor_field and records:
        values = [r.get(spec.cursor_field) for r in records if r.get(spec.cursor_field) is not None]
        if bad and values:
            # Paging stopped early: records sharing the last cursor value may be on the
            # pages not read, so the cursor stays below that value (the merge on the key
            # makes reading those records again harmless).
            values = [v for v in values if v < max(values)]
        out.state = max(values) if values else None
    return out


def next_state(spec: HttpSource, state, units, outs) -> dict[str, Any]:
    values = [o.state for o in outs if o.state is not None]
    old = (state or {}).get("cursor")
    if old is not None:
        values.append(old)
    return {"cursor": max(values) if values else None}
