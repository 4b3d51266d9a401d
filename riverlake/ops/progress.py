"""What a person sees while a long command works: a live display on a terminal, plain
lines anywhere else, always on stderr (stdout carries only machine output).

* ``riverlake up``: each service with its health check (waiting, healthy, failed) and
  the time it took (:class:`ServiceBoard`, fed by ``stack.up``'s ``report``);
* ``riverlake run``: the flow run's task runs as Prefect reports them, polled from the
  Prefect API with Prefect's own client in a background thread (:class:`RunWatcher`),
  each with its state, its time and the rows the run's own log lines report for it: the
  lake's commits (``table T version V: N rows ...``) and the ingest summaries of the
  sources (``source S: {...}``), read from the run's logs in the API;
* the other long commands and the benchmarks: a spinner naming the step
  (:meth:`Screen.step`).

The live display needs a terminal on stderr and a ``TERM`` other than ``dumb``; colour
is off under ``NO_COLOR``. Otherwise every change is one plain line, without ANSI codes.
The pure parts (state -> lines, log line -> rows) are functions and small classes
without I/O.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

# --------------------------------------------------------------------------- the terminal


def live_wanted(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """A live display (cursor movement) on ``stream``: only a terminal that is not dumb."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # closed or not a file
        return False
    return tty and environ.get("TERM", "").strip().lower() not in ("dumb", "unknown")


def color_wanted(environ: Mapping[str, str]) -> bool:
    """Colour unless ``NO_COLOR`` is set to anything but the empty string (no-color.org)."""
    return environ.get("NO_COLOR", "") == ""


def seconds(s: float) -> str:
    """A duration for a person: ``0.4s``, ``12.3s``, ``2m05s``."""
    s = max(0.0, s)
    if s < 59.95:
        return f"{s:.1f}s"
    m, rest = divmod(round(s), 60)
    return f"{m}m{rest:02d}s"


# --------------------------------------------------------------------------- services


#: States of a service (or a step) of ``riverlake up``.
WAITING, HEALTHY, DONE, FAILED = "waiting", "healthy", "done", "failed"


@dataclass
class Check:
    """One service of ``riverlake up`` (or one of its steps) and its health check."""

    name: str
    state: str = WAITING
    started: float = 0.0  # monotonic
    ended: float | None = None
    detail: str = ""
    kind: str = "service"  # or "step"

    def elapsed(self, now: float) -> float:
        return (self.ended if self.ended is not None else now) - self.started


def check_line(c: Check, now: float) -> str:
    """One plain line for a check: ``service prefect: healthy in 8.2s``."""
    line = f"{c.kind} {c.name}: {c.state}"
    if c.state == FAILED:
        line += f" after {seconds(c.elapsed(now))}"
    elif c.state != WAITING:
        line += f" in {seconds(c.elapsed(now))}"
    return f"{line} ({c.detail})" if c.detail else line


class ServiceBoard:
    """The services of ``riverlake up`` as ``stack.up`` reports them (its ``report``):
    a plain line per change, or the rows of the live display."""

    def __init__(self, say: Callable[[str], None] | None = None, clock=time.monotonic,
                 ascii_only: bool = False) -> None:  # fmt: skip
        self.checks: dict[str, Check] = {}
        self._say = say
        self._clock = clock
        self.ascii_only = ascii_only
        self._lock = threading.Lock()

    def report(self, name: str, state: str, detail: str = "", kind: str = "service") -> None:
        """``stack.up``'s hook: ``name`` is now ``state`` (waiting, healthy, done, failed)."""
        now = self._clock()
        with self._lock:
            c = self.checks.get(name)
            if c is None or (c.state != WAITING and state == WAITING):
                c = self.checks[name] = Check(name, state, now, detail=detail, kind=kind)
            elif c.state == state and detail in ("", c.detail):
                return  # no change, no line
            else:  # a detail given on waiting (started, already running) stays
                c.state, c.detail = state, detail or c.detail
            if state != WAITING:
                c.ended = now
            line = check_line(c, now)
        if self._say is not None:
            self._say(line)

    def lines(self) -> list[str]:
        now = self._clock()
        with self._lock:
            return [check_line(c, now) for c in self.checks.values()]

    def renderable(self):
        now = self._clock()
        with self._lock:
            checks = list(self.checks.values())
        return checks_table(checks, now, self.ascii_only)


# --------------------------------------------------------------------------- task runs


#: Prefect's final state types: a task or flow run in one of them is over.
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})

#: The lake's commit line (riverlake.lake.write): ``table flights version 3: 842 rows in
#: 2 files (1 replaced), batch ...`` or ``table flights created at version 0: 842 rows, ...``.
COMMIT_LINE = re.compile(
    r"^table (?P<table>[\w.-]+) (?:version \d+|created at version 0): (?P<rows>\d+) rows\b"
)
#: An ingest's summary (riverlake.sources.ingest): ``source weather: {'source': ...}``.
SOURCE_LINE = re.compile(r"^source (?P<source>[\w.-]+): (?P<summary>\{.*\})\s*$", re.S)


@dataclass(frozen=True)
class Rows:
    """Rows a task run reported: ``what`` (a table or a source) and how they went."""

    what: str
    rows: int
    how: str  # committed (a lake commit), loaded (a source into its table), landed


def rows_in_logs(messages: list[str]) -> list[Rows]:
    """The rows one task run's log lines report, in order (pure).

    A source's ingest summary stands for its table's commit (a merge logs no commit
    line; a landing source commits nothing: its rows are landed). Several commits to
    one table add up.
    """
    summaries: dict[str, Rows] = {}
    source_tables: set[str] = set()
    commits: dict[str, int] = {}
    order: list[tuple[str, str]] = []
    for m in messages:
        if c := COMMIT_LINE.match(m):
            t = c["table"]
            if t not in commits:
                order.append(("commit", t))
                commits[t] = 0
            commits[t] += int(c["rows"])
        elif s := SOURCE_LINE.match(m):
            try:
                summary = ast.literal_eval(s["summary"])
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
            if not isinstance(summary, dict) or summary.get("skipped"):
                continue
            name = s["source"]
            how = "landed" if summary.get("version") is None else "loaded"
            if name not in summaries:
                order.append(("source", name))
            summaries[name] = Rows(name, int(summary.get("rows_loaded") or 0), how)
            if summary.get("table"):
                source_tables.add(str(summary["table"]))
    out = []
    for kind, name in order:
        if kind == "source":
            out.append(summaries[name])
        elif name not in source_tables:
            out.append(Rows(name, commits[name], "committed"))
    return out


def rows_text(rows: list[Rows] | tuple[Rows, ...]) -> str:
    """``flights 842 committed, quality_report 46 committed`` (pure)."""
    return ", ".join(f"{r.what} {r.rows} {r.how}" for r in rows)


@dataclass(frozen=True)
class RunView:
    """A flow or task run as the Prefect API reports it, with the rows it reported."""

    id: str
    name: str
    state: str  # Prefect's state name: Pending, Running, Completed, AwaitingRetry, Failed...
    state_type: str  # PENDING, RUNNING, COMPLETED, FAILED, CRASHED, CANCELLED, ...
    started: datetime | None = None
    ended: datetime | None = None
    rows: tuple[Rows, ...] = ()

    @property
    def final(self) -> bool:
        return self.state_type in FINAL_STATES

    def elapsed(self, now: datetime) -> float | None:
        if self.started is None:
            return None
        return ((self.ended if self.ended is not None and self.final else now)
                - self.started).total_seconds()  # fmt: skip


def run_line(v: RunView, now: datetime, kind: str = "task") -> str:
    """One plain line: ``task commit-curated-960: Completed in 1.2s: flights 842 committed``."""
    label = f"flow run '{v.name}'" if kind == "flow" else f"task {v.name}"
    line = f"{label}: {v.state}"
    if v.final and (elapsed := v.elapsed(now)) is not None:
        line += f" in {seconds(elapsed)}"
    if v.rows:
        line += f": {rows_text(v.rows)}"
    return line


class PlainLines:
    """Which plain lines a new poll of a run adds: one per state change (pure, no I/O).

    A task run's final line waits one poll (or the last one), so that the rows its log
    lines report, which reach the API a moment after its state, are in it; rows arriving
    later still add one line.
    """

    def __init__(self) -> None:
        self.shown: dict[str, tuple[str, str]] = {}  # run id -> (state, rows) last shown
        self._final_seen: set[str] = set()

    def update(self, views: list[RunView], now: datetime, last: bool = False,
               kind: str = "task") -> list[str]:  # fmt: skip
        lines = []
        for v in views:
            key = (v.state, rows_text(v.rows) if v.final else "")
            if self.shown.get(v.id) == key:
                continue
            if v.final and not last and v.id not in self._final_seen:
                self._final_seen.add(v.id)  # shown on the next poll, with its rows
                continue
            self.shown[v.id] = key
            lines.append(run_line(v, now, kind))
        return lines


def _start_key(v: RunView) -> tuple:
    return (v.started is None, v.started or datetime.max.replace(tzinfo=UTC), v.name)


def _state(run: Any) -> tuple[str, str]:
    """A Prefect flow or task run's state name and type (the API fills both; a run
    object built here may carry only its ``state``)."""
    name = run.state_name or (run.state.name if run.state is not None else None)
    kind = run.state_type or (run.state.type if run.state is not None else None)
    return name or "Pending", kind.value if kind is not None else "PENDING"


def task_views(task_runs: list[Any], logs: list[Any]) -> list[RunView]:
    """Prefect's TaskRun and Log objects -> one RunView per task run, in start order."""
    by_task: dict[str, list[str]] = {}
    for log in sorted(logs, key=lambda lg: lg.timestamp):
        if log.task_run_id is not None:
            by_task.setdefault(str(log.task_run_id), []).append(log.message)
    views = [
        RunView(
            str(t.id), t.name, *_state(t), started=t.start_time, ended=t.end_time,
            rows=tuple(rows_in_logs(by_task.get(str(t.id), []))),
        )
        for t in task_runs
    ]  # fmt: skip
    return sorted(views, key=_start_key)


def flow_view(flow_run: Any) -> RunView:
    return RunView(str(flow_run.id), flow_run.name, *_state(flow_run),
                   started=flow_run.start_time, ended=flow_run.end_time)  # fmt: skip


# --------------------------------------------------------------------------- rich renderables


def _spinner(ascii_only: bool):
    """The spinner's frame for now (a new rich Spinner per redraw would never turn)."""
    from rich.spinner import SPINNERS
    from rich.text import Text

    spin = SPINNERS["line" if ascii_only else "dots"]
    frames = spin["frames"]
    frame = frames[int(time.monotonic() * 1000 / spin["interval"]) % len(frames)]
    return Text(frame, style="cyan")


def _symbol(state_type_or_state: str, ascii_only: bool):
    from rich.text import Text

    s = state_type_or_state.upper()
    if s in ("COMPLETED", "HEALTHY", "DONE"):
        return Text("+" if ascii_only else "✓", style="green")
    if s in ("FAILED", "CRASHED"):
        return Text("x" if ascii_only else "✗", style="red")
    if s == "CANCELLED":
        return Text("-", style="yellow")
    if s in ("RUNNING", "WAITING"):
        return _spinner(ascii_only)
    return Text(".", style="dim")  # pending, scheduled, awaiting retry


def checks_table(checks: list[Check], now: float, ascii_only: bool = False):
    """The services of ``up`` as a rich table: symbol, name, state, time, detail."""
    from rich.table import Table

    table = Table.grid(padding=(0, 1))
    for _ in range(5):
        table.add_column()
    for c in checks:
        table.add_row(_symbol(c.state, ascii_only), c.name, c.state,
                      seconds(c.elapsed(now)), c.detail)  # fmt: skip
    return table


def tasks_table(flow: RunView | None, views: list[RunView], now: datetime,
                note: str = "", ascii_only: bool = False):  # fmt: skip
    """A flow run's task runs as a rich renderable: the flow's state, then a row per
    task run: symbol, name, state, time, rows."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table.grid(padding=(0, 1))
    for _ in range(5):
        table.add_column()
    for v in views:
        elapsed = v.elapsed(now)
        table.add_row(_symbol(v.state_type, ascii_only), v.name, v.state,
                      seconds(elapsed) if elapsed is not None else "",
                      rows_text(v.rows))  # fmt: skip
    if flow is None:
        head = Text(note or "starting the flow run ...")
    else:
        elapsed = flow.elapsed(now)
        head = Text.assemble(
            ("flow run ", "bold"), (f"'{flow.name}'", "bold magenta"), f": {flow.state}",
            f" {seconds(elapsed)}" if elapsed is not None else "",
            f"  ({note})" if note else "",
        )  # fmt: skip
    return Group(head, table)


# --------------------------------------------------------------------------- the screen


def _stream_handlers(stream: Any) -> list[logging.StreamHandler]:
    """Every logging handler that writes to ``stream`` (Prefect's console handler and
    the like): they are pointed at the live display while it runs."""
    loggers = [logging.getLogger()]
    loggers += [lg for lg in logging.Logger.manager.loggerDict.values()
                if isinstance(lg, logging.Logger)]  # fmt: skip
    found: list[logging.StreamHandler] = []
    for lg in loggers:
        for h in lg.handlers:
            writes_there = getattr(h, "stream", None) is stream
            if isinstance(h, logging.StreamHandler) and writes_there and h not in found:
                found.append(h)
    return found


class Screen:
    """stderr for the person at the terminal: a live display or plain lines.

    ``say`` prints a line that stays; ``step`` shows a spinner naming what is being
    done; ``live`` keeps a renderable on screen, refreshed, while a block runs. Without
    a terminal (or with ``TERM=dumb``) all of it is plain lines and no ANSI code.
    """

    def __init__(self, stream: TextIO | None = None,
                 environ: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.stream = stream if stream is not None else sys.stderr
        env = os.environ if environ is None else environ
        self.live = live_wanted(self.stream, env)
        self.color = color_wanted(env)
        self._lock = threading.RLock()
        self._active = None  # the rich Live while one runs
        self.console = None
        if self.live:
            from rich.console import Console

            self.console = Console(file=self.stream, no_color=not self.color, highlight=False,
                                   force_terminal=True, soft_wrap=False)  # fmt: skip
        enc = (getattr(self.stream, "encoding", None) or "").lower().replace("-", "")
        self.ascii_only = not enc.startswith("utf")

    def say(self, line: str) -> None:
        """A line for the person that stays on screen."""
        with self._lock:
            if self.console is not None:
                from rich.text import Text

                self.console.print(Text(line))
            else:
                self.stream.write(line + "\n")
                self.stream.flush()

    @contextlib.contextmanager
    def live_view(self, render: Callable[[], Any], transient: bool = False) -> Iterator[None]:
        """Keep ``render()`` on screen, refreshed 4 times a second, while the block runs
        (a terminal only; elsewhere nothing is drawn). Writes to stderr meanwhile, log
        handlers included, are printed above it; stdout is left alone."""
        if self.console is None or self._active is not None:
            yield
            return
        from rich.live import Live

        real = sys.stderr
        live = Live(get_renderable=render, console=self.console, refresh_per_second=4,
                    transient=transient, redirect_stdout=False, redirect_stderr=True)  # fmt: skip
        with live:
            self._active = live
            moved = []
            proxy = sys.stderr
            if proxy is not real:  # rich's proxy: log handlers on stderr write there too
                for h in _stream_handlers(real):
                    moved.append((h, h.stream))
                    h.setStream(proxy)
                    if hasattr(h, "console"):  # Prefect's console handler prints with rich
                        h.console.file = proxy
            try:
                yield
            finally:
                for h, old in moved:
                    h.setStream(old)
                    if hasattr(h, "console"):
                        h.console.file = old
                self._active = None

    @contextlib.contextmanager
    def step(self, text: str, quiet: bool = False) -> Iterator[Step]:
        """A spinner naming the step while the block runs. When it ends well: ``text:
        done in 1.2s`` (a plain line; on a terminal a check mark), unless ``quiet``;
        when it raises: nothing (the error says what went wrong)."""
        s = Step(text)
        if self.console is not None and self._active is None:
            from rich.text import Text

            def render():
                return Text.assemble(_spinner(self.ascii_only), " ",
                                     f"{s.text} {seconds(time.monotonic() - s.t0)}")  # fmt: skip

            with self.live_view(render, transient=True):
                yield s
        else:
            yield s
        if not quiet:
            mark = "" if self.console is None else ("+ " if self.ascii_only else "✓ ")
            self.say(f"{mark}{s.text}: done in {seconds(time.monotonic() - s.t0)}")


@dataclass
class Step:
    text: str
    t0: float = field(default_factory=time.monotonic)

    def update(self, text: str) -> None:
        self.text = text


# --------------------------------------------------------------------------- the watcher


#: The watchers of this process, by key: the flow's hook names its watcher by key, so
#: that the hook pickles (Prefect ships the flow, hooks included, to the Dask workers).
_WATCHERS: dict[str, RunWatcher] = {}


def riverlake_progress(key: str, flow, flow_run, state) -> None:
    """The ``on_running`` flow hook of :attr:`RunWatcher.on_running` (by key)."""
    watcher = _WATCHERS.get(key)
    if watcher is not None:
        watcher.hook(flow, flow_run, state)


class RunWatcher:
    """Polls the Prefect API for one flow run's task runs and logs while the flow runs
    in this process (Prefect's own client, :func:`riverlake.runs.client`, in a thread).

    The flow tells it its run id through an ``on_running`` hook (:attr:`on_running`).
    In plain mode every poll's state changes are printed with ``say``; on a terminal
    :meth:`renderable` draws the latest poll.
    """

    def __init__(self, settings, say: Callable[[str], None] | None = None,
                 interval: float = 1.0, ascii_only: bool = False) -> None:  # fmt: skip
        self.settings = settings
        self.interval = interval
        self.ascii_only = ascii_only
        self._say = say
        self.flow_run_id = None
        self.flow: RunView | None = None
        self.tasks: list[RunView] = []
        self.error = ""  # the last poll's failure, shown, never raised
        self._plain = PlainLines()
        self._plain_flow = PlainLines()
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None
        self.key = uuid.uuid4().hex
        _WATCHERS[self.key] = self

    @property
    def on_running(self) -> Callable[..., None]:
        """The flow's ``on_running`` hook that tells this watcher its run (picklable)."""
        return functools.partial(riverlake_progress, self.key)

    def hook(self, flow, flow_run, state) -> None:
        """Prefect's ``on_running`` flow hook: the run to watch."""
        self.flow_run_id = flow_run.id
        with self._lock:
            self.flow = RunView(str(flow_run.id), flow_run.name, "Running", "RUNNING",
                                started=datetime.now(UTC))  # fmt: skip

    def __enter__(self) -> RunWatcher:
        self._thread = threading.Thread(target=self._loop, name="riverlake-progress",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.finish()

    def _loop(self) -> None:
        from riverlake import runs

        with runs.client(self.settings) as c:
            self._client = c
            while not self._stop.wait(self.interval):
                self.poll()

    def poll(self, last: bool = False, read: bool = True) -> None:
        """Read the run, its task runs and its logs once; show what changed. ``read=False``:
        show what the last read gave (the last lines of a run already read as final)."""
        if self.flow_run_id is None or self._client is None:
            return
        with self._poll_lock:
            if read:
                try:
                    flow, tasks = self._read(self._client)
                    self.error = ""
                except Exception as e:  # the API busy or away: keep the last view, say why
                    self.error = f"Prefect API: {type(e).__name__}"
                    return
                with self._lock:
                    self.flow, self.tasks = flow, tasks
            else:
                with self._lock:
                    flow, tasks = self.flow, self.tasks
            if self._say is not None and flow is not None:
                now = datetime.now(UTC)
                task_lines = self._plain.update(tasks, now, last=last)
                flow_lines = self._plain_flow.update([flow], now, last=last, kind="flow")
                # the flow's line opens its tasks' lines while it runs, closes them at the end
                for line in task_lines + flow_lines if flow.final else flow_lines + task_lines:
                    self._say(line)

    def _read(self, c) -> tuple[RunView, list[RunView]]:
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterId,
            LogFilter,
            LogFilterFlowRunId,
        )
        from prefect.client.schemas.sorting import LogSort

        run_id = self.flow_run_id
        flow = c.read_flow_run(run_id)
        task_runs = c.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])), limit=200
        )
        logs: list[Any] = []
        while True:  # every log of the run, a page at a time
            page = c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                               limit=200, offset=len(logs), sort=LogSort.TIMESTAMP_ASC)  # fmt: skip
            logs += page
            if len(page) < 200:
                break
        return flow_view(flow), task_views(task_runs, logs)

    def finish(self, settle_s: float = 5.0) -> None:
        """Stop polling; send this process's pending logs, then read until the run and
        its task runs are final (at most ``settle_s``) and show the last state."""
        self._stop.set()
        _WATCHERS.pop(self.key, None)
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.flow_run_id is None:
            return
        with contextlib.suppress(Exception):  # the logs this process has not sent yet
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=5)
        from riverlake import runs

        deadline = time.monotonic() + settle_s
        with runs.client(self.settings) as c:
            self._client = c
            while True:
                last = time.monotonic() >= deadline
                self.poll(last=last)
                with self._lock:
                    done = (
                        self.flow is not None
                        and self.flow.final
                        and all(t.final for t in self.tasks)
                    )
                if done and not last:
                    self.poll(last=True, read=False)  # final already: no need to read again
                    break
                if last:
                    break
                time.sleep(0.25)
        self._client = None

    def renderable(self):
        with self._lock:
            flow, tasks, note = self.flow, list(self.tasks), self.error
        return tasks_table(flow, tasks, datetime.now(UTC), note, self.ascii_only)
