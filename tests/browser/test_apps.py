"""The Panel apps and the Prefect UI in a real browser (Debian's Chromium via Playwright).

Screenshots are kept under test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from riverlake.demo import data as demo_data
from riverlake.ops.stack import free_port
from tests.conftest import ROOT, need, riverlake_cli

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
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


def kpi(page, name: str) -> str:
    card = page.locator(".kpi-cards").get_by_text(name, exact=True).locator("xpath=..")
    return card.inner_text().replace(name, "").strip()


def january() -> object:
    raw = demo_data.load("flights")
    return raw[raw["month"] == 1]


@pytest.mark.parametrize(("app", "canvases"), [("flights_dashboard", 4), ("pipeline_health", 1),
                                                ("table_explorer", 0), ("big_data", 1)])  # fmt: skip
def test_app_loads_without_console_errors(served, page, app, canvases):
    open_app(page, f"{served}/{app}", canvases)
    page.wait_for_timeout(1500)
    assert page.errors == []


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
    assert "partitions (by year, month)" in text and text.startswith("carrier_origin_daily:")


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
