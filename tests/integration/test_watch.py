"""`riverlake run flights --watch`: the stream is consumed continuously while the batch
pipeline re-runs and picks up each new daily drop; Ctrl-C stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from riverlake import lake
from riverlake.settings import get_settings
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

LAKE = "s3://riverlake-test/watch"


def _rows(name: str, settings) -> list[dict]:
    t = lake.table(name, settings)
    return [] if t is None else t.to_arrow().to_pylist()


def test_watch_keeps_the_lake_current_until_ctrl_c(stack_env, tmp_path):
    settings = get_settings(lake_url=LAKE)
    env = {**os.environ, "RIVERLAKE_LAKE_URL": LAKE}
    # Its output goes to a file: a pipe nobody reads while it runs fills up (64 KiB) and
    # then blocks every thread of the command that writes a line.
    log = (tmp_path / "watch.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "riverlake.ops.cli", "run", "flights", "--watch", "--interval", "3",
         "--start", "2013-01-01", "--end", "2013-01-01"],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline, days, events = time.monotonic() + 240, set(), []
        while time.monotonic() < deadline:
            days = {r["day"] for r in _rows("flights", settings)}
            events = _rows("flight_events", settings)
            if {1, 2, 3} <= days and len(events) >= 20:
                break
            time.sleep(3)
        assert {1, 2, 3} <= days  # the demo upstream dropped a day per cycle; each landed
        assert len(events) >= 20  # the replayer's events, committed while batches ran
        ids = [e["event_id"] for e in events]
        assert len(ids) == len(set(ids))
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=120)
        log.seek(0)
        out = log.read()
    assert proc.returncode == 0, out[-3000:]
    assert "watch stopped" in out
    assert out.count("pipeline flights done in") >= 3


def test_watch_stops_loudly_when_its_stream_consumer_dies(stack_env):
    """A consumer that cannot go on (here: the events table has another type for
    event_id, which no retry fixes) stops the watch with its reason and exit code 1,
    instead of dying silently while the batch runs go on."""
    import pyarrow as pa

    lake_url = "s3://riverlake-test/watch-dead"
    settings = get_settings(lake_url=lake_url)
    lake.write_table("flight_events", pa.table({"event_id": pa.array([1], pa.int64())}),
                     settings=settings)  # fmt: skip
    env = {**os.environ, "RIVERLAKE_LAKE_URL": lake_url}
    proc = subprocess.run(
        [sys.executable, "-m", "riverlake.ops.cli", "run", "flights", "--watch", "--interval", "3",
         "--start", "2013-01-01", "--end", "2013-01-01"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "riverlake: error: watch stopped: the stream consumer of flight_events died: column "
        "'event_id' of table 'flight_events' is int64"
    ), last
    assert [r["event_id"] for r in _rows("flight_events", settings)] == [1]  # nothing added
