"""The local stack: a Prefect server and SeaweedFS (S3), as real processes.

With the demo on (the default; ``riverlake up --no-demo`` turns it off), the stack also
serves the demo's upstream systems (:mod:`riverlake.demo`): the weather API, the event
replayer, the SQL dimensions, and the daily flight drops that ``riverlake run`` asks
for. This module is the only part of the product that imports the demo.

Each service is started in its own session with its log and a pid file under the
state folder (``settings.home``), which is private to its owner: the folder and all in
it are mode 700/600, and services run with umask 077 so what they write stays so.
``down`` stops only processes whose pid file this module wrote and whose command line
still matches, so it never kills a stranger.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from riverlake.errors import StackError
from riverlake.ops import warm
from riverlake.settings import CREDENTIALS_FILE, LIBRARY_LOGGER, Settings

STARTUP_TIMEOUT_S = 120
#: The umask of the stack's services and of what this module writes: owner only.
PRIVATE_UMASK = 0o077
WORK_POOL = "riverlake-local"


@dataclass
class Service:
    name: str
    argv: list[str]
    ports: dict[str, int]
    health_url: str
    url: str
    env: dict[str, str] = field(default_factory=dict)
    setting: str = ""
    health_socket: str = ""  # a Unix socket that accepts once the service is ready
    on_up: bool = True  # started by `riverlake up` (the worker is started by `deploy`)
    demo: bool = False  # a demo upstream: started only when the stack serves the demo

    def pid_file(self, home: Path) -> Path:
        return home / "run" / f"{self.name}.pid"

    def log_file(self, home: Path) -> Path:
        return home / "logs" / f"{self.name}.log"


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise StackError(f"{name} is not installed; run `make install`")
    return found


def seaweed_ports(settings: Settings) -> dict[str, int]:
    p = settings.s3_port
    return {
        "s3": p, "master": p + 1, "volume": p + 2, "filer": p + 3,
        "s3.grpc": p + 10, "master.grpc": p + 11, "volume.grpc": p + 12, "filer.grpc": p + 13,
    }  # fmt: skip


def services(settings: Settings) -> list[Service]:
    """The stack's services for ``settings`` (pure: builds argv, ports and URLs only)."""
    home = settings.home.resolve()
    sw = seaweed_ports(settings)
    weed = Service(
        name="seaweedfs",
        argv=[
            _bin("weed"),
            "server",
            f"-dir={home / 'seaweedfs'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3",
            f"-s3.port={sw['s3']}",
            f"-s3.port.grpc={sw['s3.grpc']}",
            f"-s3.config={home / 'seaweedfs' / 's3.json'}",
            f"-master.port={sw['master']}",
            f"-master.port.grpc={sw['master.grpc']}",
            f"-volume.port={sw['volume']}",
            f"-volume.port.grpc={sw['volume.grpc']}",
            f"-filer.port={sw['filer']}",
            f"-filer.port.grpc={sw['filer.grpc']}",
            "-master.volumeSizeLimitMB=256",
            "-volume.max=0",
            # the Iceberg and Lance catalogs would take fixed ports (8181, 9101): off
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ],
        ports=sw,
        health_url=f"http://127.0.0.1:{sw['s3']}/",
        url=f"http://127.0.0.1:{sw['s3']}",
        setting="RIVERLAKE_S3_PORT",
    )
    prefect_home = home / "prefect"
    prefect_db = f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}"
    prefect = Service(
        name="prefect",
        argv=[
            _bin("prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(settings.prefect_port),
        ],
        ports={"api": settings.prefect_port},
        health_url=f"http://127.0.0.1:{settings.prefect_port}/api/health",
        url=f"http://127.0.0.1:{settings.prefect_port}",
        env={
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_API_DATABASE_CONNECTION_URL": prefect_db,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": f"http://127.0.0.1:{settings.prefect_port}/api",
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(settings.prefect_port),
            "PREFECT_API_URL": "",
        },
        setting="RIVERLAKE_PREFECT_PORT",
    )
    nats = Service(
        name="nats",
        argv=[
            _bin("nats-server"), "-a", "127.0.0.1", "-p", str(settings.nats_port),
            "-m", str(settings.nats_port + 1), "-js", "-sd", str(home / "nats"),
        ],
        ports={"client": settings.nats_port, "monitor": settings.nats_port + 1},
        health_url=f"http://127.0.0.1:{settings.nats_port + 1}/healthz?js-enabled-only=true",
        url=f"nats://127.0.0.1:{settings.nats_port}",
        setting="RIVERLAKE_NATS_PORT",
    )  # fmt: skip
    api = Service(
        name="weather-api",
        demo=True,
        argv=[
            sys.executable,
            "-m",
            "riverlake.demo",
            "api",
            "--port",
            str(settings.api_port),
        ],
        ports={"http": settings.api_port},
        health_url=f"http://127.0.0.1:{settings.api_port}/health",
        url=f"http://127.0.0.1:{settings.api_port}/weather",
        setting="RIVERLAKE_API_PORT",
    )
    replayer = Service(
        name="event-replayer",
        demo=True,
        argv=[
            sys.executable,
            "-m",
            "riverlake.demo",
            "replay",
            "--rate",
            str(settings.replay_rate),
            "--loop",
        ],
        ports={},
        health_url="",
        url=f"{settings.replay_rate:g} flight events/s into {settings.nats_url}",
        env={"RIVERLAKE_NATS_URL": str(settings.nats_url)},
        on_up=settings.replay_rate > 0,
    )
    metrics = Service(
        name="metrics",
        argv=[
            sys.executable,
            "-m",
            "riverlake.ops.cli",
            "metrics",
            "--port",
            str(settings.metrics_port),
        ],
        ports={"http": settings.metrics_port},
        health_url=f"http://127.0.0.1:{settings.metrics_port}/healthz",
        url=f"http://127.0.0.1:{settings.metrics_port}/metrics",
        env={"RIVERLAKE_HOME": str(home), "PREFECT_API_URL": str(settings.prefect_api_url)},
        setting="RIVERLAKE_METRICS_PORT",
    )
    warm_socket = home / warm.SOCKET
    runner = Service(
        name="runner",
        argv=[sys.executable, "-m", "riverlake.ops.runner", str(warm_socket)],
        ports={},
        health_url="",
        health_socket=str(warm_socket),
        url=f"warm `riverlake run` (imports done) on {warm_socket}",
    )
    worker = Service(
        name="worker",
        argv=[_bin("prefect"), "worker", "start", "--pool", WORK_POOL, "--type", "process"],
        ports={},
        health_url="",
        url=f"work pool {WORK_POOL}",
        env={
            "PREFECT_API_URL": str(settings.prefect_api_url),
            "PREFECT_LOGGING_EXTRA_LOGGERS": LIBRARY_LOGGER,
            "RIVERLAKE_HOME": str(home),
        },
        on_up=False,
    )
    return [weed, prefect, nats, api, replayer, metrics, runner, worker]


# --------------------------------------------------------------------------- processes


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_pid(svc: Service, home: Path) -> dict | None:
    f = svc.pid_file(home)
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return None


def _alive(info: dict | None) -> bool:
    """The recorded process still runs and is the one we started (not a reused pid).

    Right after ``Popen`` the child may still be inside ``exec``: its command line is
    then empty (or still ours) for a moment, more so on a loaded machine; that is
    looked at again for up to a second instead of being taken for a dead service.
    """
    if not info:
        return False
    proc = Path(f"/proc/{info['pid']}")
    ours = Path("/proc/self/cmdline").read_bytes()
    deadline = time.monotonic() + 1.0
    while True:
        try:
            if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX":
                return False  # exited, not reaped yet
            raw = proc.joinpath("cmdline").read_bytes()
        except (OSError, IndexError):
            return False
        cmdline = raw.split(b"\0")
        # A console script runs as `python <script> ...`: its path is the first or second word.
        if info["argv"][0] in [w.decode(errors="replace") for w in cmdline[:2]]:
            return True
        if (raw and raw != ours) or time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def healthy(svc: Service, timeout: float = 2.0) -> bool:
    if svc.health_socket:
        return warm.reachable(Path(svc.health_socket), timeout)
    if not svc.health_url:  # no HTTP endpoint (the worker): running is healthy
        return True
    try:
        with urllib.request.urlopen(svc.health_url, timeout=timeout) as resp:
            return resp.status < 500
    except urllib.error.HTTPError as exc:
        # S3 answers 403 to an anonymous request: that is a live, locked-down gateway.
        return exc.code in (401, 403)
    except (OSError, ValueError):
        return False


def _tail(path: Path, n: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return ""


def _ensure_credentials(settings: Settings) -> tuple[str, str]:
    """The S3 credentials of the local store, generated once and kept in the state folder."""
    f = settings.home / CREDENTIALS_FILE
    if f.exists():
        data = json.loads(f.read_text())
    else:
        data = {"access_key": "rl" + secrets.token_hex(8), "secret_key": secrets.token_urlsafe(30)}
        f.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        f.touch(mode=0o600)
        f.write_text(json.dumps(data))
    if settings.s3_access_key and settings.s3_secret_key:
        return settings.s3_access_key.get_secret_value(), settings.s3_secret_key.get_secret_value()
    return data["access_key"], data["secret_key"]


def _write_s3_config(settings: Settings, key: str, secret: str) -> None:
    cfg = settings.home.resolve() / "seaweedfs" / "s3.json"
    cfg.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Only this identity exists: anonymous requests get 403.
    identities = {
        "identities": [
            {
                "name": "riverlake",
                "credentials": [{"accessKey": key, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    cfg.touch(mode=0o600)
    cfg.write_text(json.dumps(identities))


def _check_ports(svc: Service) -> None:
    for label, port in svc.ports.items():
        if not port_free(port):
            raise StackError(
                f"port {port} ({svc.name} {label}) is already in use; "
                f"set {svc.setting} to a free port"
            )


def _private_opener(path: str, flags: int) -> int:
    """``open(..., opener=)``: a file created readable by its owner only."""
    return os.open(path, flags, 0o600)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(path, "w", opener=_private_opener) as f:
        f.write(text)


def _service_env(svc: Service) -> dict[str, str]:
    """This process's environment with the service's own; an empty value in the
    service's unsets the variable (an inherited empty one is passed on, as it is)."""
    return {k: v for k, v in {**os.environ, **svc.env}.items()
            if not (k in svc.env and svc.env[k] == "")}  # fmt: skip


def _start(svc: Service, home: Path) -> None:
    log = svc.log_file(home)
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = _service_env(svc)
    with open(log, "ab", opener=_private_opener) as out:
        proc = subprocess.Popen(
            svc.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True, cwd=home, umask=PRIVATE_UMASK,
        )  # fmt: skip
    _write_private(
        svc.pid_file(home),
        json.dumps({"pid": proc.pid, "argv": svc.argv, "ports": svc.ports, "started": time.time()}),
    )


def _wait_healthy(
    svcs: list[Service], home: Path, deadline: float, report: Report | None = None
) -> None:
    """Wait until every service answers its health check, all checked each round, and
    ``report`` each as it turns healthy or fails (the progress a person sees)."""
    report = report or _no_report
    pending = list(svcs)
    while pending:
        for svc in list(pending):
            if healthy(svc):
                pending.remove(svc)
                report(svc.name, "healthy", "")
            elif not _alive(_read_pid(svc, home)):
                report(svc.name, "failed", "exited during start-up")
                raise StackError(
                    f"{svc.name} exited during start-up; see {svc.log_file(home)}: "
                    f"{_tail(svc.log_file(home), 2)}"
                )
        if not pending:
            return
        if time.monotonic() >= deadline:
            svc = pending[0]
            report(svc.name, "failed", f"not healthy in {STARTUP_TIMEOUT_S}s")
            raise StackError(
                f"{svc.name} did not become healthy in {STARTUP_TIMEOUT_S}s; "
                f"see {svc.log_file(home)}"
            )
        time.sleep(0.25)


def _ensure_bucket(settings: Settings) -> None:
    from riverlake import lake

    if not settings.lake_is_s3:
        return
    fs = lake.filesystem(settings)
    bucket = lake.strip_scheme(settings.lake_url).split("/", 1)[0]
    deadline = time.monotonic() + 30
    while True:
        try:
            if not fs.exists(bucket):
                fs.mkdir(bucket)
            return
        except OSError:
            # The S3 gateway answers before the filer is ready to take buckets.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
            fs.invalidate_cache()


def _seed_sql(settings: Settings) -> None:
    """Fill the demo dimensions database (SQLite by default) if its tables are empty."""
    import sqlalchemy as sa

    from riverlake.demo.dimensions import seed_dimensions

    try:
        seed_dimensions(str(settings.sql_url))
    except sa.exc.SQLAlchemyError as e:
        url = sa.make_url(str(settings.sql_url)).render_as_string(hide_password=True)
        first = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise StackError(f"cannot seed the dimensions database {url}: {first}") from e


STACK_FILE = "stack.json"


def demo_enabled(settings: Settings) -> bool:
    """True when the local stack of ``settings.home`` was started with the demo on."""
    path = settings.home / STACK_FILE
    return path.exists() and bool(json.loads(path.read_text()).get("demo"))


def set_demo(settings: Settings, demo: bool) -> None:
    _write_private(settings.home / STACK_FILE, json.dumps({"demo": demo}))


def _demo_drops(settings: Settings, pipeline: str):
    """The demo's drops upstream when it serves ``pipeline`` on this stack, else None."""
    if pipeline != DEMO_PIPELINE or not demo_enabled(settings):
        return None
    from riverlake.demo import drops

    return drops


def deliver_demo_data(settings: Settings, pipeline: str, start, end) -> list[str] | None:
    """Before a run: the demo upstream of ``pipeline`` delivers its data for [start, end]
    (the demo's whole year where unset). None when the stack serves no demo for it."""
    drops = _demo_drops(settings, pipeline)
    if drops is None:
        return None
    return drops.deliver_drops(settings, start or drops.FIRST_DAY, end or drops.LAST_DAY)


def next_demo_day(settings: Settings, pipeline: str, day: date) -> date | None:
    """The day after ``day`` that the demo upstream of ``pipeline`` can drop, or None."""
    drops = _demo_drops(settings, pipeline)
    if drops is None or day >= drops.LAST_DAY:
        return None
    return day + timedelta(days=1)


#: The pipeline whose upstream the demo plays (its daily drops).
DEMO_PIPELINE = "flights"


def ensure_home(settings: Settings) -> Path:
    """The state folder, private to its owner (it holds credentials, data and logs).

    A folder left readable by an older version is tightened with everything in it:
    folders to 700, files lose their group and other bits. Links are not followed.
    """
    home = settings.home.resolve()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    home.chmod(0o700)
    for root, dirs, files in os.walk(home):
        for name in dirs + files:
            path = Path(root, name)
            with contextlib.suppress(FileNotFoundError):  # a running service's temp file
                st = path.lstat()
                if stat.S_ISLNK(st.st_mode):
                    continue
                mode = stat.S_IMODE(st.st_mode)
                private = 0o700 if stat.S_ISDIR(st.st_mode) else mode & 0o700
                if mode != private:
                    path.chmod(private)
    return home


#: ``up``'s progress hook: ``report(name, state, detail, kind="service")``, where state is
#: waiting, healthy or failed for a service (done or failed for a step).
Report = Callable[..., None]


def _no_report(*args, **kw) -> None:
    return None


@contextlib.contextmanager
def _step(report: Report, name: str, detail: str):
    """A step of ``up`` after the services are healthy, reported as it goes."""
    report(name, "waiting", detail, kind="step")
    try:
        yield
    except BaseException:
        report(name, "failed", detail, kind="step")
        raise
    report(name, "done", detail, kind="step")


def up(settings: Settings, demo: bool = True, report: Report | None = None) -> list[dict]:
    """Start every service that is not running yet, wait until all are healthy.

    ``report`` (optional) hears each service's progress: waiting (started, or already
    running), then healthy or failed; then the steps (the bucket, the demo database)."""
    report = report or _no_report
    home = ensure_home(settings)
    key, secret = _ensure_credentials(settings)
    _write_s3_config(settings, key, secret)
    wanted = [s for s in services(settings) if s.on_up and (demo or not s.demo)]
    todo = [s for s in wanted if not _alive(_read_pid(s, home))]
    for svc in wanted:  # a runner imported under another environment would refuse this one
        if svc not in todo and _env_differs(svc, _read_pid(svc, home)):
            _stop(svc, home)
            todo.append(svc)
    for svc in todo:  # every port is checked before anything starts
        _check_ports(svc)
    started = []
    try:
        for svc in wanted:
            if svc in todo:
                _start(svc, home)
                started.append(svc)
                report(svc.name, "waiting", f"started, pid {_read_pid(svc, home)['pid']}")
            else:
                report(svc.name, "waiting", "already running")
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        _wait_healthy(wanted, home, deadline, report)
        if settings.lake_is_s3:
            with _step(report, "lake bucket", settings.lake_url):
                _ensure_bucket(_with_credentials(settings, key, secret))
        if demo:
            with _step(report, "demo dimensions", "seeding the SQL dimensions"):
                _seed_sql(settings)
        set_demo(settings, demo)
    except BaseException:
        for svc in started:
            _stop(svc, home)
        raise
    return status(settings)


def _env_differs(svc: Service, info: dict) -> bool:
    """The warm runner ``svc`` was started under an environment other than the one this
    process would start it with (what it imported ahead may not be what a run here
    would import: it would refuse every run; see :mod:`riverlake.ops.warm`)."""
    if not svc.health_socket:
        return False
    theirs = process_environ(info["pid"])
    return theirs is not None and warm.relevant(theirs) != warm.relevant(_service_env(svc))


def process_environ(pid: int) -> dict[str, str] | None:
    """The environment process ``pid`` was started with (None if it cannot be read)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def _with_credentials(settings: Settings, key: str, secret: str) -> Settings:
    from pydantic import SecretStr

    return settings.model_copy(
        update={"s3_access_key": SecretStr(key), "s3_secret_key": SecretStr(secret)}
    )


def _stop(svc: Service, home: Path, timeout: float = 15) -> bool:
    info = _read_pid(svc, home)
    stopped = False
    if _alive(info):
        pid = info["pid"]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(info):
            time.sleep(0.1)
        if _alive(info):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        stopped = True
    svc.pid_file(home).unlink(missing_ok=True)
    return stopped


def down(settings: Settings) -> list[str]:
    """Stop what ``up`` started (pid files under the state folder); returns their names."""
    home = settings.home.resolve()
    return [svc.name for svc in reversed(services(settings)) if _stop(svc, home)]


def status(settings: Settings) -> list[dict]:
    home = settings.home.resolve()
    out = []
    for svc in services(settings):
        info = _read_pid(svc, home)
        alive = _alive(info)
        state = "stopped"
        if alive:
            state = "running" if healthy(svc) else "unhealthy"
        out.append(
            {
                "service": svc.name,
                "state": state,
                "pid": info["pid"] if alive else None,
                "url": svc.url,
                "log": str(svc.log_file(home)),
            }
        )
    return out


def start_worker(settings: Settings, env: dict[str, str]) -> bool:
    """Start the process worker that runs the local deployments; False if it already runs."""
    home = settings.home.resolve()
    (worker,) = [s for s in services(settings) if s.name == "worker"]
    if _alive(_read_pid(worker, home)):
        return False
    worker.env = {**worker.env, **env}
    _start(worker, home)
    time.sleep(1.0)
    if not _alive(_read_pid(worker, home)):
        raise StackError(f"the Prefect worker exited; see {worker.log_file(home)}: "
                         f"{_tail(worker.log_file(home), 2)}")  # fmt: skip
    return True
