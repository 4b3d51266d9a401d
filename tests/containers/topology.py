"""The production topology as podman runs it: Kubernetes objects rendered as data, the
few translations podman 4.3 needs, and a thin podman driver.

What Kubernetes would do and podman does not is either translated here (each rule below
says why) or left to the tests that check it as data (NetworkPolicies, RBAC, the
operator's reconcile loop, the autoscaler):

* images: the riverlake image is rewritten to the local tag, pulled ``Never`` (no
  registry is reachable; the manifests' own tag stays in the manifests);
* ``$(VAR)`` in args: the kubelet expands it from the container's env; podman 4.3 does
  not, so the same rule is applied here (the operator's worker args use it for the name);
* ``fieldRef: metadata.namespace``: podman has no namespaces; the value Kubernetes would
  inject (the objects' namespace) is written in;
* ``emptyDir``: podman 4.3 makes a named volume of it, shared by every pod that uses the
  same volume name; each pod's volumes get the pod's name as a prefix so /tmp stays
  private to its pod, as an emptyDir is;
* ports: podman 4.3 publishes every containerPort on the machine's same port, where
  Kubernetes publishes none without a hostPort (two workers would collide on 8788):
  probes' named ports are resolved to numbers, then ports without a hostPort dropped;
* envFrom: Kubernetes lets a container's ``env`` win over its ``envFrom``; podman 4.3
  does the reverse (a run's RIVERLAKE_CLUSTER lost to the ConfigMap's). Each envFrom
  ConfigMap becomes ``configMapKeyRef`` entries, and each envFrom Secret
  ``secretKeyRef`` entries, for the keys ``env`` does not set (an optional Secret the
  test does not supply: none), a later source winning over an earlier one as in
  Kubernetes;
* Services: no kube-proxy; a Service becomes DNS names (``NAME``, ``NAME.NS``,
  ``NAME.NS.svc.cluster.local``) of the pod its selector matches, on the podman network;
* liveness probes: podman turns an httpGet/tcpSocket liveness probe into a healthcheck
  that runs ``curl``/``nc`` inside the container, which the image does not ship; it
  becomes the same check in Python (``exec``), run by ``podman healthcheck run``;
* readiness and liveness as the kubelet makes them: from outside the container;
  :func:`probe_target` gives the address the tests probe from the host, which reaches
  pod IPs on the network's bridge (the original probes, before translation).

Not enforced by podman and so not proven here: emptyDir ``sizeLimit``, ``fsGroup``,
``seccompProfile``, ``runAsNonRoot`` as an admission check (the image's user is 10001
anyway and the tests check the uid), resource requests (limits are applied as cgroup
limits), Secrets' ``optional`` when absent (every Secret exists here).
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "deploy" / "containers" / "containers.conf"
RIVERLAKE_IMAGES = re.compile(r"^(riverlake|ghcr\.io/riverlake/riverlake)(:.*)?$")


# --- rendering as data (pure) -----------------------------------------------------------


def operator_objects(cluster: dict, namespace: str) -> list[dict]:
    """The scheduler Deployment, the scheduler Service and one Deployment per worker, as
    the dask-kubernetes operator creates them from ``cluster`` (a DaskCluster), built by
    the operator's own controller functions."""
    from dask_kubernetes.operator.controller import controller as ctl

    name = cluster["metadata"]["name"]
    labels = dict(cluster["metadata"].get("labels", {}))
    annotations = dict(cluster["metadata"].get("annotations", {}))
    spec = cluster["spec"]
    out = [
        ctl.build_scheduler_deployment_spec(name, spec["scheduler"]["spec"], annotations, labels),
        ctl.build_scheduler_service_spec(name, spec["scheduler"]["service"], annotations, labels),
    ]
    group = f"{name}-default"  # the default DaskWorkerGroup the operator makes
    for _ in range(spec["worker"]["replicas"]):
        out.append(
            ctl.build_worker_deployment_spec(
                group,
                namespace,
                name,
                uuid.uuid4().hex[:10],
                spec["worker"]["spec"],
                annotations,
                labels,
            )
        )
    return out


def pod_spec(obj: dict) -> dict:
    """The pod spec of a Deployment, a Job or a Pod."""
    if obj["kind"] == "Pod":
        return obj["spec"]
    return obj["spec"]["template"]["spec"]


def pod_name(obj: dict) -> str:
    """The name podman 4.3 gives the pod it plays for ``obj``."""
    name = obj["metadata"]["name"]
    return name if obj["kind"] == "Pod" else f"{name}-pod-0"


def container_name(obj: dict, container: str) -> str:
    return f"{pod_name(obj)}-{container}"


def _expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's rule: $(VAR) becomes VAR's value when defined; $$ escapes."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
                  text)  # fmt: skip


def for_podman(obj: dict, *, image: str, namespace: str,
               configmaps: dict[str, dict[str, str]] | None = None,
               secrets: dict[str, dict[str, str]] | None = None) -> dict:  # fmt: skip
    """``obj`` with the translations listed in this module's docstring (pure);
    ``configmaps`` and ``secrets``: the data of the ConfigMaps and Secrets its envFrom
    names."""
    obj = copy.deepcopy(obj)
    if obj["kind"] not in ("Pod", "Deployment", "Job"):
        return obj
    spec = pod_spec(obj)
    prefix = obj["metadata"]["name"]
    renamed = {}
    for vol in spec.get("volumes", []):
        if "emptyDir" not in vol:  # a hostPath or a claim would mean something else here
            raise ValueError(f"{prefix}: volume {vol['name']} is not an emptyDir")
        renamed[vol["name"]] = f"{prefix}-{vol['name']}"
        vol["name"] = renamed[vol["name"]]
    for c in spec["containers"]:
        if RIVERLAKE_IMAGES.match(c["image"]):
            c["image"] = image
            c["imagePullPolicy"] = "Never"
        for m in c.get("volumeMounts", []):
            m["name"] = renamed.get(m["name"], m["name"])
        named = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            for how in ("httpGet", "tcpSocket"):
                target = c.get(kind, {}).get(how)
                if target and isinstance(target.get("port"), str):
                    target["port"] = named[target["port"]]
        if "livenessProbe" in c:
            c["livenessProbe"] = _python_probe(c["livenessProbe"])
        c["ports"] = [p for p in c.get("ports", []) if p.get("hostPort")]
        if not c["ports"]:
            del c["ports"]
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("fieldRef", {})
            if ref.get("fieldPath") == "metadata.namespace":
                e.pop("valueFrom")
                e["value"] = namespace
        own = {e["name"] for e in c.get("env", [])}
        sourced: dict[str, dict] = {}  # key -> its reference; a later envFrom wins
        for src in c.pop("envFrom", []):
            kind = next((k for k in ("configMapRef", "secretRef") if k in src), None)
            if kind is None or "prefix" in src:
                raise ValueError(f"{prefix}: envFrom {src} is not translated")
            name, optional = src[kind]["name"], src[kind].get("optional", False)
            data = (configmaps if kind == "configMapRef" else secrets) or {}
            if name not in data and optional:
                continue
            ref = "configMapKeyRef" if kind == "configMapRef" else "secretKeyRef"
            for k in data[name]:
                sourced[k] = {"name": k, "valueFrom": {ref: {"name": name, "key": k}}}
        c["env"] = [r for k, r in sourced.items() if k not in own] + c.get("env", [])
        literal = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
        for key in ("args", "command"):
            if key in c:
                c[key] = [_expand(str(a), literal) for a in c[key]]
    return obj


def _python_probe(probe: dict) -> dict:
    """An httpGet/tcpSocket probe as the same check run inside the container by Python.
    podman 4.3 splits an exec probe's command on spaces and hands it to a shell, so the
    code has no spaces and is quoted for that shell."""
    out = {k: v for k, v in probe.items() if k not in ("httpGet", "tcpSocket")}
    if "httpGet" in probe:
        g = probe["httpGet"]
        url = f"http://127.0.0.1:{g['port']}{g.get('path', '/')}"
        code = f"__import__('urllib.request').request.urlopen('{url}',timeout=5)"
    elif "tcpSocket" in probe:
        port = probe["tcpSocket"]["port"]
        code = f"__import__('socket').create_connection(('127.0.0.1',{port}),5)"
    else:
        return probe
    out["exec"] = {"command": ["python", "-c", f'"{code}"']}
    return out


def service_names(service: dict, namespace: str) -> list[str]:
    name = service["metadata"]["name"]
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc",
            f"{name}.{namespace}.svc.cluster.local"]  # fmt: skip


def selects(service: dict, obj: dict) -> bool:
    """Whether ``service``'s selector matches the pods of ``obj``."""
    labels = obj["metadata"] if obj["kind"] == "Pod" else obj["spec"]["template"]["metadata"]
    have = labels.get("labels", {})
    return all(have.get(k) == v for k, v in service["spec"]["selector"].items())


def probe_target(container: dict, kind: str, ip: str) -> tuple[str, str | tuple[str, int]]:
    """Where the kubelet would send ``container``'s ``kind`` probe for a pod at ``ip``:
    ("http", URL) or ("tcp", (ip, port)); named ports resolved."""
    probe = container[kind]
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}

    def port(value):
        return ports[value] if isinstance(value, str) else int(value)

    if "httpGet" in probe:
        g = probe["httpGet"]
        return "http", f"http://{ip}:{port(g['port'])}{g.get('path', '/')}"
    if "tcpSocket" in probe:
        return "tcp", (ip, port(probe["tcpSocket"]["port"]))
    raise ValueError(f"unsupported probe {probe}")


def probe_ok(target: tuple[str, Any], timeout: float = 3.0) -> bool:
    """One probe as the kubelet makes it: HTTP 200-399, or a TCP connection."""
    kind, where = target
    try:
        if kind == "http":
            with urllib.request.urlopen(where, timeout=timeout) as r:
                return 200 <= r.status < 400
        with socket.create_connection(where, timeout=timeout):
            return True
    except OSError:
        return False


def secret_payload(data: dict[str, str]) -> str:
    """A Secret's data as podman 4.3's kube play reads a podman secret: a JSON object of
    base64 values (what a Secret's ``data`` holds)."""
    import base64

    return json.dumps({k: base64.b64encode(v.encode()).decode() for k, v in data.items()})


# --- podman (I/O) -----------------------------------------------------------------------


class Podman:
    """podman with this project's settings; every object it makes is removed by close()."""

    def __init__(self, network: str, subnet: str, workdir: Path):
        self.network, self.subnet, self.workdir = network, subnet, workdir
        self.env = {**os.environ, "CONTAINERS_CONF": str(CONF)}
        self.played: list[Path] = []
        self.containers: list[str] = []
        self.secrets: list[str] = []
        self.volumes: set[str] = set()

    def __call__(self, *args: str, check: bool = True, timeout: int = 300) -> str:
        proc = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
        if check and proc.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args[:3])} failed: {proc.stderr.strip()[-800:]}")
        return proc.stdout

    @property
    def gateway(self) -> str:
        return self.subnet.rsplit(".", 1)[0] + ".1"

    def create_network(self) -> None:
        self("network", "create", "--subnet", self.subnet, self.network)

    def secret(self, name: str, data: dict[str, str]) -> None:
        self("secret", "rm", name, check=False)
        f = self.workdir / f"secret-{name}.json"
        f.write_text(secret_payload(data))
        self("secret", "create", name, str(f))
        f.unlink()
        self.secrets.append(name)

    def run(self, name: str, args: list[str], *, image: str, aliases: tuple[str, ...] = (),
            env: dict[str, str] | None = None, volumes: tuple[str, ...] = (),
            tmpfs: str = "/tmp:rw,size=1g,mode=1777") -> str:  # fmt: skip
        """A plain container (the services a cluster gets from elsewhere: S3, Prefect),
        non-root with a read-only root filesystem like the manifests' pods."""
        net = self.network + (":" + ",".join(f"alias={a}" for a in aliases) if aliases else "")
        cmd = ["run", "-d", "--replace", "--name", name, "--network", net, "--read-only", "--user", "10001:10001",
               "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]  # fmt: skip
        for k, v in (env or {}).items():
            cmd += ["-e", f"{k}={v}"]
        for v in volumes:
            cmd += ["-v", v]
        cmd += ["--tmpfs", tmpfs]
        self(*cmd, image, *args)
        self.containers.append(name)
        return name

    def play(self, objects: list[dict], *, aliases: tuple[str, ...] = (),
             configmaps: tuple[Path, ...] = ()) -> float:  # fmt: skip
        """``podman kube play`` of ``objects`` on the network; the seconds it took."""
        f = Path(tempfile.mkstemp(suffix=".yaml", dir=self.workdir)[1])
        f.write_text(yaml.safe_dump_all(objects, sort_keys=False))
        net = self.network + (":" + ",".join(f"alias={a}" for a in aliases) if aliases else "")
        args = ["kube", "play", "--replace", "--network", net]
        for cm in configmaps:
            args += ["--configmap", str(cm)]
        t0 = time.monotonic()
        self(*args, str(f))
        self.played.append(f)
        for obj in objects:
            for vol in pod_spec(obj).get("volumes", []):
                if "emptyDir" in vol:
                    self.volumes.add(vol["name"])
        return time.monotonic() - t0

    def down(self, objects: list[dict]) -> None:
        for obj in objects:
            self("pod", "rm", "-f", pod_name(obj), check=False)

    def ip(self, container: str) -> str:
        out = self("inspect", container, "--format",
                   f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}')  # fmt: skip
        return out.strip()

    def inspect(self, container: str) -> dict:
        return json.loads(self("inspect", container))[0]

    def logs(self, container: str) -> str:
        proc = subprocess.run(["podman", "logs", container], env=self.env, capture_output=True,
                              text=True)  # fmt: skip
        return proc.stdout + proc.stderr

    def close(self) -> None:
        for f in self.played:
            self("kube", "down", str(f), check=False, timeout=120)
        for c in self.containers:
            self("rm", "-f", "-t", "2", c, check=False)
        for s in self.secrets:
            self("secret", "rm", s, check=False)
        for v in self.volumes:
            self("volume", "rm", "-f", v, check=False)
        self("network", "rm", "-f", self.network, check=False)


def wait_for(check, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
