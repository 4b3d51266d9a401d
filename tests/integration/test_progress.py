"""What a person sees while `riverlake run` and `riverlake up` work, on the session's real
stack: plain lines on stderr without a terminal, a live display under a real
pseudo-terminal, and stdout holding the machine output alone either way."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest

from riverlake.settings import get_settings
from tests.conftest import ROOT, riverlake_cli

pytestmark = pytest.mark.integration

DAY = "2013-01-01"
#: The flights pipeline's task runs: named <task>-<suffix>, or after what they work on.
TASKS = (r"check-sources-\w+", r"check-cluster-\w+", "land-flight_drops", r"transform-\d{4}-\d{2}",
         r"commit-curated-\w+", r"build-gold-\w+")  # fmt: skip
#: The session stack's services that `up` starts (the worker is started by `deploy`).
SERVICES = ("seaweedfs", "prefect", "nats", "weather-api", "event-replayer", "metrics", "runner")
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
COLOUR = re.compile(r"\x1b\[[0-9;]*(?:3[0-7]|9[0-7]|38;[0-9;]+)m")


def in_terminal(*args: str, env: dict[str, str] | None = None, stdout_pipe: bool = False,
                timeout: float = 240) -> tuple[int, str, str]:  # fmt: skip
    """The real `riverlake` command with stdin and stderr (and stdout, unless
    ``stdout_pipe``) on a pseudo-terminal of 200 columns, as at a person's terminal.

    Returns the exit status, everything the terminal received, and the piped stdout.
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("PREFECT_") and k not in ("NO_COLOR", "TERM", "COLUMNS")}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "riverlake.ops.cli", *args],
        stdin=slave, stdout=subprocess.PIPE if stdout_pipe else slave, stderr=slave,
        env={**base, "TERM": "xterm-256color", **(env or {})}, cwd=ROOT,
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    piped: list[bytes] = []
    reader = None
    if stdout_pipe:
        reader = threading.Thread(target=lambda: piped.append(proc.stdout.read()), daemon=True)
        reader.start()
    seen = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert time.monotonic() < deadline, f"no end in {timeout}s:\n{seen[-3000:]!r}"
            if select.select([master], [], [], 0.5)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the command closed the terminal (it exited)
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    if reader is not None:
        reader.join(timeout=10)
    return rc, seen.decode(errors="replace"), (piped[0] if piped else b"").decode()


def screen_lines(raw: str) -> list[str]:
    """The terminal's output without escape codes, one entry per line or redraw."""
    return [ln.strip() for ln in re.split(r"[\r\n]+", ESCAPE.sub("", raw)) if ln.strip()]


# --------------------------------------------------------------------------- riverlake run


def test_run_without_a_terminal_prints_a_plain_line_per_state_change(stack_env):
    lake_url = "s3://riverlake-test/progress-plain"  # its own lake: the run commits
    res = riverlake_cli("run", "flights", "--json", "--start", DAY, "--end", DAY,
                        env={"RIVERLAKE_LAKE_URL": lake_url})  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)  # stdout: exactly one JSON document, nothing else
    assert res.stdout.count("\n") == 1 and res.stdout.endswith("}\n")
    assert "\x1b" not in res.stderr  # no ANSI code anywhere on stderr
    lines = res.stderr.splitlines()

    def where(pattern: str) -> list[int]:
        return [i for i, ln in enumerate(lines) if re.fullmatch(pattern, ln)]

    completed = {}
    for task in TASKS:
        done = where(rf"task {task}: Completed in \d+\.\ds(: .*)?")
        assert done, (task, res.stderr[-3000:])
        completed[task] = done[0]
        name = lines[done[0]].split(":")[0]
        for i in where(rf"{re.escape(name)}: Running(: .*)?"):  # Running (when seen) first
            assert i < done[0]
    # the rows each task reported, as the run's summary counts them
    assert summary["rows_loaded"] == summary["rows_in"] > 0 and not summary["curated_skipped"]
    assert where(rf"task commit-curated-\w+: Completed in \d+\.\ds: .*"
                 rf"\bflights {summary['rows_loaded']} committed.*")  # fmt: skip
    assert where(rf"task land-flight_drops: Completed in \d+\.\ds: "
                 rf"flight_drops {summary['landing']['rows_loaded']} landed")  # fmt: skip
    weather = summary["sources"]["weather"]["rows_loaded"]
    assert where(rf"task ingest-weather: Completed in \d+\.\ds: weather {weather} loaded")
    daily = summary["gold_rows"]["carrier_origin_daily"]  # gold's commits reach the run too
    assert where(rf"task build-gold-\w+: Completed in \d+\.\ds: .*"
                 rf"\bcarrier_origin_daily {daily} committed.*")  # fmt: skip
    assert "UserWarning" not in res.stderr
    # the flow run's own states, after its tasks; then the time it took, once
    (running,) = where(rf"flow run 'flights {DAY}': Running")
    (flow_done,) = where(rf"flow run 'flights {DAY}': Completed in \d+\.\ds")
    assert running < min(completed.values()) and flow_done > max(completed.values())
    (took,) = where(r"pipeline flights done in \d+\.\ds")
    assert took > flow_done


def _a_live_run(rc: int, raw: str) -> None:
    assert rc == 0, raw[-3000:]
    assert "\x1b[1A" in raw and "\x1b[2K" in raw  # cursor up, erase line: redrawn in place
    assert COLOUR.search(raw)  # colour on a terminal (NO_COLOR unset)
    lines = screen_lines(raw)
    summary = json.loads(lines[-1])  # the terminal ends with the summary
    assert summary["rows_loaded"] == summary["rows_in"] > 0
    assert re.fullmatch(r"pipeline flights done in \d+\.\ds", lines[-2])
    text = "\n".join(lines)
    for task in TASKS:  # the last frame: every task run, completed, with its time
        assert re.search(rf"✓ {task} +Completed +\d+\.\ds", text), (task, text[-3000:])
    assert re.search(rf"✓ commit-curated-\w+ +Completed +\d+\.\ds +.*"
                     rf"\bflights {summary['rows_loaded']} committed", text)  # fmt: skip
    assert re.search(rf"flow run 'flights {DAY}': Completed \d+\.\ds", text)
    assert re.search(r"flow run 'flights 2013-01-01': Running \d+\.\ds", text)  # while it ran
    assert "| INFO    |" not in text  # Prefect's INFO lines stay in its UI, not on the display


def test_run_under_a_terminal_draws_the_live_display_and_ends_with_the_summary(stack_env):
    lake_url = "s3://riverlake-test/progress-tty"
    _a_live_run(*in_terminal("run", "flights", "--json", "--start", DAY, "--end", DAY,
                             env={"RIVERLAKE_LAKE_URL": lake_url, "RIVERLAKE_WARM": "0"})[:2])  # fmt: skip


def test_a_warm_run_under_a_terminal_draws_the_same_display(stack_env):
    """The warm runner's child writes to the client's own terminal (its descriptors)."""
    rc, raw, _ = in_terminal("up", stdout_pipe=True)  # the runner under this environment
    assert rc == 0, raw[-3000:]
    lake_url = "s3://riverlake-test/progress-tty-warm"
    _a_live_run(*in_terminal("run", "flights", "--json", "--start", DAY, "--end", DAY,
                             env={"RIVERLAKE_LAKE_URL": lake_url, "RIVERLAKE_WARM": "require"})[:2])  # fmt: skip


# --------------------------------------------------------------------------- riverlake up


def _stop_metrics() -> None:
    """Stop the session stack's metrics exporter as `down` would (`up` restarts it)."""
    from riverlake.ops import stack

    settings = get_settings()
    (svc,) = [s for s in stack.services(settings) if s.name == "metrics"]
    assert stack._stop(svc, settings.home.resolve())
    deadline = time.monotonic() + 30
    while not stack.port_free(settings.metrics_port) and time.monotonic() < deadline:
        time.sleep(0.1)


def _restore_stack() -> None:
    from riverlake.ops import stack

    settings = get_settings()
    if any(r["state"] != "running" for r in stack.status(settings) if r["service"] in SERVICES):
        stack.up(settings)


def test_up_reports_each_service_healthy_and_the_one_it_restarted(stack_env):
    _stop_metrics()
    try:
        res = riverlake_cli("up")
    finally:
        _restore_stack()
    assert res.returncode == 0, res.stderr[-3000:]
    assert "\x1b" not in res.stderr + res.stdout
    lines = res.stderr.splitlines()
    table = {ln.split()[0]: ln.split() for ln in res.stdout.splitlines()[1:]}
    # already up: checked, healthy (the runner is started again: this command's environment
    # is not the one it was started under, see test_warm.py)
    for name in (s for s in SERVICES if s not in ("metrics", "runner")):
        assert f"service {name}: waiting (already running)" in lines, res.stderr
        assert any(re.fullmatch(rf"service {name}: healthy in \d+\.\ds \(already running\)", ln)
                   for ln in lines), res.stderr  # fmt: skip
        assert table[name][1] == "running"
    pid = table["metrics"][2]  # started again: its new process, waited for until healthy
    assert f"service metrics: waiting (started, pid {pid})" in lines, res.stderr
    (healthy,) = [ln for ln in lines if ln.startswith("service metrics: healthy in ")]
    assert re.fullmatch(rf"service metrics: healthy in \d+\.\ds \(started, pid {pid}\)", healthy)
    assert lines.index(f"service metrics: waiting (started, pid {pid})") < lines.index(healthy)
    assert any(re.fullmatch(r"step lake bucket: done in \d+\.\ds \(s3://riverlake-test/lake\)", ln)
               for ln in lines)  # fmt: skip
    assert re.fullmatch(r"stack up in \d+\.\ds; state in .*", lines[-2])
    assert list(table) == [*SERVICES, "worker"]  # stdout: the services' table alone


def test_up_under_a_terminal_shows_the_services_live_and_keeps_stdout_plain(stack_env):
    rc, raw, stdout = in_terminal("up", stdout_pipe=True)
    assert rc == 0, raw[-3000:]
    assert "\x1b[?25l" in raw and ("\x1b[1A" in raw or "\x1b[2K" in raw)  # a live display
    text = "\n".join(screen_lines(raw))
    for name in SERVICES:  # the last frame: each service healthy, with its time (the runner
        # is started again under this command's environment: see test_warm.py)
        how = r"(already running|started, pid \d+)" if name == "runner" else "already running"
        assert re.search(rf"✓ {name} +healthy +\d+\.\ds +{how}", text), text
    assert "\x1b" not in stdout
    assert [ln.split()[0] for ln in stdout.splitlines()] == ["SERVICE", *SERVICES, "worker"]


def test_a_dumb_terminal_gets_plain_lines_and_no_color_a_display_without_colour(stack_env):
    rc, raw, _ = in_terminal("up", env={"TERM": "dumb"})
    assert rc == 0, raw[-3000:]
    assert "\x1b" not in raw  # no escape code at all
    assert "service prefect: waiting (already running)" in screen_lines(raw)
    rc, raw, _ = in_terminal("up", env={"NO_COLOR": "1"})
    assert rc == 0, raw[-3000:]
    assert "\x1b[1A" in raw or "\x1b[2K" in raw  # still drawn in place ...
    assert not COLOUR.search(raw), COLOUR.findall(raw)[:5]  # ... without colour
    assert re.search(r"✓ prefect +healthy", "\n".join(screen_lines(raw)))
