"""The warm runner's decisions (riverlake.ops.warm), without a server process: what a
command and the server must agree on before the server may run it, and the Prefect
settings both derive from the environment. The forked runs themselves are exercised on
the real stack in tests/integration/test_warm.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from riverlake.ops import cli, runner, warm
from riverlake.settings import get_settings

pytestmark = pytest.mark.unit


def _env() -> dict[str, str]:
    """This process's environment without pytest's per-phase variable."""
    return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}


@pytest.fixture
def server(tmp_path, monkeypatch) -> runner.Server:
    """A server as after its imports (none done here): its environment and watched files."""
    monkeypatch.setenv("RIVERLAKE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    s = runner.Server(tmp_path / "warm.sock")
    s.env = {**_env(), **cli.run_env(get_settings(), os.environ)}
    watched = tmp_path / "module.py"
    watched.write_text("X = 1\n")
    s.mtimes = {str(watched): runner._stamp(str(watched))}
    return s


def request(**env_changes: str | None) -> dict:
    env = {k: v for k, v in {**_env(), **env_changes}.items() if v is not None}
    return {"argv": ["riverlake", "run", "flights"], "cwd": os.getcwd(), "env": env,
            "path": sys.path, "executable": sys.executable, "package": warm.package_dir()}  # fmt: skip


def test_run_env_points_prefect_at_the_stack_and_keeps_what_the_user_set(monkeypatch):
    monkeypatch.setenv("RIVERLAKE_PREFECT_PORT", "4321")
    monkeypatch.setenv("RIVERLAKE_LOG_LEVEL", "DEBUG")
    env = {"PREFECT_API_URL": "http://elsewhere/api", "PREFECT_LOGGING_LEVEL": "ERROR"}
    assert cli.run_env(get_settings(), env) == {
        "PREFECT_API_URL": "http://127.0.0.1:4321/api",  # always the stack's
        "PREFECT_LOGGING_EXTRA_LOGGERS": "riverlake",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
    }  # the user's PREFECT_LOGGING_LEVEL is kept
    assert cli.run_env(get_settings(), {})["PREFECT_LOGGING_LEVEL"] == "DEBUG"


def test_the_same_environment_is_served(server):
    assert server.refusal(request()) is None


def test_riverlake_settings_may_differ_they_are_read_per_call(server):
    assert server.refusal(request(RIVERLAKE_LAKE_URL="s3://another/lake")) is None
    assert server.refusal(request(RIVERLAKE_WARM="require", PWD="/elsewhere")) is None


def test_another_variable_is_refused_by_name(server):
    assert server.refusal(request(WARM_TEST_ONLY="1")) == (
        "the environment differs from the warm runner's: WARM_TEST_ONLY"
    )
    assert server.refusal(request(HOME=None)) == (
        "the environment differs from the warm runner's: HOME")  # fmt: skip


def test_a_setting_that_moves_prefect_is_refused(server):
    """RIVERLAKE_PREFECT_PORT changes the PREFECT_API_URL Prefect read at import."""
    why = server.refusal(request(RIVERLAKE_PREFECT_PORT="4999"))
    assert why == "the environment differs from the warm runner's: PREFECT_API_URL"


def test_a_changed_module_file_is_refused(server):
    (file,) = server.mtimes
    Path(file).write_text("X = 2  # edited\n")
    assert server.refusal(request()) == f"{file} changed since the warm runner started"


def test_another_python_or_checkout_is_refused(server):
    assert "runs" in server.refusal({**request(), "executable": "/usr/bin/python3"})
    assert "imported riverlake from" in server.refusal({**request(), "package": "/elsewhere"})


def test_only_run_is_served(server):
    assert server.refusal({**request(), "argv": ["riverlake", "down"]}) == (
        "the warm runner runs only run"
    )


@pytest.mark.parametrize(("name", "text", "refused"), [
    (".env", "PREFECT_API_KEY=x\n", True),
    ("prefect.toml", "[logging]\nlevel = 'DEBUG'\n", True),
    ("pyproject.toml", "[tool.prefect]\nlogging.level = 'DEBUG'\n", True),
    ("pyproject.toml", "[project]\nname = 'mine'\n", False),  # no Prefect table: served
])  # fmt: skip
def test_prefect_settings_files_in_the_commands_folder_are_refused(
    server, tmp_path, name, text, refused
):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / name).write_text(text)
    why = server.refusal({**request(), "cwd": str(folder)})
    assert why == (f"Prefect reads {folder / name}, which the warm runner did not" if refused
                   else None)  # fmt: skip


def test_a_prefect_profiles_file_created_since_the_start_is_refused(server, tmp_path):
    profiles = tmp_path / "profiles.toml"
    server.mtimes[str(profiles)] = runner._stamp(str(profiles))  # absent at the start
    assert server.refusal(request()) is None
    profiles.write_text("active = 'other'\n")
    assert server.refusal(request()) == f"{profiles} changed since the warm runner started"


def test_bad_settings_are_left_to_the_cold_run(server):
    assert server.refusal(request(RIVERLAKE_WORKERS="many")) == (
        "the settings do not load (ValidationError)"
    )


@pytest.mark.parametrize(("raw", "mode"), [("", "on"), ("1", "on"), ("0", "off"),
                                           ("false", "off"), ("require", "require")])  # fmt: skip
def test_riverlake_warm_chooses(monkeypatch, raw, mode):
    monkeypatch.setenv("RIVERLAKE_WARM", raw)
    assert warm.mode() == mode


def test_only_run_is_forwarded_and_off_means_here(monkeypatch, tmp_path):
    monkeypatch.setenv("RIVERLAKE_HOME", str(tmp_path))  # no server there
    assert warm.forward(["riverlake", "tables"]) is None
    monkeypatch.setenv("RIVERLAKE_WARM", "0")
    assert warm.forward(["riverlake", "run", "flights"]) is None
    monkeypatch.setenv("RIVERLAKE_WARM", "1")
    assert warm.forward(["riverlake", "run", "flights"]) is None  # no server: run here


def test_require_without_a_server_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RIVERLAKE_HOME", str(tmp_path))
    monkeypatch.setenv("RIVERLAKE_WARM", "require")
    assert warm.forward(["riverlake", "run", "flights"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"riverlake: error: RIVERLAKE_WARM=require: no warm runner at "
                           f"{tmp_path / 'run' / 'warm.sock'} (FileNotFoundError")  # fmt: skip


def test_a_long_socket_path_is_reached_through_its_folder(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    with warm.short_path(deep / "warm.sock") as name:
        assert name.startswith("/proc/self/fd/") and len(name) < 100
        assert Path(name).parent.resolve() == deep.resolve()


def test_a_service_gets_inherited_empty_variables_and_its_own_empty_ones_unset(monkeypatch):
    """The runner compares its environment with each command's: one it started with,
    minus the variables that happened to be empty (make's MAKEFLAGS), refused them all."""
    from riverlake.ops import stack

    monkeypatch.setenv("INHERITED_EMPTY", "")
    monkeypatch.setenv("PREFECT_API_URL", "http://elsewhere/api")
    svc = stack.Service(name="s", argv=["x"], ports={}, health_url="", url="",
                        env={"PREFECT_API_URL": "", "OWN": "1"})  # fmt: skip
    env = stack._service_env(svc)
    assert env["INHERITED_EMPTY"] == "" and env["OWN"] == "1"
    assert "PREFECT_API_URL" not in env  # the service's empty value: unset for it
    (runner,) = [s for s in stack.services(get_settings()) if s.name == "runner"]
    assert warm.relevant(stack._service_env(runner)) == warm.relevant(os.environ)


FORKED = """
import atexit, os, sys
from riverlake.ops import runner

atexit.register(runner._leave)  # as serve_main registers it, before anything else


class Heap:  # what a forked command inherits from the server: torn down only by its owner
    def __del__(self):
        os.write(2, f"{os.getpid()} tore its heap down\\n".encode())


held = Heap()
pid = os.fork()
if pid == 0:
    atexit.register(lambda: os.write(2, b"the command's exit handler ran\\n"))
    print("a line still in stdout's buffer")  # a pipe: block-buffered
    if FULL:  # what it prints next cannot be written: a full disk
        sys.stdout = open("/dev/full", "w")
        print("lost")
    runner.end_command(CODE)
_, status = os.waitpid(pid, 0)
print("command status", os.waitstatus_to_exitcode(status), "server", os.getpid())
"""


@pytest.mark.parametrize(("code", "full", "status"), [
    (None, False, 0), (0, False, 0), (3, False, 3), ("'one line'", False, 1),
    (0, True, 120), (3, True, 3),  # output lost: a success fails, as Python's own exit does
])  # fmt: skip
def test_a_forked_command_ends_with_its_status_handlers_and_output_without_teardown(
    code, full, status
):
    import subprocess

    script = FORKED.replace("CODE", str(code)).replace("FULL", str(full))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    server = int(res.stdout.split()[-1])
    assert res.stdout.splitlines() == ["a line still in stdout's buffer",
                                       f"command status {status} server {server}"]  # fmt: skip
    err = res.stderr.splitlines()
    assert "the command's exit handler ran" in err
    assert (code == "'one line'") == ("one line" in err)
    # The server tore its own heap down as Python does; the command left without.
    assert [e for e in err if "tore its heap down" in e] == [f"{server} tore its heap down"]
