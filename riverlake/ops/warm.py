"""The warm runner: ``riverlake run`` forked from a process whose imports are done.

A one-day run spends most of its wall time importing (Prefect's client, Dask's
distributed and its dashboard, pandas, pyarrow, deltalake, pandera, Prefect's collections:
5 to 6 s on the 2-core machine) before any work. ``riverlake up`` starts this server
beside the stack (service ``runner``); it imports all of that once, then waits on a Unix
socket in the stack's private state folder (``run/warm.sock``: mode 0600 in a 0700
folder; each side checks that the other is the same user). ``riverlake run`` connects
first and, if the server can serve it, hands over its command line, working directory,
environment, umask and its stdin, stdout and stderr (the file descriptors themselves, so
a terminal stays a terminal); the server forks a
child that becomes that command, in a process group of its own, and the client forwards
its signals (Ctrl-C included) to that group and exits with the child's status. The
command runs its usual code, checks included: only the imports were done ahead.

The server refuses (the client then runs the command itself, as without a server, the
"cold" path) when anything imported ahead could differ from what a new process would
import: another Python or another riverlake checkout, an environment variable other
than ``RIVERLAKE_*`` that differs from the server's (after the Prefect settings ``run``
derives from the client's ``RIVERLAKE_*``; riverlake reads its own settings per call,
never at import), Prefect settings files in the command's folder (``.env``,
``prefect.toml``, ``pyproject.toml``'s ``[tool.prefect]``), or any imported module file
or Prefect's profiles file changed on disk since the server started (an edited pipeline
module, an upgraded package). The forked command starts only once the client has its
pid, and is stopped if the client goes away; a client whose request went unanswered
fails instead of running the command a second time in its own process.
``RIVERLAKE_WARM=0`` always runs cold; ``RIVERLAKE_WARM=require`` fails with the
server's reason instead of running cold (benchmarks and tests, to be sure what they
measured).

Before forking, the server runs in one thread of Python; the numerical libraries keep
native threads of their own (OpenBLAS, jemalloc), which install fork handlers for this.
The server's memory is shared copy-on-write with each child (``gc.freeze`` keeps the
collector from touching it).

Stdlib only on the client side: the client's own start-up is about 40 ms.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path

#: Commands that the server runs; every other command runs in the client's process.
FORWARDED = frozenset({"run"})
#: Variables that may differ between the client and the server (read per call, or not read).
VOLATILE = frozenset({
    "PWD", "OLDPWD", "_", "SHLVL", "COLUMNS", "LINES", "RIVERLAKE_WARM",
    # which terminal or session the command came from
    "TMUX_PANE", "WINDOWID", "SSH_TTY", "SSH_CLIENT", "SSH_CONNECTION", "TERM_SESSION_ID",
})  # fmt: skip
SOCKET = Path("run") / "warm.sock"
#: How long the client waits for the server's first answer (then fails: see _forward).
ANSWER_TIMEOUT_S = 10.0
_MAX_MESSAGE = 1 << 20


class Refused(Exception):
    """The server cannot run this command; the message says why."""


def mode() -> str:
    """``on`` (the default), ``off`` or ``require``, from ``RIVERLAKE_WARM``."""
    raw = os.environ.get("RIVERLAKE_WARM", "").strip().lower()
    if raw in {"0", "false", "no", "off"}:
        return "off"
    return "require" if raw == "require" else "on"


def relevant(env) -> dict[str, str]:
    """What of ``env`` a command and the server must agree on: all but ``RIVERLAKE_*``
    (riverlake reads its settings per call) and the volatile variables."""
    ignored = VOLATILE
    return {k: v for k, v in env.items() if not k.startswith("RIVERLAKE_") and k not in ignored}


def socket_path(environ=os.environ, cwd: str | None = None) -> Path:
    """The server's socket for the stack of ``RIVERLAKE_HOME`` (relative to ``cwd``)."""
    home = Path(environ.get("RIVERLAKE_HOME") or ".riverlake")
    return (Path(cwd or os.getcwd()) / home / SOCKET).absolute()


@contextlib.contextmanager
def short_path(path: Path):
    """``path`` by a name short enough for a Unix socket (108 bytes): through the folder's
    descriptor when the full path is longer (pytest's temporary folders are)."""
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def reachable(path: Path, timeout: float = 2.0) -> bool:
    """The server at ``path`` accepts connections (it binds once its imports are done)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
        conn.settimeout(timeout)
        try:
            with short_path(path) as name:
                conn.connect(name)
        except OSError:
            return False
    return True


def package_dir() -> str:
    return str(Path(__file__).resolve().parent.parent)


def send(conn: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(conn, [data], fds)
    else:
        conn.send(data)


def receive(conn: socket.socket, maxfds: int = 0) -> tuple[dict | None, list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, _MAX_MESSAGE, maxfds)
    return (json.loads(data) if data else None), fds


# --------------------------------------------------------------------------- client


def forward(argv: list[str]) -> int | None:
    """Run ``argv`` in the warm server: its exit status, or None to run it here (no
    server, the server refused, or ``RIVERLAKE_WARM=0``). Under ``RIVERLAKE_WARM=require``
    a refusal is a one-line error (exit 1)."""
    how = mode()
    if how == "off" or len(argv) < 2 or argv[1] not in FORWARDED:
        return None
    try:
        return _forward(argv)
    except Refused as why:
        if how == "require":
            print(f"riverlake: error: RIVERLAKE_WARM=require: {why}", file=sys.stderr)
            return 1
        return None


def _forward(argv: list[str]) -> int:
    path = socket_path()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.settimeout(ANSWER_TIMEOUT_S)
    umask = os.umask(0)
    os.umask(umask)
    request = {
        "argv": argv,
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "path": sys.path,
        "umask": umask,
        "executable": sys.executable,
        "package": package_dir(),
    }
    try:
        with short_path(path) as name:
            conn.connect(name)
        peer = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        if int.from_bytes(peer[4:8], sys.byteorder) != os.getuid():  # not ours: say nothing
            conn.close()
            raise Refused(f"{path} is served by another user")
        send(conn, request, [0, 1, 2])
    except OSError as exc:  # no server here (or it went away): nothing was handed over
        conn.close()
        raise Refused(f"no warm runner at {path} ({exc.__class__.__name__}: {exc})") from None
    try:
        answer, _ = receive(conn)
    except TimeoutError:
        # It has the request: running here too could run the command twice. (Its run
        # starts only after the client has its pid, so closing now stops it.)
        conn.close()
        print(f"riverlake: error: the warm runner at {path} did not answer in "
              f"{ANSWER_TIMEOUT_S:.0f}s; RIVERLAKE_WARM=0 runs without it",
              file=sys.stderr)  # fmt: skip
        return 1
    except (OSError, ValueError):
        answer = None
    if not answer or "pid" not in answer:  # refused, or it ended before starting a run
        conn.close()
        raise Refused((answer or {}).get("cold", "the warm runner closed the connection"))
    pid = answer["pid"]
    conn.settimeout(None)

    def relay(signum, frame):  # the terminal's signals reach the run's process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signum)

    relayed = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH]
    for sig in relayed:
        signal.signal(sig, relay)
    try:
        final, _ = receive(conn)
    except (OSError, ValueError):
        final = None
    finally:
        conn.close()
    if not final or "status" not in final:  # the runner's monitor died: so does the run
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        print(f"riverlake: error: the warm runner ({path}) stopped before the run ended; "
              f"its run (pid {pid}) was stopped; see the stack's logs/runner.log",
              file=sys.stderr)  # fmt: skip
        return 1
    status = final["status"]
    if status < 0:  # killed by a signal: end the same way, as a shell expects
        for sig in relayed:
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        return 128 - status
    return status
