"""App performance on the 6-million-row benchmark lake, measured in Chromium (Playwright)
against `riverlake serve`: what a person at the dashboard waits for.

* cold first render: a new server process each time (3 times); once it listens (its
  port open; no request has reached the app), a page opens the flights dashboard; the
  figure is the browser's own clock from navigation start until every plot has drawn
  (BokehJS's document idle, the four plots' canvases present). Target: 2 s or less.
  Also reported: a warm first render (5 fresh pages on a server that has served one).
* filter repaint: on one page, 50 filter changes (carriers, origins, day range, seeded)
  made the way the widgets make them: the widget's BokehJS model takes a new value,
  which travels over the session's websocket to the server; the figure runs from that
  moment until the browser has painted after the last update the server sent back (two
  animation frames after the last document change; a change ends when nothing more
  arrives for 300 ms). p50 and p95. Target: p95 300 ms or less.
* load: 20 sessions at once for 2 minutes against `riverlake serve --num-procs 2`, each
  a real websocket session speaking Bokeh's protocol as BokehJS does (the page asked
  for, its signed token, the document pulled, ready said, filter values sent as
  PATCH-DOC), without rendering: 20 Chromium pages would render on the server's own 2
  cores. Each changes a filter, waits for the server's updates (until nothing more
  comes for 300 ms), thinks 1 to 3 s (seeded), again and again. Errors (a session that
  fails, a server error, a change with no answer in 15 s) and the update p95. Target:
  no errors, p95 1 s or less.

Everything shares the machine's cores: the server processes, Chromium and its page, the
sessions.
Needs the lake benchmarks/transform.py leaves in benchmarks/data/bench-lake (built if
missing). Writes benchmarks/results/apps.json; the result goes to stdout, the step being
run to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import record  # noqa: E402
from benchmarks.etl import DATA  # noqa: E402

LAKE = DATA / "bench-lake"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
        "--disable-component-update", "--disable-sync", "--disable-quic"]  # fmt: skip
VIEWPORT = {"width": 1400, "height": 1500}
COLD_REPEATS = 3
CHANGES = 50
LOAD_SESSIONS = int(os.environ.get("BENCH_SESSIONS", "20"))
LOAD_SECONDS = int(os.environ.get("BENCH_LOAD_SECONDS", "120"))
PROCS = int(os.environ.get("BENCH_PROCS", "2"))  # `riverlake serve --num-procs`
PLOTS = 4  # the dashboard's plots (time series, carriers, hours, weather)
TARGETS = {"cold_first_render_s": 2.0, "filter_repaint_p95_s": 0.3, "load_p95_s": 1.0}

#: True when every plot has drawn: BokehJS's document is idle (every view rendered) and
#: the plots' canvases are there (Panel renders into shadow roots: searched through).
#: Returns the page's clock (ms since navigation start) at that frame.
DRAWN = """(plots) => {
  const docs = window.Bokeh && window.Bokeh.documents;
  if (!docs || !docs.length || !docs[0].is_idle) return false;
  const count = (root) => {
    let n = root.querySelectorAll('canvas').length;
    for (const el of root.querySelectorAll('*')) if (el.shadowRoot) n += count(el.shadowRoot);
    return n;
  };
  return count(document) >= plots ? performance.now() : false;
}"""

#: Where a first render's time went (s from navigation start): the HTML's first byte (the
#: server has built the session), the page's scripts run (DOMContentLoaded), the
#: session's websocket open.
PHASES = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const ws = performance.getEntriesByType('resource').find((r) => r.name.includes('/ws'));
  return {html_first_byte: nav.responseStart / 1000,
          scripts_run: nav.domContentLoadedEventEnd / 1000,
          websocket: ws ? ws.startTime / 1000 : null};
}"""

#: One filter change as the widget makes it, timed to the repaint after the server's
#: last update (ms; null when nothing came back within 15 s).
CHANGE = """async ({title, value}) => {
  const doc = window.Bokeh.documents[0];
  const widget = [...doc.all_models].find((m) => m.title === title && 'value' in m);
  let last = null, seen = 0;
  const listener = (ev) => {
    if (ev.model === widget) return;  // the change we make, not the server's answer
    seen += 1;
    requestAnimationFrame(() => requestAnimationFrame(() => { last = performance.now(); }));
  };
  doc.on_change(listener, false);
  const t0 = performance.now();
  widget.value = value;
  await new Promise((done) => {
    const tick = () => {
      const now = performance.now();
      if ((last !== null && now - last > 300) || now - t0 > 15000) done();
      else setTimeout(tick, 20);
    };
    tick();
  });
  doc.remove_on_change(listener);
  return last === null ? null : {ms: last - t0, events: seen};
}"""

#: The widgets' choices: carriers and origins offered, the day range's bounds (ms).
CHOICES = """() => {
  const doc = window.Bokeh.documents[0];
  const get = (t) => [...doc.all_models].find((m) => m.title === t && 'value' in m);
  return {carriers: get('Carriers').options, origins: get('Origins').options,
          days: [get('Days').start, get('Days').end]};
}"""


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def summary(values: list[float]) -> dict:
    return {"p50": pct(values, 0.5), "p95": pct(values, 0.95), "max": max(values),
            "n": len(values)}  # fmt: skip


def changes(choices: dict, rng: random.Random):
    """Filter changes, seeded: a new carrier set, origin set or day range each time."""
    lo, hi = choices["days"]
    day = 86_400_000
    current: dict[str, list] = {}  # what each widget holds: a change must change it
    while True:
        kind = rng.choice(["Carriers", "Origins", "Days"])
        if kind == "Carriers":
            value = sorted(rng.sample(choices["carriers"], k=rng.randint(1, 3)))
        elif kind == "Origins":
            value = sorted(rng.sample(choices["origins"], k=rng.randint(1, 2)))
        else:
            start = lo + int((hi - lo) * rng.random() * 0.8) // day * day
            value = [start, min(hi, start + int((hi - lo) * 0.2 * (1 + rng.random())))]
        if current.get(kind) != value:
            current[kind] = value
            yield kind, value


@contextlib.contextmanager
def served(procs: int):
    """A new `riverlake serve --num-procs procs` on a free port, until the block ends;
    yields once its port is open, before any request has reached the app."""
    from riverlake.ops.stack import free_port

    port = free_port()
    log = open(DATA / "apps-bench-serve.log", "ab")  # noqa: SIM115
    env = {**os.environ, "RIVERLAKE_LAKE_URL": str(LAKE)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "riverlake.ops.cli", "serve",
                             "--port", str(port), "--num-procs", str(procs)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None:
                raise SystemExit(f"riverlake serve exited; see {log.name}")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}/flights_dashboard", time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


async def open_page(browser, url: str, errors: list[str]):
    """A new page on the dashboard, drawn; returns it and its first render (s)."""
    page = await browser.new_page(viewport=VIEWPORT)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error"
            else None)  # fmt: skip
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    await page.goto(url, wait_until="commit", timeout=60000)
    drawn = await page.wait_for_function(DRAWN, arg=PLOTS, polling="raf", timeout=60000)
    page.phases = await page.evaluate(PHASES)
    return page, await drawn.json_value() / 1000


async def change(page, kind: str, value) -> float | None:
    res = await page.evaluate(CHANGE, {"title": kind, "value": value})
    return None if res is None else res["ms"] / 1000


async def renders(browser) -> tuple[list[float], list[float], list[float], list[str]]:
    """Cold first renders (a new server each), warm ones, and the server's start (s)."""
    cold, warm, starts, errors = [], [], [], []
    phases: dict[str, list] = {"cold": [], "warm": []}
    for _ in range(COLD_REPEATS):
        with served(1) as (url, start):
            starts.append(start)
            page, t = await open_page(browser, url, errors)
            cold.append(t)
            phases["cold"].append(page.phases)
            await page.close()
            for _ in range(5):
                page, t = await open_page(browser, url, errors)
                warm.append(t)
                phases["warm"].append(page.phases)
                await page.close()
    return cold, warm, starts, errors, phases


async def repaints(browser) -> tuple[list[float], int, list[str]]:
    errors: list[str] = []
    with served(1) as (url, _):
        page, _ = await open_page(browser, url, errors)
        choices = await page.evaluate(CHOICES)
        times, lost = [], 0
        for (kind, value), _ in zip(changes(choices, random.Random(13)), range(CHANGES),
                                    strict=False):  # fmt: skip
            t = await change(page, kind, value)
            if t is None:
                lost += 1
            else:
                times.append(t)
        await page.close()
    return times, lost, errors


def _widgets(doc: dict) -> dict[str, dict]:
    """The dashboard's filter widgets in a pulled document (Bokeh's JSON), by title:
    their ids and what they offer."""
    found: dict[str, dict] = {}

    def walk(x) -> None:
        if isinstance(x, dict):
            attrs = x.get("attributes")
            if x.get("type") == "object" and isinstance(attrs, dict):
                title = attrs.get("title")  # (a value at its default is not sent)
                widget = x.get("name") in ("MultiChoice", "DateRangeSlider")
                if widget and title in ("Carriers", "Origins", "Days"):
                    found[title] = {"id": x["id"], **attrs}
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(doc)
    return found


class WsSession:
    """A browser-like session without a browser: it asks for the page (the server builds
    the session and signs its token), opens the session's websocket with Bokeh's
    protocol, pulls the document, says it is ready as BokehJS does, and changes a
    filter widget's value the way BokehJS sends it (a PATCH-DOC); a change is answered
    when the server's updates have come back (nothing more for 300 ms). What it does not
    do is render: the 20 sessions' rendering would otherwise run on the server's cores."""

    def __init__(self, url: str, kinds: dict[str, int]) -> None:
        self.url, self.n, self.kinds = url, 0, kinds  # kinds: events received, by kind

    async def open(self) -> dict:
        import re
        import urllib.request

        from bokeh.protocol import Protocol
        from bokeh.protocol.receiver import Receiver
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        html = await asyncio.to_thread(lambda: urllib.request.urlopen(self.url, timeout=60)
                                       .read().decode())  # fmt: skip
        token = re.search(r'"token":\s*"([^"]+)"', html).group(1)
        ws_url = self.url.replace("http://", "ws://") + "/ws"
        self.ws = await websocket_connect(HTTPRequest(ws_url), subprotocols=["bokeh", token])
        self.receiver = Receiver(Protocol())
        await self.message("ACK")
        await self.send("PULL-DOC-REQ", {})
        doc = (await self.message("PULL-DOC-REPLY")).content["doc"]
        ready = {"kind": "MessageSent", "msg_type": "bokeh_event",
                 "msg_data": {"type": "event", "name": "document_ready",
                              "values": {"type": "map", "entries": []}}}  # fmt: skip
        await self.send("PATCH-DOC", {"events": [ready]})
        with contextlib.suppress(TimeoutError):  # what the server sends on load
            while await self.message(timeout=0.5):
                pass
        widgets = _widgets(doc)
        self.ids = {title: w["id"] for title, w in widgets.items()}
        days = widgets["Days"]
        return {"carriers": widgets["Carriers"]["options"],
                "origins": widgets["Origins"]["options"],
                "days": [days["start"], days["end"]]}  # fmt: skip

    async def send(self, msgtype: str, content: dict) -> None:
        import json

        self.n += 1
        header = {"msgid": f"bench-{self.n}", "msgtype": msgtype}
        for part in (header, {}, content):
            await self.ws.write_message(json.dumps(part))

    async def message(self, msgtype: str | None = None, timeout: float | None = 60):
        """The next whole message (None: none within ``timeout``); an ERROR raises."""
        while True:
            frag = await asyncio.wait_for(self.ws.read_message(), timeout)
            if frag is None:
                raise ConnectionError("the server closed the websocket")
            msg = await self.receiver.consume(frag)
            if msg is None:
                continue
            if msg.msgtype == "ERROR":
                raise RuntimeError(f"server error: {msg.content}")
            if msgtype is None or msg.msgtype == msgtype:
                return msg

    async def change(self, kind: str, value) -> float | None:
        """Seconds from sending the change until the server's last update for it (None:
        no update within 15 s)."""
        event = {"kind": "ModelChanged", "model": {"id": self.ids[kind]}, "attr": "value",
                 "new": value}  # fmt: skip
        t0 = time.perf_counter()
        await self.send("PATCH-DOC", {"events": [event]})
        last = None
        while True:
            wait = 15 - (time.perf_counter() - t0) if last is None else 0.3
            try:
                msg = await self.message(timeout=max(wait, 0.01))
            except TimeoutError:
                break
            if msg.msgtype == "PATCH-DOC":
                last = time.perf_counter()
                for ev in msg.content.get("events", []):
                    self.kinds[ev.get("kind")] = self.kinds.get(ev.get("kind"), 0) + 1
        return None if last is None else last - t0

    def close(self) -> None:
        self.ws.close()


async def load() -> dict:
    errors: list[str] = []
    times: list[float] = []
    counts = {"lost": 0, "sessions_opened": 0}
    kinds: dict[str, int] = {}
    with served(PROCS) as (url, _):
        stop = time.monotonic() + LOAD_SECONDS

        async def user(n: int) -> None:
            rng = random.Random(1000 + n)
            await asyncio.sleep(rng.random() * 2)  # arrivals spread over 2 s
            session = WsSession(url, kinds)
            try:
                choices = await session.open()
                counts["sessions_opened"] += 1
                for kind, value in changes(choices, rng):
                    if time.monotonic() >= stop:
                        break
                    t = await session.change(kind, value)
                    if t is None:
                        counts["lost"] += 1
                    else:
                        times.append(t)
                    await asyncio.sleep(1 + 2 * rng.random())  # a person looks at it
            except Exception as e:  # a session that failed is an error, not a crash
                errors.append(f"session {n}: {type(e).__name__}: {str(e)[:200]}")
            finally:
                with contextlib.suppress(Exception):
                    session.close()

        await asyncio.gather(*(user(n) for n in range(LOAD_SESSIONS)))
    return {"sessions": LOAD_SESSIONS, "seconds": LOAD_SECONDS, "server_processes": PROCS,
            "client": "websocket sessions speaking Bokeh's protocol (no rendering)",
            "sessions_opened": counts["sessions_opened"], "changes": len(times),
            "changes_unanswered": counts["lost"], "errors": len(errors) + counts["lost"],
            "update_events": dict(sorted(kinds.items(), key=str)),
            "first_errors": errors[:5], "update_s": summary(times) if times else None}  # fmt: skip


def _medians(rows: list[dict]) -> dict[str, float | None]:
    """Per key, the median of the values present (None: none)."""
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows if r[key] is not None]
        out[key] = statistics.median(values) if values else None
    return out


async def measure(screen) -> dict:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        with screen.step(f"first render: {COLD_REPEATS} new servers, a cold and 5 warm pages"):
            cold, warm, starts, render_errors, phases = await renders(browser)
        with screen.step(f"filter repaint: {CHANGES} changes in one page"):
            times, lost, repaint_errors = await repaints(browser)
        what = f"load: {LOAD_SESSIONS} pages for {LOAD_SECONDS}s on {PROCS} server processes"
        with screen.step(what):
            loaded = await load()
        await browser.close()
    return {
        "cold_first_render_s": record.spread(cold),
        "warm_first_render_s": record.spread(warm),
        "server_start_s": record.spread(starts),
        "render_phases_s": {k: _medians(v) for k, v in phases.items()},
        "render_errors": render_errors[:5],
        "filter_repaint_s": {**summary(times), "unanswered": lost, "errors": repaint_errors[:5]},
        "load": loaded,
    }


def main() -> None:
    if not (LAKE / "tables" / "carrier_origin_daily").exists():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "transform.py")], check=True)
    os.environ["RIVERLAKE_LAKE_URL"] = str(LAKE)
    from riverlake import lake
    from riverlake.ops.progress import Screen

    rows = next(t["rows"] for t in lake.list_tables() if t["name"] == "flights")
    result = {"curated_rows": rows, **asyncio.run(measure(Screen())), "targets": TARGETS}
    cold = result["cold_first_render_s"]["median"]
    repaint = result["filter_repaint_s"]
    loaded = result["load"]
    result.update(
        meets_cold_first_render=cold <= TARGETS["cold_first_render_s"],
        meets_filter_repaint_p95=repaint["p95"] <= TARGETS["filter_repaint_p95_s"]
        and repaint["unanswered"] == 0,
        meets_load=loaded["errors"] == 0 and loaded["update_s"] is not None
        and loaded["update_s"]["p95"] <= TARGETS["load_p95_s"],
    )  # fmt: skip
    record.write("apps", result)


if __name__ == "__main__":
    main()
