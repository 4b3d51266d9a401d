"""Shared fixtures: one real local stack per test session, on free ports.

Services a test needs may be absent on a user's machine: those tests skip with the
reason. Under CI (CI=true or CI=1, as CI services set it) nothing skips: the hooks below
turn every skip, wherever it comes from, into a failure naming its reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}

# Flows run by unit tests (no API URL) start Prefect's ephemeral server, which creates its
# database first: Prefect waits 20 s for it by default, which a loaded 2-core CI machine
# once exceeded. Set before Prefect is imported (its settings are read then).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def need(condition: bool, reason: str) -> None:
    """Skip the test on a user's machine when ``condition`` is false (in CI: fail it)."""
    if not condition:
        pytest.skip(reason)


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a skipped test fails: no future skip, wherever it is written, slips through."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"CI={os.environ['CI']} but the test skipped: {_skip_reason(report)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """In CI a module that skips itself at collection fails too."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"CI={os.environ['CI']} but the module skipped: {_skip_reason(report)}"


def pytest_collection_modifyitems(session, config, items):
    """The containers tier runs last: it builds the image and runs a dozen containers, and
    the timing-sensitive fault tests of the local stack should not run after it."""
    items.sort(key=lambda item: item.get_closest_marker("containers") is not None)


def _free_port_block(width: int = 14) -> int:
    """A port p such that p..p+width are all free (SeaweedFS uses s3_port+0..+13)."""
    from riverlake.ops.stack import free_port, port_free

    for _ in range(50):
        p = free_port()
        if p + width < 65000 and all(port_free(p + i) for i in range(width)):
            return p
    raise RuntimeError("no free block of ports")


@pytest.fixture(scope="session")
def stack_env(tmp_path_factory) -> dict[str, str]:
    """Start the real local stack (Prefect server + SeaweedFS) once; stop it at the end."""
    from riverlake.ops import stack
    from riverlake.settings import get_settings

    home = tmp_path_factory.mktemp("riverlake-home")
    env = {
        "RIVERLAKE_HOME": str(home),
        "RIVERLAKE_PREFECT_PORT": str(stack.free_port()),
        "RIVERLAKE_S3_PORT": str(_free_port_block()),
        "RIVERLAKE_DASHBOARD_PORT": "0",
        "RIVERLAKE_LAKE_URL": "s3://riverlake-test/lake",
        "RIVERLAKE_WORKERS": "2",
        "RIVERLAKE_API_PORT": str(stack.free_port()),
        "RIVERLAKE_NATS_PORT": str(_free_port_block(2)),
        "RIVERLAKE_REPLAY_RATE": "5",  # the replayer runs, gently
        "RIVERLAKE_METRICS_PORT": str(stack.free_port()),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    settings = get_settings()
    try:
        stack.up(settings)
    except Exception:
        stack.down(settings)
        raise
    yield env
    stack.down(get_settings())
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def riverlake_cli(
    *args: str, env: dict[str, str] | None = None, timeout: int = 300, cwd: Path | None = None
):
    """Run the real `riverlake` command in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "riverlake.ops.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        # A user's shell: no PREFECT_* the test process may have picked up. A command of
        # its own, as these tests were written for (the warm runner: test_warm.py).
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
            "RIVERLAKE_WARM": "0",
            **(env or {}),
        },
        cwd=cwd or ROOT,
    )
