"""Basic auth on the real Panel server: refused without a login, served after one."""

from __future__ import annotations

import http.cookiejar
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from riverlake.ops.stack import free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_basic_auth_guards_the_apps(stack_env, tmp_path):
    port = free_port()
    env = {**os.environ, "RIVERLAKE_APP_AUTH": "basic", "RIVERLAKE_APP_PASSWORD": "correct-horse", "RIVERLAKE_APP_USER": "me",
           "RIVERLAKE_COOKIE_SECRET": "x" * 40, "RIVERLAKE_LAKE_URL": "s3://riverlake-test/auth"}  # fmt: skip
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "riverlake.ops.cli", "serve", "--port", str(port)],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        no_redirect = urllib.request.build_opener(_NoRedirect)
        deadline = time.monotonic() + 60
        while True:
            try:
                resp = no_redirect.open(f"{base}/pipeline_health", timeout=30)
                break
            except urllib.error.HTTPError as exc:
                resp = exc
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert resp.status in (302, 401, 403)  # not the app
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        bad = urllib.parse.urlencode({"username": "me", "password": "wrong"}).encode()
        try:
            refused = opener.open(f"{base}/login", data=bad, timeout=30)
            assert not any(c.name == "user" for c in jar), "a wrong password got a session"
            assert 'type="password"' in refused.read().decode()  # the login form again
        except urllib.error.HTTPError as exc:
            assert exc.code in (401, 403)
        good = urllib.parse.urlencode({"username": "me", "password": "correct-horse"}).encode()
        opener.open(f"{base}/login", data=good, timeout=30)
        app = opener.open(f"{base}/pipeline_health", timeout=60)
        body = app.read().decode()
        assert app.status == 200 and app.url.endswith("/pipeline_health")
        assert 'type="password"' not in body and "Bokeh" in body  # the app, not the login form
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
