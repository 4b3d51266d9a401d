"""Stopping `riverlake serve` stops every server process it started: `panel serve
--num-procs N` forks N workers that outlived their parent (a SIGTERM to the command left
them serving, orphaned, for as long as the machine ran)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from riverlake.ops.stack import free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def _serving(port: int) -> list[int]:
    """Pids of the processes whose command line serves ``port``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"panel" in argv and str(port).encode() in argv:
            pids.append(int(proc.name))
    return pids


@pytest.mark.parametrize("procs", [1, 2])
def test_a_stopped_server_leaves_no_process_behind(tmp_path, procs):
    port = free_port()
    env = {**os.environ, "RIVERLAKE_LAKE_URL": str(tmp_path / "lake"),
           "RIVERLAKE_HOME": str(tmp_path / "home")}  # fmt: skip
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    cli = subprocess.Popen([sys.executable, "-m", "riverlake.ops.cli", "serve", "--port",
                            str(port), "--num-procs", str(procs)], env=env, cwd=ROOT,
                           stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                assert cli.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.2)
        # The port opens when the parent binds it, before it forks its workers: wait for them.
        want = 1 if procs == 1 else 1 + procs
        deadline = time.monotonic() + 30
        while len(servers := _serving(port)) < want and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(servers) == want, servers  # the fault's setup
        cli.send_signal(signal.SIGTERM)
        cli.wait(timeout=60)
        deadline = time.monotonic() + 30
        while _serving(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _serving(port) == [], f"left serving: {_serving(port)}"
    finally:
        for pid in _serving(port):
            os.kill(pid, signal.SIGKILL)
        if cli.poll() is None:
            cli.kill()
        log.close()
