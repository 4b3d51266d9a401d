"""The warm runner (riverlake.ops.warm) on the session's stack: `riverlake run` forked from
the stack's `runner` service writes the same lake as a new process, is refused (and then
runs cold) when its environment differs, and never outlives its command: Ctrl-C reaches
it, and a killed client's run is stopped."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from riverlake.settings import get_settings
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

DAY = "2013-02-12"


def _runner() -> tuple[int, dict[str, str], Path]:
    """The stack's runner: its pid, the environment it was started with, its log."""
    from riverlake.ops import stack

    settings = get_settings()
    (svc,) = [s for s in stack.services(settings) if s.name == "runner"]
    home = settings.home.resolve()
    info = stack._read_pid(svc, home)
    assert stack._alive(info), "the stack's runner is not running"
    return info["pid"], stack.process_environ(info["pid"]), svc.log_file(home)


def _command(args: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    """The console script a user types (riverlake.ops.entry: the client before any import)."""
    return subprocess.Popen([str(Path(sys.executable).parent / "riverlake"), *args], env=env,
                            cwd=ROOT, text=True, **kw)  # fmt: skip


def _served(log: Path, args: str, after: int, timeout: float = 60) -> int:
    """The pid of the command the runner forked for ``args`` (logged after offset ``after``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.findall(rf"^pid (\d+): riverlake {re.escape(args)}$",
                           log.read_text()[after:], re.M)  # fmt: skip
        if found:
            return int(found[-1])
        time.sleep(0.1)
    raise AssertionError(f"the runner never forked `riverlake {args}`: {log.read_text()[after:]}")


def _gone(pid: int, timeout: float) -> bool:
    """``pid`` has exited (or does within ``timeout`` s); looked at once at least."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
        except OSError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] in "ZX":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def test_a_warm_run_writes_what_a_cold_run_writes(stack_env):
    from benchmarks.overhead import same_lakes

    _, env, log = _runner()
    lakes = {how: f"s3://riverlake-test/warm-{how}-{uuid.uuid4().hex[:6]}"
             for how in ("require", "0")}  # fmt: skip
    args = ["run", "flights", "--start", DAY, "--end", DAY, "--json"]
    summaries = {}
    for how, lake_url in lakes.items():
        offset = len(log.read_text())
        proc = _command(args, {**env, "RIVERLAKE_WARM": how, "RIVERLAKE_LAKE_URL": lake_url},
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        summaries[how] = json.loads(out)
        forked = re.findall(r"^pid \d+: riverlake run flights", log.read_text()[offset:], re.M)
        assert len(forked) == (1 if how == "require" else 0), log.read_text()[offset:]
    warm, cold = summaries["require"], summaries["0"]
    for key in ("rows_in", "rows_loaded", "rows_quarantined", "rows_merged", "months", "sources"):
        assert warm[key] == cold[key], key
    assert warm["rows_loaded"] > 0
    rows = same_lakes(lakes["require"], lakes["0"])  # every table, value by value
    assert rows["flights"] == warm["rows_loaded"]


def test_a_malformed_request_leaves_the_runner_serving(stack_env):
    import socket

    from riverlake.ops import warm

    _, env, log = _runner()
    offset = len(log.read_text())
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
        with warm.short_path(warm.socket_path(env)) as name:
            conn.connect(name)
        socket.send_fds(conn, [b"{not json"], [0, 1, 2])
        assert conn.recv(100) == b""  # it hung up on us
    assert "a request failed: JSONDecodeError" in log.read_text()[offset:]
    proc = _command(["run", "no-such-pipeline"], {**env, "RIVERLAKE_WARM": "require"},
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    out, err = proc.communicate(timeout=120)
    assert (
        proc.returncode == 1
        and out == ""
        and len(err.splitlines()) == 1
        and "no-such-pipeline" in err
    )
    assert re.search(r"^pid \d+: riverlake run no-such-pipeline$", log.read_text()[offset:], re.M)


def test_a_different_environment_is_refused_and_runs_cold(stack_env):
    _, env, log = _runner()
    env = {**env, "WARM_TEST_ONLY": "1"}
    offset = len(log.read_text())
    required = _command(["run", "no-such-pipeline"], {**env, "RIVERLAKE_WARM": "require"},
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    out, err = required.communicate(timeout=120)
    assert required.returncode == 1 and out == ""
    assert err.splitlines() == [
        "riverlake: error: RIVERLAKE_WARM=require: the environment differs from the warm "
        "runner's: WARM_TEST_ONLY"
    ]
    cold = _command(["run", "no-such-pipeline"], env, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE)  # fmt: skip
    out, err = cold.communicate(timeout=120)
    assert cold.returncode == 1 and len(err.splitlines()) == 1, err  # its own one-line error
    assert "no-such-pipeline" in err
    assert "pid " not in log.read_text()[offset:]  # refused twice, nothing forked
    assert log.read_text()[offset:].count("cold: the environment differs") == 2


def _a_warm_run_under_way(tmp_path: Path) -> tuple[subprocess.Popen, int, Path, int]:
    """A one-day run forked by the runner, seen running 2 s after it started: its client,
    the forked command's pid, the runner's log and where this run's lines start in it."""
    _, env, log = _runner()
    offset = len(log.read_text())
    lake_url = f"s3://riverlake-test/warm-{uuid.uuid4().hex[:6]}"
    out = (tmp_path / "out.log").open("w+")
    client = _command(["run", "flights", "--start", DAY, "--end", DAY],
                      {**env, "RIVERLAKE_WARM": "require", "RIVERLAKE_LAKE_URL": lake_url},
                      stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    pid = _served(log, f"run flights --start {DAY} --end {DAY}", offset)
    time.sleep(2.0)
    assert client.poll() is None and not _gone(pid, 0), "the run ended before the fault"
    return client, pid, log, offset


def _exit_status(log: Path, pid: int, offset: int, timeout: float = 30) -> int | None:
    """The forked command's exit status as the runner logged it (its monitor logs it
    after reaping the command, which a test can see gone a moment before: waited for)."""
    deadline = time.monotonic() + timeout
    while True:
        ended = re.search(rf"^pid {pid}: exit status (-?\d+)$", log.read_text()[offset:], re.M)
        if ended or time.monotonic() >= deadline:
            return int(ended.group(1)) if ended else None
        time.sleep(0.1)


def test_ctrl_c_reaches_the_forked_run(stack_env, tmp_path):
    client, pid, log, offset = _a_warm_run_under_way(tmp_path)
    client.send_signal(signal.SIGINT)
    assert client.wait(timeout=120) != 0  # interrupted: not a success
    assert _gone(pid, 30), "the forked run outlived its client"
    assert _exit_status(log, pid, offset) == client.returncode  # the run's own status


def test_a_killed_clients_run_is_stopped(stack_env, tmp_path):
    client, pid, log, offset = _a_warm_run_under_way(tmp_path)
    client.kill()  # SIGKILL: the client cannot say goodbye; its connection closes
    client.wait(timeout=30)
    assert _gone(pid, 30), "the run went on without its client"
    status = _exit_status(log, pid, offset)
    assert status is not None and status != 0


def test_up_restarts_a_runner_started_under_another_environment(stack_env):
    before, env, _ = _runner()
    res = subprocess.run([sys.executable, "-m", "riverlake.ops.cli", "up"], cwd=ROOT, text=True,
                         env={**env, "WARM_TEST_ONLY": "2"}, capture_output=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    after, new_env, _ = _runner()
    assert after != before and new_env.get("WARM_TEST_ONLY") == "2"
    assert f"service runner: waiting (started, pid {after})" in res.stderr.splitlines()
    again = subprocess.run([sys.executable, "-m", "riverlake.ops.cli", "up"], cwd=ROOT, text=True,
                           env=new_env, capture_output=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert _runner()[0] == after  # the same environment: left running
    assert "service runner: waiting (already running)" in again.stderr.splitlines()


def test_a_changed_module_makes_the_runner_import_again(stack_env):
    from riverlake.ops import cli

    pid, env, log = _runner()
    file = Path(cli.__file__)  # imported by the runner ahead of every command
    st = file.stat()
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # as an edit would
    offset = len(log.read_text())
    required = {**env, "RIVERLAKE_WARM": "require"}
    refused = _command(["run", "no-such-pipeline"], required, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)  # fmt: skip
    _, err = refused.communicate(timeout=120)
    assert refused.returncode == 1
    assert f"{file} changed since the warm runner started" in err
    deadline = time.monotonic() + 180  # the same process imports everything again
    while "warm runner ready" not in log.read_text()[offset:]:
        assert time.monotonic() < deadline, log.read_text()[offset:]
        time.sleep(0.5)
    assert _runner()[0] == pid and "imported files changed: starting again" in log.read_text()
    served = _command(["run", "no-such-pipeline"], required, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE)  # fmt: skip
    _, err = served.communicate(timeout=120)
    assert served.returncode == 1 and "no-such-pipeline" in err and "RIVERLAKE_WARM" not in err
    assert re.search(r"^pid \d+: riverlake run no-such-pipeline$", log.read_text()[offset:], re.M)
