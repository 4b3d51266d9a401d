"""The demo weather API answers every pagination style with the records a plain filter
and sort of them gives (its index is an optimisation, not a different answer)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn

from riverlake.demo import api

SINCE = "2013-06-30T23:00:00Z"


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return sorted(api.weather_records(), key=lambda r: (r["updated_at"], r["id"]))


@contextmanager
def serving() -> Iterator[httpx.Client]:
    """A new demo API served by uvicorn on a socket of its own, and a client of it."""
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(api.create_api(), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}",
                          timeout=30) as client:  # fmt: skip
            for _ in range(200):
                if server.started:
                    break
                threading.Event().wait(0.05)
            yield client
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _after(rows: list[dict], since: str | None) -> list[dict]:
    return [r for r in rows if since is None or r["updated_at"] > since]


def _cursor_pages(client: httpx.Client, since: str | None, limit: int) -> tuple[list[dict], int]:
    out, cursor, pages = [], None, 0
    while True:
        params = {"limit": limit, **({"since": since} if since else {}),
                  **({"cursor": cursor} if cursor else {})}  # fmt: skip
        body = client.get("/weather", params=params).json()
        out += body["data"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return out, pages


@pytest.mark.parametrize("since", [None, SINCE])
def test_every_pagination_style_gives_the_records_in_order(records, since):
    with serving() as client:
        _every_style(client, records, since)


def _every_style(client: httpx.Client, records: list[dict], since: str | None) -> None:
    want = _after(records, since)
    got, pages = _cursor_pages(client, since, 2000)
    assert got == want and pages == -(-len(want) // 2000) > 1
    extra = {"since": since} if since else {}
    offset = [client.get("/weather/offset", params={"limit": 5000, "offset": o, **extra}).json()
              for o in range(0, len(want) + 5000, 5000)]  # fmt: skip
    assert [r for b in offset for r in b["data"]] == want
    assert {b["total"] for b in offset} == {len(want)}
    numbered = [client.get("/weather/pages", params={"limit": 7000, "page": n, **extra}).json()
                for n in range(1, len(want) // 7000 + 2)]  # fmt: skip
    assert [r for b in numbered for r in b["data"]] == want
    assert client.get("/weather", params={"limit": 0}).status_code == 422
    raw = client.get("/weather", params={"limit": 3}).content
    assert json.loads(raw)["data"] == records[:3]  # valid JSON, nulls as null
    assert any(v is None for r in records for v in r.values())


def test_a_touched_record_moves_to_the_end_and_a_cursor_past_it_is_empty(records):
    with serving() as client:
        _touch(client, records)


def _touch(client: httpx.Client, records: list[dict]) -> None:
    first = records[0]["id"]
    touched = client.post(f"/weather/{first}/touch").json()
    assert touched["temp"] == (records[0]["temp"] or 0) + 1.0
    got, _ = _cursor_pages(client, None, 5000)
    assert [r["id"] for r in got] == [r["id"] for r in records[1:]] + [first]
    assert got[-1] == touched
    newer = client.get("/weather", params={"since": records[-1]["updated_at"]}).json()
    assert newer == {"data": [touched], "next_cursor": None}
