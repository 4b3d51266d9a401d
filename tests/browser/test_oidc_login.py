"""OIDC login in a real browser: the apps (Panel's generic OAuth provider, turned on by
RIVERLAKE_APP_AUTH=oauth) against an OpenID Connect provider served on a free port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from riverlake.ops.stack import free_port
from tests.browser.oidc_idp import create_idp, sign_in
from tests.browser.test_apps import ARGS, ARTIFACTS, CHROMIUM
from tests.conftest import ROOT, need

pytestmark = pytest.mark.browser

CLIENT_ID, CLIENT_SECRET = "riverlake-apps", "s3cret-of-the-client"


@pytest.fixture
def idp():
    import uvicorn

    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    app = create_idp(issuer, CLIENT_ID, CLIENT_SECRET)
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield issuer, app
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def apps_with_oidc(idp, tmp_path):
    from cryptography.fernet import Fernet

    issuer, _ = idp
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "RIVERLAKE_LAKE_URL": str(tmp_path / "lake"),
        "RIVERLAKE_APP_AUTH": "oauth",
        "RIVERLAKE_OAUTH_KEY": CLIENT_ID,
        "RIVERLAKE_OAUTH_SECRET": CLIENT_SECRET,
        "RIVERLAKE_OAUTH_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "RIVERLAKE_COOKIE_SECRET": "c" * 40,
        "RIVERLAKE_OAUTH_REDIRECT_URI": f"{base}/login",
        "RIVERLAKE_OAUTH_EXTRA_PARAMS": json.dumps({
            "AUTHORIZE_URL": f"{issuer}/authorize", "TOKEN_URL": f"{issuer}/token",
            "USER_URL": f"{issuer}/userinfo"}),
    }  # fmt: skip
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "riverlake.ops.cli", "serve", "--port", str(port)],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{base}/login", timeout=10)
            break
        except urllib.error.HTTPError:
            break  # the server answers
        except OSError:
            time.sleep(0.5)
    yield base
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


def test_oidc_login_guards_the_apps_and_lets_the_right_user_in(idp, apps_with_oidc):
    from playwright.sync_api import sync_playwright

    need(os.path.exists(CHROMIUM), f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    _, provider = idp
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        try:
            page.goto(f"{apps_with_oidc}/pipeline_health")
            # Not signed in: the provider's sign-in page, not the app.
            page.get_by_text("Test IdP sign-in").wait_for(timeout=30000)
            assert "/authorize?" in page.url and "client_id=riverlake-apps" in page.url
            sign_in(page, "ada", "wrong")
            page.get_by_text("wrong user or password").wait_for(timeout=10000)
            assert provider.state.logins == []
            sign_in(page, "ada")
            page.get_by_text("Table freshness").wait_for(timeout=60000)  # the app itself
            assert page.url.startswith(apps_with_oidc)
            assert provider.state.logins == ["ada"]
            cookies = {c["name"] for c in page.context.cookies()}
            assert {"user", "id_token"} <= cookies
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "test_oidc_login.png"), full_page=True)
            browser.close()
