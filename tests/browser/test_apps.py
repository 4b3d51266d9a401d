"""The Panel apps and the Prefect UI in a real browser (Debian's Chromium via Playwright).

Screenshots are kept under test-artifacts/ for a person to look at. The README's
pictures (one per app, one of a run in the Prefect UI, at SHOT_VIEWPORT) are taken by
the same tests: into docs/screenshots/ when RIVERLAKE_SCREENSHOTS is set (`make
screenshots`), else into test-artifacts/screenshots/, so a plain run leaves the working
tree as it was.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest

from riverlake.analytics.flights import NATURAL_KEY
from riverlake.demo import data as demo_data
from riverlake.ops.stack import free_port
from tests.conftest import ROOT, need, riverlake_cli

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
SHOTS = ROOT / "docs" / "screenshots"
SHOT_VIEWPORT = {"width": 1400, "height": 1000}
SHOT_MAX_BYTES = 400_000
LAKE = "s3://riverlake-test/browser"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
        "--disable-component-update", "--disable-sync", "--disable-quic"]  # fmt: skip


def run_days(start: str, end: str) -> dict:
    res = riverlake_cli("run", "flights", "--json", "--start", start, "--end", end,
                        env={"RIVERLAKE_LAKE_URL": LAKE})  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1])


@pytest.fixture(scope="module")
def served(stack_env):
    """January in the lake, then `riverlake serve` on a free port."""
    need(os.path.exists(CHROMIUM), f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    run_days("2013-01-01", "2013-01-31")
    port = free_port()
    env = {**os.environ, "RIVERLAKE_LAKE_URL": LAKE}
    log = open(ARTIFACTS.parent / "test-artifacts-serve.log", "wb")  # noqa: SIM115
    # The server's log goes to a file: an unread pipe would fill and stall the server.
    proc = subprocess.Popen(
        [sys.executable, "-m", "riverlake.ops.cli", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/flights_dashboard", timeout=30)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"riverlake serve did not answer; see {log.name}")
    yield url
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


@pytest.fixture(scope="module")
def browser(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    pg = browser.new_page(viewport={"width": 1400, "height": 1500})
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors
    yield pg
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    pg.close()


def open_app(page, url: str, canvases: int) -> None:
    page.goto(url)
    deadline = time.monotonic() + 60
    while page.locator("canvas").count() < canvases and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    assert page.locator("canvas").count() >= canvases


def keep_screenshot(page, name: str):
    """What the page shows now, at SHOT_VIEWPORT, as a 256-colour PNG (UI screenshots
    lose nothing visible and shrink several times); returns the path written."""
    from PIL import Image

    assert page.viewport_size == SHOT_VIEWPORT
    folder = SHOTS if os.environ.get("RIVERLAKE_SCREENSHOTS") else ARTIFACTS / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    image.quantize(colors=256, dither=Image.Dither.NONE).save(path, optimize=True)
    with Image.open(path) as kept:
        assert kept.size == (SHOT_VIEWPORT["width"], SHOT_VIEWPORT["height"])
    assert path.stat().st_size < SHOT_MAX_BYTES, f"{path}: {path.stat().st_size} bytes"
    return path


def kpi(page, name: str) -> str:
    card = page.locator(".kpi-cards").get_by_text(name, exact=True).locator("xpath=..")
    return card.inner_text().replace(name, "").strip()


def january() -> object:
    raw = demo_data.load("flights")
    return raw[raw["month"] == 1]


#: What shows that an app has drawn its content (beyond its plots' canvases).
DRAWN = {"flights_dashboard": ".kpi-card", "big_data": "canvas",
         "pipeline_health": '.freshness .tabulator-cell[tabulator-field="table"]',
         "table_explorer": '.rows .tabulator-cell[tabulator-field="year"]'}  # fmt: skip


@pytest.mark.parametrize(("app", "canvases"), [("flights_dashboard", 4), ("pipeline_health", 1),
                                                ("table_explorer", 0), ("big_data", 1)])  # fmt: skip
def test_app_loads_without_console_errors(served, page, app, canvases):
    page.set_viewport_size(SHOT_VIEWPORT)
    open_app(page, f"{served}/{app}", canvases)
    page.locator(DRAWN[app]).first.wait_for(timeout=30000)
    page.wait_for_timeout(1500)
    assert page.errors == []
    keep_screenshot(page, app)


def test_dashboard_shows_the_real_numbers_and_a_filter_updates_them(served, page):
    open_app(page, f"{served}/flights_dashboard", 4)
    jan = january()
    page.locator(".kpi-cards").get_by_text("Flights", exact=True).wait_for()
    assert kpi(page, "Flights") == f"{len(jan):,}"
    page.get_by_placeholder("All carriers").click()
    page.locator(".choices__item--choice", has_text="UA").first.click()
    want = f"{int((jan['carrier'] == 'UA').sum()):,}"
    deadline = time.monotonic() + 20
    while kpi(page, "Flights") != want and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    assert kpi(page, "Flights") == want
    # the plots drawn in the browser show UA alone, computed here from the raw rows
    ua = jan[jan["carrier"] == "UA"]
    (daily,) = page.evaluate(PLOTTED, "Mean arrival delay per day")
    per_day = ua.groupby("day")["arr_delay"].mean()
    assert daily["flight_date"] == [pd.Timestamp(2013, 1, d).value // 10**6 for d in per_day.index]
    assert daily["mean_arr_delay"] == pytest.approx(per_day.tolist())
    (bars,) = page.evaluate(PLOTTED, "On-time rate by carrier")
    assert bars["carrier"] == sorted(jan["carrier"].unique())  # a slot for every carrier
    shown = dict(zip(bars["carrier"], bars["on_time_rate"], strict=True))
    arrived = ua["arr_delay"].dropna()
    assert shown.pop("UA") == pytest.approx((arrived < 15).sum() / len(arrived))
    assert all(v is None or v != v for v in shown.values()), shown  # the others: no bar
    assert page.errors == []


#: Each KPI card's box and the boxes of its texts (a Range around each text node: the
#: glyphs' extent, which spills out of a box too narrow for them).
CARD_BOXES = """els => els.map(el => {
  const box = r => ({left: r.left, right: r.right, top: r.top, bottom: r.bottom});
  const texts = [];
  const walker = document.createTreeWalker(el.shadowRoot || el, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (!node.textContent.trim() || node.parentElement.closest('style')) continue;
    const range = document.createRange();
    range.selectNodeContents(node);
    texts.push({text: node.textContent.trim(), ...box(range.getBoundingClientRect())});
  }
  return {card: box(el.getBoundingClientRect()), texts};
})"""


def test_kpi_cards_fit_their_text_at_1280_and_1920(served, page):
    open_app(page, f"{served}/flights_dashboard", 4)
    page.locator(".kpi-cards").get_by_text("Flights", exact=True).wait_for()
    jan = january()
    for width in (1280, 1920):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(800)  # the layout follows the new width
        cards = page.locator(".kpi-card").evaluate_all(CARD_BOXES)
        shown = {c["texts"][0]["text"]: c["texts"][-1]["text"] for c in cards}
        assert list(shown) == ["Flights", "Cancelled", "Mean arrival delay (min)", "On time"]
        assert shown["Flights"] == f"{len(jan):,}"
        assert re.fullmatch(r"-?\d+\.\d", shown["Mean arrival delay (min)"])
        assert re.fullmatch(r"\d{1,3}\.\d%", shown["On time"])
        for c in cards:
            card = c["card"]
            assert len(c["texts"]) == 2
            assert card["left"] >= 0 and card["right"] <= width, (width, c)
            for t in c["texts"]:
                assert card["left"] <= t["left"] and t["right"] <= card["right"], (width, t, card)
                assert card["top"] <= t["top"] and t["bottom"] <= card["bottom"], (width, t, card)
        scroll, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert inner == width and scroll <= inner
    assert page.errors == []


#: The explorer's visible rows, each as {column: the text its cell shows}.
ROW_TEXTS = """rows => rows.map(r => Object.fromEntries(Array.from(
  r.querySelectorAll('.tabulator-cell'), c => [c.getAttribute('tabulator-field'), c.innerText])))"""


def shown_rows(page, column: str) -> list[dict]:
    page.locator(f'.rows .tabulator-cell[tabulator-field="{column}"]').first.wait_for(timeout=30000)
    return page.locator(".rows .tabulator-row").evaluate_all(ROW_TEXTS)


def test_table_explorer_shows_numbers_by_their_meaning(served, page):
    open_app(page, f"{served}/table_explorer", 0)
    rows = shown_rows(page, "year")
    assert len(rows) == 20  # the first page of the sample
    jan = january().set_index(["day", "carrier", "flight", "sched_dep_time", "origin"])
    for r in rows:
        # years and flight numbers as written, no thousands separator
        assert r["year"] == "2013" and r["month"] == "1", r
        assert re.fullmatch(r"\d+", r["flight"]) and re.fullmatch(r"\d+", r["sched_dep_time"])
        key = (int(r["day"]), r["carrier"], int(r["flight"]), int(r["sched_dep_time"]), r["origin"])
        want = jan.loc[key]
        for delay in ("dep_delay", "arr_delay"):  # one decimal, the real value
            value = want[delay]
            assert r[delay] == ("" if pd.isna(value) else f"{value:.1f}"), (delay, r)
        assert r["flight_date"] == f"2013-01-{int(r['day']):02d}"
    assert any(int(r["flight"]) >= 1000 for r in rows)  # the separator would have shown
    page.get_by_role("combobox").first.select_option("carrier_origin_daily")
    rows = shown_rows(page, "on_time_rate")
    assert rows and {r["year"] for r in rows} == {"2013"}
    for r in rows:  # a rate as a percentage of the row's own counts
        assert re.fullmatch(r"\d{1,3}\.\d%", r["on_time_rate"]), r
        rate = int(r["on_time"]) / int(r["arrived"])
        assert abs(float(r["on_time_rate"].rstrip("%")) - 100 * rate) <= 0.05 + 1e-9, r
        assert re.fullmatch(r"-?\d+\.\d", r["mean_arr_delay"]), r
    assert page.errors == []


#: The group-by chart's title and data, read from the page's Bokeh document.
CHART = """() => {
  for (const doc of Bokeh.documents) for (const m of doc._all_models.values()) {
    if (m.type !== 'Figure' || !m.title || !/ by /.test(m.title.text)) continue;
    const source = m.renderers.map(r => r.data_source).find(s => s && s.data);
    const data = Object.fromEntries(Object.entries(source.data).map(([k, v]) => [k, Array.from(v)]));
    return {title: m.title.text, data};
  }
  return null;
}"""


def test_table_explorer_first_chart_measures_by_a_text_column(served, page):
    open_app(page, f"{served}/table_explorer", 0)
    page.locator(".bk-tab", has_text="Group by").click()
    chart = None
    deadline = time.monotonic() + 30
    while chart is None and time.monotonic() < deadline:
        page.wait_for_timeout(250)
        chart = page.evaluate(CHART)
    assert chart is not None, "no group-by chart"
    assert chart["title"] == "mean_dep_delay by carrier"
    jan = january()
    # grouped by a text column with a few values, measuring a delay: no key, no calendar
    assert pd.api.types.is_string_dtype(jan["carrier"]) and jan["carrier"].nunique() <= 50
    assert pd.api.types.is_numeric_dtype(jan["dep_delay"]) and "dep_delay" not in NATURAL_KEY
    want = jan.groupby("carrier")["dep_delay"].mean()
    got = dict(zip(chart["data"]["carrier"], chart["data"]["mean_dep_delay"], strict=True))
    assert set(got) == set(want.index)
    assert all(abs(got[c] - want[c]) < 1e-6 for c in got), (got, want)
    assert page.errors == []


#: The plotted points of the newest figure whose title starts with a prefix, one list per
#: line (or bar group), read from the page's Bokeh document.
PLOTTED = """prefix => {
  let last = null;  // a redraw adds a figure; the document may still hold the old one
  for (const doc of Bokeh.documents) for (const m of doc._all_models.values())
    if (m.type === 'Figure' && m.title && m.title.text.startsWith(prefix)) last = m;
  if (last === null) return null;
  const sources = last.renderers.map(r => r.data_source).filter(s => s && s.data);
  return sources.map(s => Object.fromEntries(
    Object.entries(s.data).map(([k, v]) => [k, Array.from(v)])));
}"""


def plotted_points(
    page, prefix: str, want: int | None = None, unlike: list[tuple] | None = None
) -> list[tuple]:
    """(x in ms, y) of every point drawn in the figure (but gaps), sorted; waits for
    ``want`` points, and for the figure to differ from ``unlike`` (the points before a
    filter change: the new figure may have as many points as the old one)."""
    points: list[tuple] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sources = page.evaluate(PLOTTED, prefix) or []
        points = sorted((x, y) for d in sources
                        for x, y in zip(d.get("flight_date", []), d.get("on_time_rate", []),
                                        strict=True)
                        if y is not None and y == y)  # fmt: skip
        if points and (want is None or len(points) == want) and points != unlike:
            break
        page.wait_for_timeout(250)
    return points


def test_dashboards_chart_a_declared_gold_table_and_follow_a_key_filter(served, page):
    from riverlake import lake
    from riverlake.settings import get_settings

    open_app(page, f"{served}/gold_dashboard", 1)
    gold = lake.read_pandas("carrier_origin_daily", settings=get_settings(lake_url=LAKE))
    rows = page.locator(".gold-rows p")
    rows.get_by_text(" rows").wait_for(timeout=30000)
    assert rows.inner_text() == f"{len(gold):,} of {len(gold):,} rows"
    # a line per origin over the days: one point per (day, origin)
    days = gold.groupby(["flight_date", "origin"]).size()
    before = plotted_points(page, "carrier_origin_daily:", want=len(days))
    assert len(before) == len(days) and all(0 <= y <= 1 for _, y in before)
    # the first page of the Dashboards: the select of every charted gold table
    assert page.get_by_role("combobox").first.input_value() == "flights / carrier_origin_daily"

    page.get_by_placeholder("All carrier").click()
    page.locator(".choices__item--choice", has_text="UA").first.click()
    ua = gold[gold["carrier"] == "UA"]
    want = f"{len(ua):,} of {len(gold):,} rows"
    deadline = time.monotonic() + 20
    while rows.inner_text() != want and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    assert rows.inner_text() == want
    # one carrier: each point is that carrier's own on-time rate of the day at the origin
    expected = sorted(
        (pd.Timestamp(r.flight_date).value // 10**6, r.on_time_rate)
        for r in ua.itertuples()
        if pd.notna(r.on_time_rate)
    )
    after = plotted_points(page, "carrier_origin_daily:", want=len(expected), unlike=before)
    assert [x for x, _ in after] == [x for x, _ in expected], (after, expected)
    assert [y for _, y in after] == pytest.approx([y for _, y in expected])
    assert after != before
    assert page.errors == []


def test_new_commits_show_up_without_a_reload(served, page):
    open_app(page, f"{served}/flights_dashboard", 4)
    before = kpi(page, "Flights")
    run_days("2013-02-01", "2013-02-03")
    raw = demo_data.load("flights")
    want = f"{int(((raw['month'] == 1) | ((raw['month'] == 2) & (raw['day'] <= 3))).sum()):,}"
    deadline = time.monotonic() + 60  # the dashboard checks the table version every 10 s
    while kpi(page, "Flights") != want and time.monotonic() < deadline:
        page.wait_for_timeout(500)
    assert before != want and kpi(page, "Flights") == want


def test_table_explorer_picks_a_table_and_shows_its_summary(served, page):
    open_app(page, f"{served}/table_explorer", 0)
    summary = page.locator(".table-summary p")  # a CSS path pierces Panel's shadow DOM
    summary.get_by_text("rows,").wait_for(timeout=30000)
    assert summary.inner_text().startswith("flights:")
    page.get_by_role("combobox").first.select_option("carrier_origin_daily")
    summary.get_by_text("carrier_origin_daily").wait_for(timeout=30000)
    text = summary.inner_text()
    assert re.search(r"\d partitions? \(by year, month\)", text), text
    assert text.startswith("carrier_origin_daily:")


def test_prefect_ui_lists_the_flow_run(served, page, stack_env):
    api = f"http://127.0.0.1:{stack_env['RIVERLAKE_PREFECT_PORT']}/api"
    req = urllib.request.Request(
        f"{api}/flow_runs/filter",
        # this suite's own flights run: the deployment test's worker may be mid-way through
        # a scheduled flight_events run by now
        data=json.dumps(
            {"flows": {"name": {"any_": ["flights"]}}, "limit": 1, "sort": "START_TIME_DESC"}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    (latest,) = json.loads(urllib.request.urlopen(req, timeout=10).read())
    page.goto(api.removesuffix("/api") + "/runs")
    page.get_by_text(latest["name"]).first.wait_for(timeout=60000)
    assert latest["state_type"] == "COMPLETED"
    # the run's own page: its state, the task runs on a timeline, the logs
    page.set_viewport_size(SHOT_VIEWPORT)
    page.goto(api.removesuffix("/api") + f"/runs/flow-run/{latest['id']}")
    page.get_by_text(latest["name"]).first.wait_for(timeout=60000)
    page.get_by_text("Completed").first.wait_for(timeout=30000)
    page.get_by_text(f"Beginning flow run '{latest['name']}'").first.wait_for(timeout=30000)
    page.wait_for_timeout(1500)  # the timeline draws its task runs
    keep_screenshot(page, "prefect_run")


XSS = '<img src=x onerror="window.__xss=1">'


def _api(stack_env, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{stack_env['RIVERLAKE_PREFECT_PORT']}/api{path}",
        data=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
    )  # fmt: skip
    return json.loads(urllib.request.urlopen(req, timeout=10).read() or b"{}")


def test_a_run_named_with_html_renders_as_text_in_pipeline_health(served, page, stack_env):
    """Stored XSS: anyone who can start a flow run names it. The name shows as text, the
    image is never created and its handler never runs."""
    flow = _api(stack_env, "/flows/", {"name": "xss-probe"})
    run = _api(stack_env, "/flow_runs/", {"flow_id": flow["id"], "name": XSS,
                                          "state": {"type": "RUNNING", "name": "Running"}})  # fmt: skip
    try:
        open_app(page, f"{served}/pipeline_health", 1)
        page.locator(".prefect-runs").get_by_text(XSS, exact=True).wait_for(timeout=60000)
        assert page.evaluate("window.__xss") is None  # the handler never ran
        assert page.locator('.prefect-runs img[src="x"]').count() == 0  # nor the element
        assert (
            page.evaluate(
                "Array.from(document.querySelectorAll('*')).flatMap(e => e.shadowRoot ?"
                " Array.from(e.shadowRoot.querySelectorAll('img[src=\"x\"]')) : []).length"
            )
            == 0
        )  # Panel renders into shadow roots: none holds the image either
    finally:
        _api(stack_env, f"/flow_runs/{run['id']}/set_state",
             {"state": {"type": "COMPLETED", "name": "Completed"}, "force": True})  # fmt: skip
