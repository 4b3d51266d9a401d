"""What a person sees while a command works (riverlake.ops.progress): the pure parts
(state -> lines, log line -> rows), the renderables, and the screen on a pipe and on a
real pseudo-terminal."""

from __future__ import annotations

import gzip
import io
import logging
import os
import pty
import re
import select
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from prefect.client.schemas.objects import Log, State, StateType, TaskRun
from rich.console import Console

from riverlake import lake
from riverlake.ops import progress
from riverlake.ops.progress import PlainLines, Rows, RunView, Screen, ServiceBoard
from riverlake.settings import get_settings
from riverlake.sources import ingest
from riverlake.sources.spec import parse_source

pytestmark = pytest.mark.unit

ANSI = re.compile(r"\x1b\[")
T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    """A monotonic clock the test sets (the board reads time through it)."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# --------------------------------------------------------------------------- the terminal


def test_live_only_on_a_terminal_that_is_not_dumb():
    assert progress.live_wanted(io.StringIO(), {"TERM": "xterm"}) is False
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert progress.live_wanted(tty, {"TERM": "xterm-256color"}) is True
            assert progress.live_wanted(tty, {"TERM": "dumb"}) is False
            assert progress.live_wanted(tty, {"TERM": "unknown"}) is False
    finally:
        os.close(master)
        os.close(slave)


def test_no_color_turns_colour_off_unless_empty():
    assert progress.color_wanted({}) is True
    assert progress.color_wanted({"NO_COLOR": ""}) is True
    assert progress.color_wanted({"NO_COLOR": "1"}) is False


def test_durations_for_a_person():
    assert [progress.seconds(s) for s in (0, 0.04, 12.34, 59.96, 125, -1)] == [
        "0.0s", "0.0s", "12.3s", "1m00s", "2m05s", "0.0s"]  # fmt: skip


# --------------------------------------------------------------------------- up's services


def test_the_service_board_says_a_line_per_change_with_the_time_it_took():
    clock, said = Clock(), []
    board = ServiceBoard(say=said.append, clock=clock)
    board.report("seaweedfs", "waiting", "started, pid 41")
    board.report("prefect", "waiting", "already running")
    clock.t += 0.2
    board.report("prefect", "healthy", "")
    board.report("prefect", "healthy", "")  # no change: no line
    clock.t += 12.1
    board.report("seaweedfs", "healthy", "")
    board.report("lake bucket", "waiting", "s3://b/lake", kind="step")
    clock.t += 1
    board.report("lake bucket", "done", "s3://b/lake", kind="step")
    board.report("nats", "waiting", "started, pid 43")
    clock.t += 3
    board.report("nats", "failed", "exited during start-up")
    assert said == [
        "service seaweedfs: waiting (started, pid 41)",
        "service prefect: waiting (already running)",
        "service prefect: healthy in 0.2s (already running)",
        "service seaweedfs: healthy in 12.3s (started, pid 41)",
        "step lake bucket: waiting (s3://b/lake)",
        "step lake bucket: done in 1.0s (s3://b/lake)",
        "service nats: waiting (started, pid 43)",
        "service nats: failed after 3.0s (exited during start-up)",
    ]
    assert board.lines()[0] == "service seaweedfs: healthy in 12.3s (started, pid 41)"


def test_the_service_board_renders_each_service_with_its_state_and_time():
    clock = Clock()
    board = ServiceBoard(clock=clock)
    board.report("seaweedfs", "waiting", "started, pid 41")
    board.report("prefect", "waiting", "already running")
    clock.t += 2.5
    board.report("prefect", "healthy")
    text = render(board.renderable())
    lines = [ln.split() for ln in text.splitlines()]
    assert lines[0][1:4] == ["seaweedfs", "waiting", "2.5s"]
    assert lines[1] == ["✓", "prefect", "healthy", "2.5s", "already", "running"]


def render(renderable, width: int = 120) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None, force_terminal=False).print(renderable)
    return out.getvalue()


# --------------------------------------------------------------------------- rows in the logs


def test_rows_are_read_from_the_lakes_own_commit_lines(tmp_path, caplog):
    settings = get_settings(lake_url=str(tmp_path / "lake"), home=tmp_path)
    frame = pd.DataFrame({"year": [2013] * 5, "month": [1, 1, 2, 2, 2], "k": range(5)})
    with caplog.at_level(logging.INFO, logger="riverlake"):
        lake.write_table("t", frame, partition_by=["year", "month"], settings=settings)
        lake.write_table("t", frame.head(2), partition_by=["year", "month"], settings=settings)
        lake.write_table("u", frame.head(3), settings=settings, app_id="u:b1")
        lake.write_table("u", frame.head(3), settings=settings, app_id="u:b1")  # skipped
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("riverlake.lake")]
    assert any(m.startswith("table t created at version 0: 5 rows") for m in messages), messages
    assert any(m.startswith("table t version 1: 2 rows in") for m in messages), messages
    assert progress.rows_in_logs(messages) == [Rows("t", 7, "committed"), Rows("u", 3, "committed")]


def test_a_sources_ingest_summary_stands_for_its_commit(tmp_path, caplog):
    settings = get_settings(lake_url=str(tmp_path / "lake"), home=tmp_path)
    drops = tmp_path / "drops"
    drops.mkdir()
    (drops / "flights-2013-01-01.csv.gz").write_bytes(
        gzip.compress(b"year,month,day,flight\n2013,1,1,1\n2013,1,1,2\n2013,13,1,3\n"))  # fmt: skip
    (drops / "t.csv").write_bytes(b"id,name,value\n1,a,1.0\n2,b,2.0\n")
    landing = parse_source({"name": "flight_drops", "kind": "files", "url": f"{drops}/*.csv.gz",
                            "format": "csv", "sink": "landing", "table": "flights",
                            "columns": ["year", "month", "day", "flight"]}, settings)  # fmt: skip
    table = parse_source({"name": "t", "kind": "files", "url": f"{drops}/t.csv", "format": "csv",
                          "table": "t", "columns": ["id", "name", "value"],
                          "schema": {"id": "int64", "name": "string", "value": "float64"}},
                         settings)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="riverlake"):
        landed = ingest.ingest(landing, settings, commit_state=False)
        first = [r.getMessage() for r in caplog.records]
        caplog.clear()
        loaded = ingest.ingest(table, settings)
        second = [r.getMessage() for r in caplog.records]
    # the landing source: its rows are landed, not committed (its quarantine is a commit)
    assert (landed.rows_loaded, landed.rows_quarantined) == (2, 1)
    assert Rows("flight_drops", 2, "landed") in progress.rows_in_logs(first)
    assert Rows("source_quarantine", 1, "committed") in progress.rows_in_logs(first)
    # a table source: the summary stands for the table's commit (no double count)
    assert progress.rows_in_logs(second) == [Rows("t", loaded.rows_loaded, "loaded")] == [
        Rows("t", 2, "loaded")]  # fmt: skip
    assert progress.rows_text(progress.rows_in_logs(second)) == "t 2 loaded"


def test_log_lines_that_report_no_rows_are_ignored():
    assert progress.rows_in_logs([
        "table flights already holds batch flights:abc: commit skipped",
        "source weather: nothing new",
        "source weather: {'source': 'weather', 'skipped': True, 'rows_loaded': 0}",
        "source weather: {not a dict",
        "Finished in state Completed()",
    ]) == []  # fmt: skip


# --------------------------------------------------------------------------- task runs


def task_run(name: str, state: StateType, state_name: str, start: int | None = None,
             end: int | None = None, run_id=None) -> TaskRun:  # fmt: skip
    return TaskRun(
        id=run_id or uuid.uuid4(), name=name, task_key=name, dynamic_key="0",
        flow_run_id=uuid.UUID(int=1), state=State(type=state, name=state_name),
        start_time=None if start is None else T0 + timedelta(seconds=start),
        end_time=None if end is None else T0 + timedelta(seconds=end),
    )  # fmt: skip


def log(run: TaskRun | None, message: str, at: int) -> Log:
    return Log(name="riverlake.lake.write", level=20, message=message,
               timestamp=T0 + timedelta(seconds=at), flow_run_id=uuid.UUID(int=1),
               task_run_id=None if run is None else run.id)  # fmt: skip


def test_task_runs_and_their_logs_become_views_in_start_order():
    commit = task_run("commit-flights-960", StateType.COMPLETED, "Completed", 5, 7)
    extract = task_run("extract-flights-139", StateType.RUNNING, "Running", 1)
    gold = task_run("build-gold-082", StateType.PENDING, "Pending")
    logs = [
        log(commit, "table flights created at version 0: 842 rows, batch flights:x", 7),
        log(commit, "table quality_report version 3: 46 rows in 1 files (0 replaced), b", 6),
        log(None, "flights run: {...}", 8),  # the flow's own line: no task's rows
    ]
    views = progress.task_views([gold, commit, extract], logs)
    assert [v.name for v in views] == ["extract-flights-139", "commit-flights-960",
                                       "build-gold-082"]  # fmt: skip
    assert views[1].rows == (Rows("quality_report", 46, "committed"),
                             Rows("flights", 842, "committed"))  # fmt: skip
    assert (views[1].state, views[1].state_type, views[1].final) == ("Completed", "COMPLETED", True)
    now = T0 + timedelta(seconds=10)
    assert progress.run_line(views[1], now) == (
        "task commit-flights-960: Completed in 2.0s: quality_report 46 committed, "
        "flights 842 committed")  # fmt: skip
    assert progress.run_line(views[0], now) == "task extract-flights-139: Running"
    assert progress.run_line(views[2], now) == "task build-gold-082: Pending"


def view(run_id: str, state: str, rows: tuple[Rows, ...] = (), name: str = "") -> RunView:
    state_type = {"Running": "RUNNING", "Completed": "COMPLETED", "Failed": "FAILED",
                  "AwaitingRetry": "SCHEDULED", "Pending": "PENDING"}[state]  # fmt: skip
    return RunView(run_id, name or f"{run_id}-1a2", state, state_type, T0, T0 + timedelta(seconds=3),
                   rows)  # fmt: skip


def test_plain_lines_are_one_per_state_change_and_a_final_line_waits_for_its_rows():
    lines, now = PlainLines(), T0 + timedelta(seconds=3)
    assert lines.update([view("extract", "Running")], now) == ["task extract-1a2: Running"]
    assert lines.update([view("extract", "Running")], now) == []  # nothing changed
    # Completed, its commit line not in the API yet: the line waits one poll ...
    assert lines.update([view("extract", "Completed"), view("transform", "Running")], now) == [
        "task transform-1a2: Running"]  # fmt: skip
    rows = (Rows("flight_drops", 842, "landed"),)
    # ... and comes with the rows the next poll brings
    assert lines.update([view("extract", "Completed", rows), view("transform", "Running")],
                        now) == ["task extract-1a2: Completed in 3.0s: flight_drops 842 landed"]  # fmt: skip
    # a retry is a state change too; the last poll shows every final state at once
    assert lines.update([view("transform", "AwaitingRetry")], now) == [
        "task transform-1a2: AwaitingRetry"]  # fmt: skip
    assert lines.update([view("transform", "Failed")], now, last=True) == [
        "task transform-1a2: Failed in 3.0s"]  # fmt: skip
    # rows that arrive after a final line was shown: one more line
    late = (Rows("flight_drops", 842, "landed"), Rows("flights", 1, "committed"))
    assert lines.update([view("extract", "Completed", late)], now, last=True) == [
        "task extract-1a2: Completed in 3.0s: flight_drops 842 landed, flights 1 committed"]  # fmt: skip


def test_the_flow_runs_line():
    flow = view("f", "Completed", name="flights 2013-01-01")
    assert progress.run_line(flow, T0, kind="flow") == (
        "flow run 'flights 2013-01-01': Completed in 3.0s")  # fmt: skip


def test_the_live_table_shows_each_task_its_state_time_and_rows():
    flow = RunView("f", "flights 2013-01-01", "Running", "RUNNING", T0)
    tasks = [view("extract-flights", "Completed", (Rows("flight_drops", 842, "landed"),)),
             view("transform-month", "Running")]  # fmt: skip
    text = render(progress.tasks_table(flow, tasks, T0 + timedelta(seconds=4)))
    head, first, second = text.splitlines()[:3]
    assert head == "flow run 'flights 2013-01-01': Running 4.0s"
    assert first.split() == ["✓", "extract-flights-1a2", "Completed", "3.0s", "flight_drops",
                             "842", "landed"]  # fmt: skip
    assert second.split()[1:4] == ["transform-month-1a2", "Running", "4.0s"]
    ascii_text = render(progress.tasks_table(flow, tasks, T0, ascii_only=True))
    assert ascii_text.splitlines()[1].startswith("+ extract-flights-1a2")
    assert render(progress.tasks_table(None, [], T0)).strip() == "starting the flow run ..."


# --------------------------------------------------------------------------- the screen


def test_on_a_pipe_steps_are_plain_lines_without_ansi_and_a_failed_step_says_nothing():
    out = io.StringIO()
    screen = Screen(stream=out, environ={"TERM": "xterm-256color"})
    assert screen.live is False
    with screen.step("compacting table flights") as step:
        step.update("compacting table flights (2 files)")
    with screen.step("reading the catalog", quiet=True):
        pass
    with pytest.raises(RuntimeError), screen.step("vacuuming table flights"):
        raise RuntimeError("refused")
    with screen.live_view(lambda: "never drawn"):
        screen.say("a line")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and not ANSI.search(out.getvalue())
    assert re.fullmatch(r"compacting table flights \(2 files\): done in \d+\.\ds", lines[0])
    assert lines[1] == "a line"


def read_all(fd: int) -> bytes:
    data = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("no_color", ["", "1"])
def test_on_a_terminal_the_display_is_live_and_log_lines_go_above_it(no_color):
    master, slave = pty.openpty()
    tty = os.fdopen(slave, "w", encoding="utf-8", closefd=True)
    try:
        screen = Screen(stream=tty, environ={"TERM": "xterm-256color", "NO_COLOR": no_color})
        assert screen.live is True and screen.color is (no_color == "")
        handler = logging.StreamHandler(sys.stderr)  # a log handler on stderr
        logger = logging.getLogger("riverlake-progress-test")
        logger.addHandler(handler)
        logger.propagate = False
        clock = Clock()
        board = ServiceBoard(clock=clock)
        try:
            with screen.live_view(board.renderable):
                board.report("prefect", "waiting", "started, pid 7")
                time.sleep(0.6)  # a few refreshes
                logger.warning("a warning while the display is up")
                clock.t += 3
                board.report("prefect", "healthy")
                time.sleep(0.4)
        finally:
            logger.removeHandler(handler)
        assert handler.stream is sys.stderr  # given back after the display
        with screen.step("compacting table flights"):
            time.sleep(0.3)
        tty.flush()
        raw = read_all(master).decode()
    finally:
        tty.close()
        os.close(master)
    assert "\x1b[1A" in raw or "\x1b[2K" in raw  # the display redraws in place
    assert "a warning while the display is up" in raw
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    assert re.search(r"✓ prefect +healthy +3\.0s +started, pid 7", plain), plain
    assert re.search(r"✓ compacting table flights: done in \d+\.\ds", plain)
    colours = re.findall(r"\x1b\[[0-9;]*(?:3[0-7]|9[0-7]|38;[0-9;]+)m", raw)
    assert bool(colours) is (no_color == "")
