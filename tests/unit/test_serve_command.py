"""`riverlake serve`'s panel command and auth settings, as data (no server started)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from riverlake.errors import RiverlakeError
from riverlake.ops.cli import panel_command
from riverlake.settings import get_settings

pytestmark = pytest.mark.unit


def test_no_auth_on_the_local_stack(tmp_path):
    cmd, env = panel_command(get_settings(home=tmp_path), 5006)
    assert env == {}
    assert "--basic-auth" not in cmd and "--oauth-provider" not in cmd
    assert cmd[cmd.index("--index") + 1] == "flights_dashboard"
    apps = cmd[cmd.index("serve") + 1 : cmd.index("--port")]
    assert len(apps) == 5 and all(a.endswith(".py") for a in apps)  # every app, one process
    setup = Path(cmd[cmd.index("--setup") + 1])  # the warm-up, before the first request
    assert setup.name == "warm.py" and setup.exists() and str(setup) not in apps


def test_basic_auth_keeps_secrets_out_of_the_command_line(tmp_path):
    s = get_settings(home=tmp_path, app_auth="basic", app_password="hunter22",
                     cookie_secret="c" * 32)  # fmt: skip
    cmd, env = panel_command(s, 5006, num_procs=2)
    assert "hunter22" not in " ".join(cmd) and "c" * 32 not in " ".join(cmd)
    pw_file = cmd[cmd.index("--basic-auth") + 1]
    assert json.loads(Path(pw_file).read_text()) == {"riverlake": "hunter22"}
    assert Path(pw_file).stat().st_mode & 0o777 == 0o600
    assert env == {"PANEL_COOKIE_SECRET": "c" * 32}
    assert cmd[cmd.index("--num-procs") + 1] == "2"


def test_oauth_uses_the_generic_oidc_provider_from_env(tmp_path):
    s = get_settings(home=tmp_path, app_auth="oauth", cookie_secret="c" * 32, oauth_key="riverlake",
                     oauth_secret="s3cret", oauth_encryption_key="k" * 44,
                     oauth_extra_params='{"TOKEN_URL": "https://idp/token"}')  # fmt: skip
    cmd, env = panel_command(s, 5006)
    assert cmd[cmd.index("--oauth-provider") + 1] == "generic"
    assert "s3cret" not in " ".join(cmd)
    assert env["PANEL_OAUTH_SECRET"] == "s3cret" and env["PANEL_OAUTH_KEY"] == "riverlake"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"app_auth": "basic", "app_password": "x"}, "needs RIVERLAKE_COOKIE_SECRET"),
     ({"app_auth": "basic", "cookie_secret": "c"}, "needs RIVERLAKE_APP_PASSWORD"),
     ({"app_auth": "oauth", "cookie_secret": "c"}, "needs RIVERLAKE_OAUTH_KEY")],
)  # fmt: skip
def test_incomplete_auth_settings_are_refused(tmp_path, overrides, message):
    with pytest.raises(RiverlakeError, match=message):
        panel_command(get_settings(home=tmp_path, **overrides), 5006)
