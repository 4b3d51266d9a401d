"""Dask clusters: one function, three backends chosen by the settings' cluster profile.

* ``local``: a :class:`distributed.LocalCluster` sized from the settings;
* ``kubernetes``: the dask-kubernetes operator's ``KubeCluster`` from the DaskCluster
  spec built by :func:`make_dask_cluster_spec` (pure; tested as data);
* an address (``tcp://host:8786``): a scheduler that is already running.

Every worker gets :meth:`Settings.worker_env`, so Prefect tasks on workers report to
the real Prefect API and read the same lake.
"""

from __future__ import annotations

import copy
import re
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml

from riverlake.errors import RiverlakeError
from riverlake.settings import Settings, get_settings

PROFILES = ("local", "kubernetes")

#: Worker resources by pipeline profile (a declaration's ``profile``), per worker.
#: ``minimum``/``maximum`` bound the DaskAutoscaler of a run's cluster.
WORKER_PROFILES: dict[str, dict[str, Any]] = {
    "small": {"cpu": "500m", "memory": "2Gi", "threads": 1, "minimum": 1, "maximum": 2},
    "standard": {"cpu": "1", "memory": "4Gi", "threads": 1, "minimum": 2, "maximum": 8},
    "large": {"cpu": "2", "memory": "8Gi", "threads": 2, "minimum": 2, "maximum": 20},
}

#: Packages whose versions must match between the client, the scheduler and the workers.
MATCHED_PACKAGES = ("python", "dask", "distributed", "cloudpickle", "pandas", "numpy",
                    "pyarrow", "deltalake", "prefect", "riverlake")  # fmt: skip


class ClusterError(RiverlakeError):
    """A cluster that cannot be used as it is."""


def version_mismatches(versions: dict[str, Any]) -> list[str]:
    """Every (machine, package) whose version differs from the client's (pure).

    ``versions`` is what ``distributed.Client.get_versions(packages=...)`` returns.
    """

    def flat(info: dict[str, Any]) -> dict[str, str | None]:
        pk = dict(info.get("packages", {}))
        if "host" in info and "python" in info["host"]:
            pk.setdefault("python", info["host"]["python"])
        return pk

    client = flat(versions["client"])
    others = {"scheduler": versions.get("scheduler") or {}, **versions.get("workers", {})}
    out = []
    for who, info in others.items():
        theirs = flat(info)
        for pkg in MATCHED_PACKAGES:
            mine, got = client.get(pkg), theirs.get(pkg)
            if mine is not None and got is not None and mine != got:
                out.append(f"{who} has {pkg} {got} but the client has {mine}")
    return out


def check_versions(client) -> str:
    """Refuse a cluster whose scheduler or workers run other package versions; what was
    checked, in one line, when they all match."""
    extra = [p for p in MATCHED_PACKAGES if p not in ("python", "dask", "distributed")]
    versions = client.get_versions(check=False, packages=extra)
    bad = version_mismatches(versions)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ClusterError(
            f"version mismatch: {bad[0]}{more}; run the client, scheduler and workers from "
            "one image (see the Dockerfile)"
        )
    client_info = versions["client"]
    mine = {"python": client_info.get("host", {}).get("python"), **client_info.get("packages", {})}
    shown = ("python", "distributed", "riverlake")
    same = ", ".join(f"{p} {mine[p]}" for p in shown if mine.get(p))
    return f"the scheduler and {len(versions.get('workers', {}))} workers match the client: {same}"


def is_address(profile: str) -> bool:
    return bool(re.match(r"^(tcp|tls|ucx|inproc)://", profile))


def validate_profile(profile: str) -> str:
    if profile in PROFILES or is_address(profile):
        return profile
    raise RiverlakeError(
        f"unknown cluster {profile!r}: use local, kubernetes or a scheduler address tcp://HOST:PORT"
    )


def _memory_bytes(text: str) -> int:
    from dask.utils import parse_bytes

    return parse_bytes(text)


def _k8s_memory(text: str) -> str:
    """'4GiB' -> '4Gi' (Kubernetes quantity)."""
    return f"{_memory_bytes(text) // 2**20}Mi"


@dataclass(frozen=True)
class ClusterOptions:
    """Everything a cluster factory needs, resolved once at the edge (the CLI, a flow run's
    start) by :func:`cluster_options` and passed down as plain values.

    ``profile``: ``local``, ``kubernetes`` or a scheduler address. ``worker_profile``:
    the Kubernetes worker size (:data:`WORKER_PROFILES`), from the pipeline declaration.
    ``worker_env``: the environment every worker gets (its secrets only ever reach local
    worker processes; a DaskCluster manifest gets secret references instead).
    """

    profile: str
    workers: int
    threads_per_worker: int
    worker_memory: str
    processes: bool
    dashboard_address: str
    worker_profile: str
    worker_env: tuple[tuple[str, str], ...]
    image: str
    namespace: str
    idle_timeout: int
    pod_name: str | None
    pod_uid: str | None

    @property
    def env(self) -> dict[str, str]:
        return dict(self.worker_env)


def cluster_options(
    settings: Settings, *, profile: str | None = None, worker_profile: str | None = None
) -> ClusterOptions:
    """The cluster options of ``settings``; ``profile`` and ``worker_profile`` (a pipeline's
    declared size) override the settings' own. The one place settings become options."""
    prof = validate_profile(profile or settings.cluster)
    size = worker_profile or settings.worker_profile
    if size not in WORKER_PROFILES:
        raise RiverlakeError(f"unknown worker profile {size!r}: use {', '.join(WORKER_PROFILES)}")
    return ClusterOptions(
        profile=prof,
        workers=settings.workers,
        threads_per_worker=settings.threads_per_worker,
        worker_memory=settings.worker_memory,
        processes=settings.local_processes,
        dashboard_address=f"127.0.0.1:{settings.dashboard_port}",
        worker_profile=size,
        worker_env=tuple(sorted(settings.worker_env().items())),
        image=settings.image,
        namespace=settings.namespace,
        idle_timeout=settings.idle_timeout,
        pod_name=settings.pod_name,
        pod_uid=settings.pod_uid,
    )


def owner_reference(pod_name: str | None, pod_uid: str | None) -> list[dict[str, Any]]:
    """The flow-run pod as the owner of its Dask cluster, from the downward API.

    The Prefect job template sets RIVERLAKE_POD_NAME and RIVERLAKE_POD_UID from the pod's
    metadata; when the run's pod goes away, Kubernetes' garbage collector deletes the
    DaskCluster (and the operator its pods). Outside a pod: no owner.
    """
    if not (pod_name and pod_uid):
        return []
    pod = {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod_uid}
    return [{**pod, "blockOwnerDeletion": False, "controller": False}]


def make_dask_autoscaler_spec(cluster_name: str, worker_profile: str) -> dict[str, Any]:
    """The DaskAutoscaler of a run's cluster: the profile's adaptive bounds (pure)."""
    prof = WORKER_PROFILES[worker_profile]
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskAutoscaler",
        "metadata": {"name": cluster_name, "labels": {"app.kubernetes.io/part-of": "riverlake"}},
        "spec": {"cluster": cluster_name, "minimum": prof["minimum"], "maximum": prof["maximum"]},
    }


#: Worker variables that are secrets: a manifest refers to a Secret, never holds them.
SECRET_ENV = ("RIVERLAKE_S3_ACCESS_KEY", "RIVERLAKE_S3_SECRET_KEY")
#: The Secret of the S3 credentials (optional: in a cluster, IRSA usually provides them).
S3_SECRET = "riverlake-s3"
#: The Secret that holds the SQL URL, under the key of its variable, when the URL carries
#: a password or another secret (see :func:`has_password`).
SQL_SECRET = "riverlake-sql"
SQL_URL_ENV = "RIVERLAKE_SQL_URL"
#: The Secret that holds any other source URL carrying a secret (a NATS URL with a
#: password, an API URL with a token), under the key of its variable, and the sources'
#: own secrets (an HTTP source's ``token_env``, e.g. RIVERLAKE_API_TOKEN): flow-run pods
#: and Dask workers get all its keys (``envFrom``).
SOURCES_SECRET = "riverlake-sources"
#: Words that make a query parameter a secret, whatever their case (``passwd``,
#: ``sslpassword``, ``PWD``, ``private_key_passphrase``, ``access_token``, ...).
SECRET_QUERY_WORDS = ("pass", "pwd", "secret", "token", "key")
#: A connection string inside a query value that holds a password (ODBC ``PWD=``).
_SECRET_IN_VALUE = re.compile(r"(pwd|password)\s*=", re.IGNORECASE)


def has_password(url: str) -> bool:
    """True when ``url`` may carry a secret: a password in its user info (empty too), a
    query parameter whose name holds one of :data:`SECRET_QUERY_WORDS` (whatever its
    value, empty too), or a query value holding ``PWD=`` or ``Password=`` (an ODBC
    connection string, as in ``odbc_connect=``). When in doubt it is a secret: the
    manifest then refers to the SQL Secret instead of holding the URL."""
    parts = urlsplit(url)
    try:
        if parts.password is not None:
            return True
    except ValueError:  # an unparsable URL may still hold one: treat it as secret
        return True
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if any(w in key.lower() for w in SECRET_QUERY_WORDS) or _SECRET_IN_VALUE.search(value):
            return True
    return False


def _secret_ref(name: str, secret: str, optional: bool) -> dict[str, Any]:
    ref = {"name": secret, "key": name, **({"optional": True} if optional else {})}
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def make_dask_cluster_spec(options: ClusterOptions, name: str | None = None) -> dict[str, Any]:
    """The DaskCluster manifest for ``options`` (pure: no API server is contacted).

    Worker resources come from ``options.worker_profile`` (see WORKER_PROFILES); the
    flow-run pod owns the cluster (see :func:`owner_reference`).
    """
    prof = WORKER_PROFILES[options.worker_profile]
    template = yaml.safe_load(
        resources.files("riverlake.cluster").joinpath("daskcluster.yaml").read_text()
    )
    spec = copy.deepcopy(template)
    name = name or f"riverlake-{uuid.uuid4().hex[:8]}"
    spec["metadata"]["name"] = name
    if owners := owner_reference(options.pod_name, options.pod_uid):
        spec["metadata"]["ownerReferences"] = owners
    spec["spec"]["idleTimeout"] = options.idle_timeout
    # Credentials never go into the manifest: in a cluster the pods get the S3 keys from
    # the service account (IRSA) or from the S3 Secret, when one exists, a SQL URL with a
    # password from the SQL Secret and any other URL with credentials from the sources
    # Secret (which must exist then: the run has them).
    env = []
    for k, v in options.worker_env:
        if k in SECRET_ENV:
            continue
        if "://" in v and has_password(v):
            secret = SQL_SECRET if k == SQL_URL_ENV else SOURCES_SECRET
            env.append(_secret_ref(k, secret, optional=False))
        else:
            env.append({"name": k, "value": v})
    env += [_secret_ref(key, S3_SECRET, optional=True) for key in SECRET_ENV]
    worker = spec["spec"]["worker"]
    worker["replicas"] = prof["minimum"]
    wc = worker["spec"]["containers"][0]
    wc["image"] = options.image
    wc["env"] = env
    # The sources' own secrets (an API token under its variable's name): every key of
    # the sources Secret, when it exists, by reference; the run's values never go here.
    wc["envFrom"] = [{"secretRef": {"name": SOURCES_SECRET, "optional": True}}]
    wc["resources"] = {
        "requests": {"cpu": prof["cpu"], "memory": prof["memory"]},
        "limits": {"cpu": prof["cpu"], "memory": prof["memory"]},
    }
    nthreads = wc["args"].index("--nthreads") + 1
    wc["args"][nthreads] = str(prof["threads"])
    sched = spec["spec"]["scheduler"]
    sc = sched["spec"]["containers"][0]
    sc["image"] = options.image
    sc["env"] = env
    sched["service"]["selector"]["dask.org/cluster-name"] = name
    return spec


def thread_worker_memory() -> int:
    """The memory limit of each thread worker: the machine's (cgroup-aware, as dask reads
    it). Thread workers share one process and each one's memory manager measures that
    whole process, so a share each (dask's ``auto``: the machine's divided by the
    workers) paused every worker at 80% of the share: the 60M-row transform's gold
    stage paused and resumed every few seconds at 10 GB of 24."""
    from distributed.system import MEMORY_LIMIT

    return MEMORY_LIMIT


def local_cluster(options: ClusterOptions):
    """A LocalCluster of ``options.workers`` workers (threads of this process, or processes
    that get the worker environment)."""
    from distributed import LocalCluster

    if not options.processes:
        # Thread workers share this process, and so its environment and Prefect client.
        return LocalCluster(
            n_workers=options.workers,
            threads_per_worker=options.threads_per_worker,
            processes=False,
            memory_limit=thread_worker_memory(),
            protocol="tcp",
            dashboard_address=options.dashboard_address,
            host="127.0.0.1",
        )
    return LocalCluster(
        n_workers=options.workers,
        threads_per_worker=options.threads_per_worker,
        memory_limit=options.worker_memory,
        dashboard_address=options.dashboard_address,
        host="127.0.0.1",
        env=options.env,
    )


def kubernetes_cluster(options: ClusterOptions):
    """A KubeCluster created by the dask-kubernetes operator from our DaskCluster spec."""
    from dask_kubernetes.operator import KubeCluster
    from distributed import Client

    spec = make_dask_cluster_spec(options)
    cluster = KubeCluster(
        custom_cluster_spec=spec, namespace=options.namespace, shutdown_on_close=True
    )
    bounds = make_dask_autoscaler_spec(spec["metadata"]["name"], options.worker_profile)["spec"]
    cluster.adapt(minimum=bounds["minimum"], maximum=bounds["maximum"])  # a DaskAutoscaler
    with Client(cluster) as client:
        check_versions(client)
    return cluster


def make_cluster(options: ClusterOptions):
    """The Dask cluster for ``options.profile``: prefect-dask's ``cluster_class`` (called
    with ``cluster_kwargs={"options": ...}``) and the notebooks' factory.

    For an address profile there is nothing to start: use :func:`distributed.Client`
    on the address; this function refuses it so callers make that choice explicitly.
    """
    if options.profile == "local":
        return local_cluster(options)
    if options.profile == "kubernetes":
        return kubernetes_cluster(options)
    raise RiverlakeError(
        f"{options.profile} is a running scheduler: connect to it, do not start one"
    )


def connect(settings: Settings | None = None):
    """A distributed Client for notebooks: the configured scheduler address, the cluster that
    `riverlake serve --with-cluster` keeps up (its address is in the state folder), or a new
    LocalCluster when neither exists."""
    import json

    from distributed import Client

    settings = settings or get_settings()
    if is_address(settings.cluster):
        client = Client(settings.cluster)
        check_versions(client)
        return client
    shared = settings.home / "scheduler.json"
    if shared.exists():
        return Client(json.loads(shared.read_text())["address"])
    return Client(local_cluster(cluster_options(settings)))
