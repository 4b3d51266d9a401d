"""The containers tier: the production topology as containers of the Riverlake image on
one podman network (see topology.py for what is translated and why).

One session fixture stands it up once, in the order a cluster would come up:

1. the image, built by deploy/containers/build.py (the local Debian base made once);
2. what a cluster gets from elsewhere, each a container of the same image: SeaweedFS
   (S3) and a Prefect server under the names the manifests use
   (``prefect-server.prefect.svc.cluster.local``), the demo weather API; PostgreSQL is
   the machine's own, reached through a TCP relay on the network's gateway;
3. the ConfigMap (the dev overlay's, with this network's endpoints) and the Secrets;
4. the Dask scheduler Deployment, its Service (as DNS names) and the worker Deployments,
   rendered by the dask-kubernetes operator's functions from cluster.make_dask_cluster_spec;
5. the dev overlay's Deployments: the apps (with the metrics exporter) and the Prefect
   worker; an OpenID Connect provider for the apps' sign-in on the gateway.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, need
from tests.containers import topology as tp

NAMESPACE = "riverlake"
BUCKET_URL = "s3://riverlake-ct/lake"
CLIENT_ID, CLIENT_SECRET = "riverlake-apps", "s3cret-of-the-client"
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432"


def _load_build():
    spec = importlib.util.spec_from_file_location("rl_build", ROOT / "deploy/containers/build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def environ(values: dict[str, str]):
    """Exactly ``values`` as the Riverlake and Prefect settings in os.environ for the
    block (host-side calls that read the settings): what earlier tests of the session
    left there (the local stack's ports, a pipelines folder) is set aside meanwhile."""
    ours = [k for k in os.environ if k.startswith(("RIVERLAKE_", "PREFECT_"))]
    saved = {k: os.environ.get(k) for k in {*values, *ours}}
    for k in ours:
        os.environ.pop(k)
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Relay:
    """A TCP relay from the podman network's gateway to a service of this machine that
    listens on 127.0.0.1 only (PostgreSQL here): plumbing, not a stand-in."""

    def __init__(self, listen: str, target: tuple[str, int], subnet: str):
        import ipaddress

        self.sock = socket.create_server((listen, 0))
        self.port = self.sock.getsockname()[1]
        self.target = target
        self.subnet = ipaddress.ip_network(subnet)
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import ipaddress

        while not self.closed:
            try:
                client, peer = self.sock.accept()
            except OSError:
                return
            if ipaddress.ip_address(peer[0]) not in self.subnet:  # only this network's pods
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self):
        self.closed = True
        self.sock.close()


@dataclass
class Topology:
    podman: tp.Podman
    image: str
    workdir: Path
    host_env: dict[str, str] = field(default_factory=dict)  # the host's view (IPs)
    config: dict[str, str] = field(default_factory=dict)  # the ConfigMap's data
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    configmap_file: Path | None = None
    ips: dict[str, str] = field(default_factory=dict)
    originals: dict[tuple, dict] = field(default_factory=dict)  # (kind, name) -> as rendered
    dask: list[dict] = field(default_factory=list)  # the operator's objects, as played
    overlay: list[dict] = field(default_factory=list)  # the dev overlay's Deployments, as played
    timings: dict[str, float] = field(default_factory=dict)
    apps_port: int = 0
    idp_url: str = ""
    idp_app: object = None
    scheduler_address: str = ""

    def played(self) -> list[dict]:
        return self.dask + self.overlay

    def containers(self) -> list[tuple[dict, dict, str]]:
        """(object, container spec as rendered, podman container name) of every played
        container: the spec before podman's translations, whose probes the kubelet makes."""
        out = []
        for o in self.played():
            rendered = tp.pod_spec(self.rendered(o))["containers"]
            out += [(o, c, tp.container_name(o, c["name"])) for c in rendered]
        return out

    def keep(self, rendered: dict, played: dict) -> dict:
        self.originals[rendered["kind"], rendered["metadata"]["name"]] = rendered
        return played

    def rendered(self, played: dict) -> dict:
        return self.originals[played["kind"], played["metadata"]["name"]]

    def find(self, kind: str, component: str) -> dict:
        for o in self.played():
            labels = o["metadata"].get("labels", {})
            if o["kind"] == kind and component in (
                labels.get("dask.org/component"),
                labels.get("app.kubernetes.io/name"),
            ):
                return o
        raise KeyError(component)

    def workers(self) -> list[dict]:
        return [
            o for o in self.dask if o["metadata"]["labels"].get("dask.org/component") == "worker"
        ]

    def ready(self, obj: dict) -> bool:
        """Every container of ``obj`` answers its readiness probe (as the kubelet would)."""
        for c in tp.pod_spec(self.rendered(obj))["containers"]:
            if "readinessProbe" not in c:
                continue
            ip = self.podman.ip(tp.container_name(obj, c["name"]))
            if not ip or not tp.probe_ok(tp.probe_target(c, "readinessProbe", ip)):
                return False
        return True


def _render_overlay() -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy/kubernetes/overlays/dev")],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


def _free_subnet(pm: tp.Podman) -> str:
    taken = pm("network", "ls", "--format", "{{range .Subnets}}{{.Subnet}} {{end}}")
    for _ in range(50):
        subnet = f"10.89.{random.randint(100, 250)}.0/24"
        if subnet not in taken:
            return subnet
    raise RuntimeError("no free subnet")


def _wait_http(url: str, timeout: float, what: str) -> None:
    def ok():
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                return r.status < 500
        except urllib.error.HTTPError as e:
            return e.code < 500
        except OSError:
            return False

    tp.wait_for(ok, timeout, what)


def _start_idp(host: str):
    import uvicorn

    from tests.browser.oidc_idp import create_idp

    sock = socket.create_server((host, 0))
    issuer = f"http://{host}:{sock.getsockname()[1]}"
    app = create_idp(issuer, CLIENT_ID, CLIENT_SECRET)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    tp.wait_for(lambda: server.started, 15, "the OIDC provider")
    return issuer, app, server


@pytest.fixture(scope="package")
def topo(tmp_path_factory):
    need(shutil.which("podman") is not None, "podman is not installed (apt-get install podman)")
    # rootful podman: the host reaches pod IPs on the bridge and may signal a container
    need(os.geteuid() == 0, "the containers tier needs root (rootful podman)")
    need(shutil.which("kubectl") is not None, "kubectl is not installed")
    from cryptography.fernet import Fernet

    build = _load_build()
    t0 = time.monotonic()
    image = build.ensure_image(build.TAG)
    workdir = tmp_path_factory.mktemp("containers")
    workdir.chmod(0o755)
    probe = tp.Podman("unused", "10.89.0.0/24", workdir)
    pm = tp.Podman(f"riverlake-ct-{secrets.token_hex(3)}", _free_subnet(probe), workdir)
    t = Topology(podman=pm, image=image, workdir=workdir)
    t.timings["image_build_or_reuse_s"] = time.monotonic() - t0
    relay = server = None
    sql_db = f"riverlake_ct_{secrets.token_hex(3)}"
    try:
        pm.create_network()
        # --- 2. what a cluster gets from elsewhere ------------------------------------
        key, secret = "rl" + secrets.token_hex(8), secrets.token_urlsafe(30)
        s3_conf = workdir / "s3.json"
        s3_conf.write_text(json.dumps({"identities": [{
            "name": "riverlake", "credentials": [{"accessKey": key, "secretKey": secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))  # fmt: skip
        s3_conf.chmod(0o644)
        tmpfs = "/tmp:rw,size=4g,mode=1777"
        pm.run("ct-seaweedfs", ["weed", "server", "-dir=/tmp", "-ip=seaweedfs",
                                "-ip.bind=0.0.0.0", "-s3", "-s3.port=8333",
                                "-s3.config=/etc/riverlake/s3.json", "-master.volumeSizeLimitMB=256",
                                "-volume.max=0", "-s3.port.iceberg=0", "-s3.port.lance=0"],
               image=image, aliases=("seaweedfs",), tmpfs=tmpfs,
               volumes=(f"{s3_conf}:/etc/riverlake/s3.json:ro",))  # fmt: skip
        pm.run("ct-prefect", ["prefect", "server", "start", "--host", "0.0.0.0", "--port", "4200"],
               image=image, tmpfs=tmpfs,
               aliases=("prefect-server", "prefect-server.prefect.svc.cluster.local"),
               env={"PREFECT_HOME": "/tmp/prefect", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "PREFECT_API_DATABASE_CONNECTION_URL":
                        "sqlite+aiosqlite:////tmp/prefect/prefect.db"})  # fmt: skip
        # The weather API wants a bearer token, as a real one would: the pods that read it
        # get it from Secret riverlake-sources (envFrom), never from the manifests.
        api_token = secrets.token_urlsafe(16)
        pm.run("ct-weather-api", ["python", "-m", "riverlake.demo", "api", "--port", "8000", "--host", "0.0.0.0"],
               image=image, aliases=("weather-api",), tmpfs=tmpfs,
               env={"RIVERLAKE_API_TOKEN": api_token})  # fmt: skip
        for name in ("seaweedfs", "prefect", "weather-api"):
            t.ips[name] = pm.ip(f"ct-{name}")
        # PostgreSQL: the machine's own server, a database of its own for this tier.

        _sql(f"CREATE DATABASE {sql_db}")
        from riverlake.demo.dimensions import seed_dimensions

        seed_dimensions(f"{PG_ADMIN}/{sql_db}")
        relay = Relay(pm.gateway, ("127.0.0.1", 5432), pm.subnet)
        # A password in the URL makes the manifests carry it as a Secret reference (the
        # machine's PostgreSQL trusts local connections, so its value is not checked).
        sql_url = f"postgresql+psycopg://postgres:not-checked@{pm.gateway}:{relay.port}/{sql_db}"

        _wait_http(f"http://{t.ips['prefect']}:4200/api/health", 120, "the Prefect server")
        _wait_http(f"http://{t.ips['seaweedfs']}:8333/", 120, "SeaweedFS")
        _wait_http(f"http://{t.ips['weather-api']}:8000/health", 60, "the weather API")
        try:  # without the token it refuses
            urllib.request.urlopen(
                f"http://{t.ips['weather-api']}:8000/weather?limit=1", timeout=10
            )
            raise AssertionError("the weather API answered without its token")
        except urllib.error.HTTPError as e:
            assert e.code == 401, e
        t.host_env = {
            "RIVERLAKE_LAKE_URL": BUCKET_URL,
            "RIVERLAKE_S3_ENDPOINT": f"http://{t.ips['seaweedfs']}:8333",
            "RIVERLAKE_S3_ACCESS_KEY": key,
            "RIVERLAKE_S3_SECRET_KEY": secret,
            "RIVERLAKE_SQL_URL": sql_url,
            "RIVERLAKE_API_URL": f"http://{t.ips['weather-api']}:8000",
            "RIVERLAKE_HOME": str(workdir / "host-home"),
            "PREFECT_API_URL": f"http://{t.ips['prefect']}:4200/api",
            "RIVERLAKE_PREFECT_API_URL": f"http://{t.ips['prefect']}:4200/api",
        }
        with environ(t.host_env):
            from riverlake.ops import stack
            from riverlake.settings import get_settings

            tp.wait_for(lambda: _bucket(stack, get_settings()), 60, "the lake bucket")

        # --- 3. the ConfigMap and the Secrets -----------------------------------------
        overlay = _render_overlay()
        cm = next(o for o in overlay if o["kind"] == "ConfigMap"
                  and o["metadata"]["name"] == "riverlake-config")  # fmt: skip
        issuer, t.idp_app, server = _start_idp(pm.gateway)
        t.idp_url = issuer
        t.apps_port = _free_port()
        app_base = f"http://127.0.0.1:{t.apps_port}"
        t.scheduler_address = f"tcp://riverlake-ct-scheduler.{NAMESPACE}.svc.cluster.local:8786"
        t.config = {
            **cm["data"],
            # What Terraform patches per environment, for this network:
            "RIVERLAKE_LAKE_URL": BUCKET_URL,
            "RIVERLAKE_S3_ENDPOINT": "http://seaweedfs:8333",
            "RIVERLAKE_API_URL": "http://weather-api:8000",
            "RIVERLAKE_APP_ORIGINS": f"127.0.0.1:{t.apps_port}",
            "RIVERLAKE_OAUTH_REDIRECT_URI": f"{app_base}/login",
            "RIVERLAKE_OAUTH_EXTRA_PARAMS": json.dumps({
                "AUTHORIZE_URL": f"{issuer}/authorize", "TOKEN_URL": f"{issuer}/token",
                "USER_URL": f"{issuer}/userinfo"}),
        }  # fmt: skip
        cm_played = {**cm, "data": t.config}
        t.configmap_file = workdir / "configmap.yaml"
        t.configmap_file.write_text(yaml.safe_dump(cm_played))
        t.secrets = {
            "riverlake-s3": {"RIVERLAKE_S3_ACCESS_KEY": key, "RIVERLAKE_S3_SECRET_KEY": secret},
            "riverlake-sql": {"RIVERLAKE_SQL_URL": sql_url},
            "riverlake-sources": {"RIVERLAKE_API_TOKEN": api_token},
            "riverlake-apps-auth": {
                "cookie-secret": secrets.token_urlsafe(32),
                "oauth-key": CLIENT_ID,
                "oauth-secret": CLIENT_SECRET,
                "oauth-encryption-key": Fernet.generate_key().decode(),
            },
        }
        for name, data in t.secrets.items():
            pm.secret(name, data)

        # --- 4. the Dask cluster as the operator makes it -----------------------------
        from riverlake import pipelines
        from riverlake.cluster import cluster_options, make_dask_cluster_spec

        run_env = {  # the flow-run pod's environment: the ConfigMap, its Secrets, the image
            **t.config, **t.secrets["riverlake-s3"], **t.secrets["riverlake-sql"],
            "RIVERLAKE_IMAGE": image, "RIVERLAKE_HOME": "/tmp/riverlake",
        }  # fmt: skip
        with environ(run_env):
            from riverlake.settings import get_settings

            settings = get_settings()
            size = pipelines.pipelines(settings)["flights"].profile
            spec = make_dask_cluster_spec(
                cluster_options(settings, profile="kubernetes", worker_profile=size),
                name="riverlake-ct",
            )
        t.dask = [t.keep(o, tp.for_podman(o, image=image, namespace=NAMESPACE,
                                          secrets=t.secrets))
                  for o in tp.operator_objects(spec, NAMESPACE)]  # fmt: skip
        service = next(o for o in t.dask if o["kind"] == "Service")
        t.dask.remove(service)
        scheduler = next(o for o in t.dask if tp.selects(service, o))
        t0 = time.monotonic()
        pm.play([scheduler], aliases=tuple(tp.service_names(service, NAMESPACE)))
        tp.wait_for(lambda: t.ready(scheduler), 120, "the scheduler's readiness probe")
        t.timings["kube_play_to_first_ready_pod_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        for w in t.workers():
            pm.play([w])
        for w in t.workers():
            tp.wait_for(lambda w=w: t.ready(w), 180, f"worker {w['metadata']['name']}")
        t.timings["workers_ready_s"] = time.monotonic() - t0

        # --- 5. the dev overlay's Deployments ----------------------------------------
        for o in overlay:
            if o["kind"] != "Deployment":
                continue
            if o["metadata"]["name"] == "riverlake-apps":
                o["spec"]["replicas"] = 1
                http = next(p for p in tp.pod_spec(o)["containers"][0]["ports"]
                            if p["name"] == "http")  # fmt: skip
                http["hostPort"] = t.apps_port  # published on the machine's loopback
                http["hostIP"] = "127.0.0.1"
            played = tp.for_podman(o, image=image, namespace=NAMESPACE,
                                   configmaps={"riverlake-config": t.config},
                                   secrets=t.secrets)  # fmt: skip
            t.overlay.append(t.keep(o, played))
        # The Prefect worker polls the Kubernetes pool: register it (and the deployments).
        with environ(t.host_env):
            from tests.conftest import riverlake_cli

            res = riverlake_cli("deploy", "--target", "kubernetes", env=t.host_env, timeout=300)
            assert res.returncode == 0, res.stderr[-2000:]
        t0 = time.monotonic()
        pm.play(t.overlay, configmaps=(t.configmap_file,))
        for o in t.overlay:
            tp.wait_for(lambda o=o: t.ready(o), 180, f"{o['metadata']['name']} readiness")
        t.timings["overlay_ready_s"] = time.monotonic() - t0
        yield t
    finally:
        with contextlib.ExitStack() as stack:  # every step runs, whichever fails
            stack.callback(_sql, f"DROP DATABASE IF EXISTS {sql_db} WITH (FORCE)")
            if server:
                stack.callback(setattr, server, "should_exit", True)
            if relay:
                stack.callback(relay.close)
            stack.callback(pm.close)
            stack.callback(_save_logs, t)


def _bucket(stack, settings) -> bool:
    try:
        stack._ensure_bucket(settings)
        return True
    except OSError:
        return False


def _free_port() -> int:
    from riverlake.ops.stack import free_port

    return free_port()


def _sql(statement: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(f"{PG_ADMIN}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(statement))
    engine.dispose()


def _save_logs(t: Topology) -> None:
    """This topology's container logs and figures under test-artifacts/containers/."""
    out = ROOT / "test-artifacts" / "containers"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    names = [*t.podman.containers, *(name for _, _, name in t.containers())]
    for name in names:
        (out / f"{name}.log").write_text(t.podman.logs(name)[-200_000:])
    # Figures for the record (reported, never asserted: timings are not tests).
    timings = {k: round(v, 1) for k, v in t.timings.items()}
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
