"""Fault-injection helpers for the pipeline fault tests: a CLI run whose stderr is read as
it streams, process-group kills that leave no survivor, and the flights truths.

Nothing here mocks anything: the CLI is the real ``riverlake`` command in its own
process group, and the truths are read from the real lake.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from riverlake import lake
from riverlake.analytics.flights import (
    CURATED_TABLE,
    DAILY_TABLE,
    NATURAL_KEY,
    QUARANTINE_TABLE,
    YEARLY_TABLES,
)
from riverlake.demo import data as demo_data
from riverlake.settings import Settings, get_settings
from tests.conftest import ROOT

#: Every table the flights pipeline's curated and gold steps write.
GOLD_TABLES = (DAILY_TABLE, *YEARLY_TABLES)


def cli_env(extra: dict[str, str]) -> dict[str, str]:
    """A user's shell (no PREFECT_* the test process picked up) plus ``extra``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # Prefect's console handler wraps at the terminal width: one log record, one line.
    # The faults kill the command's own process group: it runs in a process of its own,
    # not forked by the stack's warm runner (whose faults are tests/integration/test_warm.py).
    return {**base, "COLUMNS": "1000", "RIVERLAKE_WARM": "0", **extra}


class CliRun:
    """The real ``riverlake`` command in its own session (process group), its stderr read
    line by line as it streams, each line with the monotonic time it arrived."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "riverlake.ops.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=cli_env(env),
            cwd=ROOT,
            start_new_session=True,  # its own process group: a kill reaches every child
        )
        self.pgid = self.proc.pid
        self.t_end = float("inf")  # when it was seen to exit
        self.lines: list[tuple[float, str]] = []
        self.stdout = ""
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read_err, daemon=True),
            threading.Thread(target=self._read_out, daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_out(self) -> None:
        self.stdout = self.proc.stdout.read()

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines)

    def tail(self, n: int = 40) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines[-n:])

    def find(self, pattern: str) -> list[str]:
        rx = re.compile(pattern)
        with self._cond:
            return [line for _, line in self.lines if rx.search(line)]

    def wait_line(self, pattern: str, timeout: float = 180) -> tuple[float, str]:
        """Block until a stderr line matches ``pattern``; its arrival time and text.

        Fails (with the log's tail) when the run exits or the timeout passes first.
        """
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for t, line in self.lines[seen:]:
                    if rx.search(line):
                        return t, line
                seen = len(self.lines)
                if self.proc.poll() is not None and not self._readers[0].is_alive():
                    raise AssertionError(
                        f"run exited ({self.proc.returncode}) before a line matched "
                        f"{pattern!r}:\n{self.tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no line matched {pattern!r} in {timeout}s:\n{self.tail()}"
                    )
                self._cond.wait(min(left, 0.5))

    def wait(self, timeout: float = 240) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.t_end = min(self.t_end, time.monotonic())
        for t in self._readers:
            t.join(timeout=10)
        return rc

    def kill_group(self) -> float:
        """SIGKILL the whole process group; return when no process of it is left."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        t = time.monotonic()
        self.wait(timeout=30)
        deadline = time.monotonic() + 30
        while group_members(self.pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = group_members(self.pgid)
        assert not left, f"processes of the killed group survived: {left}"
        return t

    def summary(self) -> dict:
        """The run's summary: ``riverlake run --json`` prints it alone on stdout."""
        return json.loads(self.stdout)


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces: the fields after its closing parenthesis are fixed
    return raw[raw.rindex(")") + 2 :].split()


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of the process group ``pgid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(entry.name))
    return out


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (alive, not zombies)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields and fields[0] != "Z" and int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# --------------------------------------------------------------------------- the truths


def days(start: str, end: str) -> list[str]:
    return [d.strftime("%Y-%m-%d") for d in pd.date_range(start, end)]


def source_rows(start: str, end: str) -> pd.DataFrame:
    """The demo upstream's flights of [start, end]: what the drops hold."""
    raw = demo_data.load("flights")
    d = pd.to_datetime(raw[["year", "month", "day"]].astype("int64"))
    return raw[(d >= start) & (d <= end)].reset_index(drop=True)


def lake_settings(lake_url: str) -> Settings:
    return get_settings(lake_url=lake_url)


def curated(settings: Settings) -> pd.DataFrame:
    return lake.read_pandas(CURATED_TABLE, settings=settings)


def expected_gold(flights: pd.DataFrame) -> pd.DataFrame:
    """carrier_origin_daily recomputed with plain pandas, the independent way of
    tests/integration/test_flights_pipeline.py::test_gold_matches_independent_pandas,
    from the curated rows (a cancelled flight is one with no departure time)."""
    f = flights.assign(date=pd.to_datetime(flights["flight_date"]))
    g = f.groupby(["date", "carrier", "origin"])
    return pd.DataFrame(
        {
            "flights": g.size(),
            "cancelled": g["cancelled"].apply(lambda s: int(s.sum())),
            "mean_arr_delay": g["arr_delay"].mean().astype("float64"),
            "on_time_rate": g["arr_delay"].apply(
                lambda s: float((s.dropna() < 15).mean()) if s.notna().any() else np.nan
            ),
        }
    ).sort_index()


def natural_keys(frame: pd.DataFrame) -> pd.Series:
    """One text key per row: the flight's natural key (analytics.flights.NATURAL_KEY)."""
    cols = [
        frame[c].astype("int64").astype(str)
        if pd.api.types.is_numeric_dtype(frame[c])
        else frame[c].astype(str)
        for c in NATURAL_KEY
    ]
    return pd.Series(["|".join(parts) for parts in zip(*cols, strict=True)], index=frame.index)


def check_truths(lake_url: str, start: str, end: str, summary: dict | None = None) -> dict:
    """Assert the flights truths of the lake ``lake_url`` for the days [start, end].

    Every source row of those days is in the curated table exactly once (no row lost,
    none doubled, no natural key twice); ``summary`` (a completed run's, when given)
    accounts for every row it read; carrier_origin_daily equals a pandas recomputation
    from the curated table, and every gold table carries the curated batch.
    Returns the counts: source rows, curated rows, lost, doubled.
    """
    settings = lake_settings(lake_url)
    src = source_rows(start, end)
    got = curated(settings)
    src_keys, got_keys = natural_keys(src), natural_keys(got)
    counts = got_keys.value_counts()
    doubled = int((counts - 1).clip(lower=0).sum())
    lost = len(set(src_keys) - set(got_keys))
    assert sorted(got["flight_date"].dt.strftime("%Y-%m-%d").unique()) == days(start, end)
    assert lost == 0, f"{lost} source rows are missing from the curated table"
    assert doubled == 0, f"{doubled} rows doubled: {counts[counts > 1].head().to_dict()}"
    assert src_keys.is_unique  # the demo's days have no repeated natural key ...
    assert len(got) == len(src)  # ... so every source row is exactly one curated row
    assert set(got_keys) == set(src_keys)
    quarantined = lake.table(QUARANTINE_TABLE, settings)
    assert quarantined is None or quarantined.rows() == 0  # the demo's rows are all clean
    if summary is not None:
        assert summary["rows_in"] == (
            summary["rows_loaded"] + summary["rows_quarantined"] + summary["rows_merged"]
        ), summary
        if not summary["curated_skipped"]:  # this run read and committed the batch
            assert summary["rows_in"] == len(src), summary
            assert summary["rows_loaded"] == len(got), summary
    # The curated batch: committed once, and every gold table built from it.
    table = lake.table(CURATED_TABLE, settings)
    batches = [c["batch"] for c in table.commits() if c["batch"]]
    assert len(batches) == len(set(batches)), f"a batch committed twice: {batches}"
    batch = batches[0].split(":", 1)[1]
    if summary is not None:
        assert summary["batch"] == batch, (summary["batch"], batches)
    for name in GOLD_TABLES:
        gold = lake.table(name, settings)
        assert gold is not None, f"gold table {name} is missing"
        assert gold.has_batch(f"{name}:{batch}"), f"{name} was not built from batch {batch}"
    want = expected_gold(got)
    gold = lake.read_pandas(DAILY_TABLE, settings=settings)
    have = gold.set_index(["flight_date", "carrier", "origin"]).sort_index()
    have.index = have.index.set_names(["date", "carrier", "origin"])
    assert len(have) == len(want) and have.index.equals(want.index)
    assert (have["flights"].to_numpy() == want["flights"].to_numpy()).all()
    assert (have["cancelled"].to_numpy() == want["cancelled"].to_numpy()).all()
    np.testing.assert_allclose(have["mean_arr_delay"], want["mean_arr_delay"], equal_nan=True)
    np.testing.assert_allclose(have["on_time_rate"], want["on_time_rate"], equal_nan=True)
    assert int(have["flights"].sum()) == len(src)
    return {"source": len(src), "curated": len(got), "lost": lost, "doubled": doubled}


# --------------------------------------------------------------------------- run logs

#: Logging that lets a test see where a run is: every task's start ("Executing task ...",
#: a DEBUG line of Prefect's task engine) and the pid of the process it runs in. Standard
#: Prefect settings (overrides of its logging.yml by environment variable).
TRACE_ENV = {
    "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": "DEBUG",
    "PREFECT_LOGGING_FORMATTERS_STANDARD_TASK_RUN_FMT": (
        "%(asctime)s.%(msecs)03d | %(levelname)-7s | pid %(process)d | "
        "Task run %(task_run_name)r - %(message)s"
    ),
}

STARTED = r"pid (?P<pid>\d+) \| Task run '(?P<run>[^']+)' - Executing task '(?P<task>[^']+)'"
FINISHED = r"pid (?P<pid>\d+) \| Task run '(?P<run>[^']+)' - Finished in state (?P<state>\w+)"


def task_events(lines: list[str]) -> tuple[list[tuple], list[tuple]]:
    """From a run's stderr, in order: the task runs started, as (task run, task, pid), and
    those finished, as (task run, final state, pid)."""
    started, finished = [], []
    for line in lines:
        if m := re.search(STARTED, line):
            started.append((m["run"], m["task"], int(m["pid"])))
        elif m := re.search(FINISHED, line):
            finished.append((m["run"], m["state"], int(m["pid"])))
    return started, finished


def unfinished(lines: list[str]) -> dict[str, str]:
    """Task runs that started and never finished: task run -> task."""
    started, finished = task_events(lines)
    done = {run for run, _, _ in finished}
    return {run: task for run, task, _ in started if run not in done}


# --------------------------------------------------------------------------- the stack


def stack_service(name: str):
    """The local stack's service ``name`` (riverlake.ops.stack) for the session's settings."""
    from riverlake.ops import stack

    (svc,) = [s for s in stack.services(get_settings()) if s.name == name]
    return svc


def stop_service(name: str) -> float:
    """Stop one service of the session's stack as `riverlake down` does (SIGTERM to its
    process group, SIGKILL after 15 s; riverlake.ops.stack), through its pid file; return
    when none of its processes is left and all its ports are free (its monotonic time)."""
    from riverlake.ops import stack

    settings = get_settings()
    svc = stack_service(name)
    info = stack._read_pid(svc, settings.home.resolve())
    assert info is not None and stack._alive(info), f"{name} is not running"
    assert stack._stop(svc, settings.home.resolve())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        group_members(info["pid"]) or not all(stack.port_free(p) for p in svc.ports.values())
    ):
        time.sleep(0.1)
    assert not group_members(info["pid"]), f"{name} survived its stop"
    return time.monotonic()


def start_service(name: str) -> float:
    """Start one stopped service of the session's stack with the stack's own start helper
    (its argv, environment, log and pid file), wait until it answers its health check, then
    let `up` finish the stack's own checks (nothing left to start). Returns the time it
    answered.

    The health wait is the test's own: `up`'s would judge the new process by its
    /proc/<pid>/cmdline, which can still be empty while it is inside execve (see the
    report of tests/integration/test_pipeline_faults.py).
    """
    from riverlake.ops import stack

    settings = get_settings()
    home = settings.home.resolve()
    svc = stack_service(name)
    stack._start(svc, home)
    pid = stack._read_pid(svc, home)["pid"]
    deadline = time.monotonic() + stack.STARTUP_TIMEOUT_S
    while not stack.healthy(svc):
        state = (_stat(pid) or ["X"])[0]
        assert state not in ("Z", "X"), f"{name} exited on restart: {svc.log_file(home)}"
        assert time.monotonic() < deadline, f"{name} did not come back"
        time.sleep(0.2)
    answered = time.monotonic()
    stack.up(settings)
    return answered


def stack_health() -> dict[str, str]:
    """Service -> state (running, unhealthy, stopped) of the session's stack."""
    from riverlake.ops import stack

    return {r["service"]: r["state"] for r in stack.status(get_settings())}
