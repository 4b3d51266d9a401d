"""The warm runner's server (the stack's ``runner`` service): ``riverlake run`` forked
from a process whose imports are done. The client side, and why, is :mod:`.warm`.

``python -m riverlake.ops.runner SOCKET``: import ahead, then serve until SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path
from typing import NoReturn

from riverlake.ops.warm import FORWARDED, package_dir, receive, relevant, send, short_path

#: Imported ahead: everything ``riverlake run`` imports before and during a run.
PRELOAD = (
    "riverlake.ops.cli",
    "riverlake.ops.stack",
    "riverlake.ops.progress",
    "riverlake.flows",
    "riverlake.flows.runner",
    "riverlake.flows.pipeline",
    "riverlake.lake",
    "riverlake.sources.ingest",
    "riverlake.cluster",
    "prefect_dask",
    "dask.dataframe",
    "distributed",
    "distributed.dashboard.scheduler",
    # imported lazily inside riverlake's functions, on the first call in a run:
    "s3fs",  # the lake's and the sources' S3 client (with aiobotocore, botocore)
    "deltalake",  # the transaction log
    "pandera.pandas",  # the contracts ...
    "pandera.backends.pandas.builtin_checks",  # ... their checks, on first use ...
    "pandera.strategies.pandas_strategies",  # ... which import these (and hypothesis)
    "pyarrow.acero",  # the lake's merges
    "sqlalchemy.dialects.sqlite",  # the demo's SQL sources
    "sqlite3",
    "anyio._backends._asyncio",  # Prefect's clients, on their first request
    "prefect.artifacts",  # the run's summary
    "prefect.utilities.visualization",  # a flow call imports it (graphviz)
    "riverlake.analytics.flights",  # the demo pipeline's steps
    "distributed.http.scheduler.prometheus",  # the cluster's dashboard routes
)


class Server:
    """The warm server: preloads, then forks one child per accepted command."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pid = os.getpid()
        self.env: dict[str, str] = {}
        self.mtimes: dict[str, tuple[int, int]] = {}
        self.stopping = False
        self.stale = False  # an imported file changed: import everything again

    # -- start-up
    def preload(self) -> None:
        import importlib

        from riverlake.ops import cli
        from riverlake.settings import get_settings

        # The Prefect settings `run` derives, applied before Prefect is imported, as there.
        os.environ.update(cli.run_env(get_settings(), os.environ))
        self.env = dict(os.environ)
        for name in PRELOAD:
            importlib.import_module(name)
        from prefect.plugins import load_prefect_collections

        load_prefect_collections()  # otherwise on the first task of each run (1 s)
        # An import may set variables of its own (pandera sets two for pyspark): what the
        # server compares with each command's, and starts again with, stays as it was.
        os.environ.clear()
        os.environ.update(self.env)
        self.mtimes = _module_files()
        from prefect.settings import PREFECT_PROFILES_PATH

        profiles = str(PREFECT_PROFILES_PATH.value())  # read at import too (absent: None)
        self.mtimes[profiles] = _stamp(profiles)
        import threading

        if threading.active_count() != 1:  # a Python thread would be lost in every child
            raise RuntimeError(f"threads after the imports: {threading.enumerate()}")
        import gc

        gc.collect()
        gc.freeze()  # the children share these pages: the collector leaves them alone

    def refusal(self, request: dict) -> str | None:
        """Why this server cannot run ``request`` as a new process would; None if it can."""
        argv = request.get("argv") or []
        if len(argv) < 2 or argv[1] not in FORWARDED:
            return f"the warm runner runs only {', '.join(sorted(FORWARDED))}"
        for name in PREFECT_FILES:  # Prefect reads these from the folder at import
            file = Path(request.get("cwd", "/"), name)
            if file.is_file() and (name != "pyproject.toml" or "[tool.prefect" in _text(file)):
                return f"Prefect reads {file}, which the warm runner did not"
        if request.get("executable") != sys.executable:
            return f"the warm runner runs {sys.executable}, the command {request.get('executable')}"
        if request.get("package") != package_dir():
            return f"the warm runner imported riverlake from {package_dir()}"
        try:
            wanted = self._derived(request["env"])
        except Exception as exc:  # a bad setting: the cold run says which, in one line
            return f"the settings do not load ({type(exc).__name__})"
        ours, theirs = relevant(self.env), relevant(wanted)
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if differ:
            return f"the environment differs from the warm runner's: {', '.join(differ[:5])}"
        for file, stamp in self.mtimes.items():
            if _stamp(file) != stamp:
                return f"{file} {STALE}"
        return None

    def _derived(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` with the Prefect settings that `run` would derive from it."""
        from riverlake.ops import cli
        from riverlake.settings import get_settings

        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
        try:
            return {**env, **cli.run_env(get_settings(), env)}
        finally:
            os.environ.clear()
            os.environ.update(saved)

    # -- serving
    def serve(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with short_path(self.path) as name:
            listener.bind(name)
        os.chmod(self.path, 0o600)
        listener.listen(16)
        print(f"warm runner ready on {self.path} (pid {self.pid})", flush=True)
        try:
            while not self.stopping and not self.stale:
                self._reap()
                with contextlib.suppress(InterruptedError):
                    ready, _, _ = select.select([listener], [], [], 0.5)
                    if ready:
                        conn, _ = listener.accept()
                        self._handle(conn, listener)
        finally:
            if os.getpid() == self.pid:
                listener.close()
                self.path.unlink(missing_ok=True)
        if self.stale and not self.stopping:  # the same process (pid file), imports anew
            print("imported files changed: starting again", flush=True)
            os.execv(sys.executable, [sys.executable, "-m", "riverlake.ops.runner", str(self.path)])

    def _stop(self, signum, frame) -> None:
        self.stopping = True

    def _reap(self) -> None:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass

    def _handle(self, conn: socket.socket, listener: socket.socket) -> None:
        fds: list[int] = []
        try:
            uid = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            if int.from_bytes(uid[4:8], sys.byteorder) != os.getuid():
                return  # another user: nothing to say to it
            conn.settimeout(5)
            request, fds = receive(conn, maxfds=3)
            if not isinstance(request, dict) or len(fds) != 3:
                return  # a health check (connects, says nothing) or not a client of ours
            why = self.refusal(request)
            if why:
                print(f"cold: {why}", flush=True)
                self.stale = why.endswith(STALE)
                send(conn, {"cold": why})
                return
            if os.fork() == 0:  # the monitor: starts the command, reports its status
                listener.close()
                _monitor(conn, request, fds)  # never returns (the command: SystemExit)
        except Exception as exc:  # a malformed request, a client gone: the server goes on
            print(f"a request failed: {exc!r}", flush=True)
        finally:
            if os.getpid() == self.pid:
                conn.close()
                for fd in fds:
                    os.close(fd)


#: The signals a client relays to its command.
RELAYED = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH}


def _monitor(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In a child of the server: fork the command, tell the client its pid, wait for it
    and report its exit status. The command starts only once the client has its pid (a
    client that gave up meanwhile never sees a run it did not wait for), and stops when
    the client goes away. Never returns: the monitor exits here; the command's
    SystemExit unwinds to the interpreter's own exit, as in a new process."""
    me, pid, go = os.getpid(), 0, -1
    try:
        # Blocked across the fork: a signal relayed before the command has its handlers
        # waits for them instead of meeting the monitor's SIG_IGN.
        signal.pthread_sigmask(signal.SIG_BLOCK, RELAYED)
        ready, go = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(go)
            conn.close()
            _become(request, fds, ready)
        os.close(ready)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # `down` stops the server, not runs
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, RELAYED)
        with contextlib.suppress(PermissionError, ProcessLookupError):
            os.setpgid(pid, pid)  # as the child does: no signal can find it without
        for fd in fds:
            os.close(fd)
        conn.settimeout(None)
        send(conn, {"pid": pid})
        print(f"pid {pid}: riverlake {' '.join(request['argv'][1:])}", flush=True)
        os.write(go, b"g")
        os.close(go)
        status = _wait(pid, conn)
        done, pid = pid, 0
        print(f"pid {done}: exit status {status}", flush=True)
        with contextlib.suppress(OSError):  # a client killed meanwhile hears nothing
            send(conn, {"status": status})
    except BaseException as exc:
        if os.getpid() != me:  # the command's own exit, on its way out
            raise
        with contextlib.suppress(Exception):
            print(f"monitor: {exc!r}", flush=True)
        if pid:  # the client never heard of it, or the monitor failed: it must not run on
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    os._exit(0)


def _become(request: dict, fds: list[int], ready: int) -> None:
    """Turn this forked child into the client's command (its terminal, directory,
    environment, umask and arguments, a process group of its own) once the monitor says
    go, then run it. Raises SystemExit only: whatever happens, this process never goes
    back into the server's loop; it exits as a new process running the command would."""
    try:
        os.setpgid(0, 0)
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGQUIT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGWINCH, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, RELAYED)  # a relayed signal lands now
        if os.read(ready, 1) != b"g":  # the monitor ended without the client knowing us
            end_command(1)
        os.close(ready)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.umask(int(request["umask"]))
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        sys.path[:] = request["path"]
        sys.stdout.reconfigure(line_buffering=sys.stdout.isatty())
        with contextlib.suppress(ImportError):
            import numpy  # the legacy global generator: its own seed, as a new process

            numpy.random.seed()
        from riverlake.ops import cli

        cli.main(forwarded=True)
    except SystemExit as e:
        end_command(e.code)
    except KeyboardInterrupt:  # Ctrl-C before the command's own handling: as cli.main
        end_command(130)
    except BaseException:
        import traceback

        traceback.print_exc()
        end_command(1)
    end_command(0)


#: The forked command's exit status, once it is ending (see :func:`_leave`).
_STATUS: list[int] = []


def end_command(code: object) -> NoReturn:
    """End the forked command with ``code`` (as ``SystemExit``'s: None, a number or a
    message), its status kept for :func:`_leave`."""
    _STATUS[:] = [0 if code is None else code if isinstance(code, int) else 1]
    raise SystemExit(code)


def _leave() -> None:
    """The exit handler registered first, so Python runs it last: after it has joined
    the threads and run every other exit handler (the command's own included). In a
    forked command it ends the process there, with the command's status, as a forked
    multiprocessing child ends, instead of tearing down the heap it inherited from the
    server (0.1 s of a run's wall time on the 2-core machine). The server, and any
    process that is not a forked command, exits as usual."""
    if not _STATUS:
        return
    status = _STATUS[0]
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a full disk, a closed pipe: as Python, 120 for a success
            status = status or 120
    os._exit(status)


def _wait(pid: int, conn: socket.socket) -> int:
    """The command's exit status (negative: the signal that ended it); if the client
    goes away first, the command is stopped (SIGTERM, then SIGKILL after 15 s)."""
    pidfd = os.pidfd_open(pid)
    watched = [pidfd, conn]
    deadline = float("inf")
    while True:
        ready, _, _ = select.select(watched, [], [], 1.0)
        if pidfd in ready:
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)
        if conn in ready:
            try:
                if conn.recv(4096, socket.MSG_DONTWAIT):
                    continue  # the client says nothing after its request: ignored
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:  # reset: the client closed with our message unread
                pass
            watched.remove(conn)  # the client is gone: so is its command
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            deadline = float("inf")


#: A refusal that ends so: what the server imported is out of date; it starts again.
STALE = "changed since the warm runner started"
#: Files Prefect reads its settings from, in the working directory, when it is imported
#: (pyproject.toml only for its [tool.prefect] table).
PREFECT_FILES = (".env", "prefect.toml", "pyproject.toml")


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _stamp(file: str) -> tuple[int, int] | None:
    try:
        st = os.stat(file)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _module_files() -> dict[str, tuple[int, int]]:
    out = {}
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and (stamp := _stamp(file)) is not None:
            out[file] = stamp
    return out


def serve_main(argv: list[str]) -> None:
    """``python -m riverlake.ops.runner SOCKET``: preload, then serve until SIGTERM."""
    if len(argv) != 1:
        raise SystemExit("usage: python -m riverlake.ops.runner SOCKET")
    atexit.register(_leave)  # first, before any import registers its own
    server = Server(Path(argv[0]).absolute())
    t0 = time.monotonic()
    server.preload()
    took = time.monotonic() - t0
    print(f"imports done in {took:.1f}s; {len(server.mtimes)} module files watched", flush=True)
    server.serve()


if __name__ == "__main__":
    serve_main(sys.argv[1:])
