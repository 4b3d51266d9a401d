"""The demo weather API (FastAPI): cursor and offset pagination over the hourly weather;
a record is "updated" one hour after its observation."""

from __future__ import annotations

import base64
import bisect
import json
import math
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from riverlake.demo import data as demo_data

WEATHER_UPDATED = timedelta(hours=1)


def weather_records() -> list[dict[str, Any]]:
    w = demo_data.load("weather").copy()
    observed = pd.to_datetime(w["time_hour"].astype(str), utc=True)
    w["updated_at"] = (observed + WEATHER_UPDATED).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    w.insert(0, "id", range(1, len(w) + 1))
    out = []
    for rec in w.astype(object).to_dict("records"):
        out.append(demo_data.record(rec))
    return out


def _json(record: dict[str, Any]) -> str:
    """One record as the JSON FastAPI would send (compact, no NaN)."""
    return json.dumps(record, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


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
    by_id = {r["id"]: r for r in weather_records()}
    lock = threading.Lock()
    calls = {"n": 0, "faults": 0}
    # The records in (updated_at, id) order, their sort keys and each one's JSON, kept
    # as the records change: a page is a bisect and a join, not a sort and an encode.
    index: dict[str, list] = {}  # keys: (updated_at, id); json: each record's text

    def reindex() -> None:
        ordered = sorted(by_id.values(), key=lambda r: (r["updated_at"], r["id"]))
        index.update(keys=[(r["updated_at"], r["id"]) for r in ordered],
                     json=[_json(r) for r in ordered])  # fmt: skip

    reindex()

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

    def current(since: str | None, after: tuple[str, int] | None = None):
        """The records updated after ``since`` and sorting after ``after``: their keys
        and their JSON texts, in order."""
        with lock:
            keys, encoded = index["keys"], index["json"]
        start = 0 if since is None else bisect.bisect_right(keys, (since, math.inf))
        if after is not None:
            start = max(start, bisect.bisect_right(keys, after))
        return keys[start:], encoded[start:]

    def respond(rows: list[str], **extra: Any) -> Response:
        """``{"data": [rows...], **extra}`` as compact JSON."""
        fields = "".join(f",{json.dumps(k)}:{json.dumps(v)}" for k, v in extra.items())
        return Response(f'{{"data":[{",".join(rows)}]{fields}}}', media_type="application/json")

    @app.get("/health")
    def health() -> dict:
        return {"ok": True, "records": len(by_id)}

    @app.get("/weather")
    def weather(request: Request, limit: int = Query(500, ge=1), cursor: str | None = None,
                since: str | None = None):  # fmt: skip
        if (r := guard(request)) is not None:
            return r
        keys, rows = current(since, _decode(cursor) if cursor else None)
        nxt = _encode(*keys[limit - 1]) if len(rows) > limit else None
        return respond(rows[:limit], next_cursor=nxt)

    @app.get("/weather/offset")
    def weather_offset(request: Request, limit: int = Query(500, ge=1), offset: int = 0,
                       since: str | None = None):  # fmt: skip
        if (r := guard(request)) is not None:
            return r
        rows = current(since)[1]
        return respond(rows[offset : offset + limit], total=len(rows))

    @app.get("/weather/pages")
    def weather_pages(request: Request, limit: int = Query(500, ge=1), page: int = 1,
                      since: str | None = None):  # fmt: skip
        if (r := guard(request)) is not None:
            return r
        rows = current(since)[1]
        return respond(rows[(page - 1) * limit : page * limit], total=len(rows))

    @app.post("/weather/{rid}/touch")
    def touch(rid: int, request: Request) -> dict:
        if token and request.headers.get("authorization") != f"Bearer {token}":
            raise HTTPException(401, "bad or missing bearer token")
        with lock:
            rec = dict(by_id[rid])
            rec["temp"] = (rec["temp"] or 0) + 1.0
            rec["updated_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            by_id[rid] = rec
            reindex()
        return rec

    return app


def serve_api(port: int, host: str = "127.0.0.1", **kwargs: Any) -> None:
    import uvicorn

    uvicorn.run(create_api(**kwargs), host=host, port=port, log_level="warning")
