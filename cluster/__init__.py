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
from importlib import resources
from typing import Any

import yaml

from riverlake.errors import RiverlakeError
from riverlake.settings import Settings, get_settings

PROFILES = ("local", "kubernetes")

#: Worker resources by pipeline profile (flows/pipelines.yaml: ``profile``), per worker.
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


def check_versions(client) -> None:
    """Refuse a cluster whose scheduler or workers run other package versions."""
    extra = [p for p in MATCHED_PACKAGES if p not in ("python", "dask", "distributed")]
    bad = version_mismatches(client.get_versions(check=False, packages=extra))
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ClusterError(
            f"version mismatch: {bad[0]}{more}; run the client, scheduler and workers from "
            "one image (see the Dockerfile)"
        )


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


def owner_reference(settings: Settings) -> list[dict[str, Any]]:
    """The flow-run pod as the owner of its Dask cluster, from the downward API.

    The Prefect job template sets RIVERLAKE_POD_NAME and RIVERLAKE_POD_UID from the pod's
    metadata; when the run's pod goes away, Kubernetes' garbage collector deletes the
    DaskCluster (and the operator its pods). Outside a pod: no owner.
    """
    if not (settings.pod_name and settings.pod_uid):
        return []
    pod = {"apiVersion": "v1", "kind": "Pod", "name": settings.pod_name, "uid": settings.pod_uid}
    return [{**pod, "blockOwnerDeletion": False, "controller": False}]


def make_dask_autoscaler_spec(
    settings: Settings, cluster_name: str, profile: str | None = None
) -> dict[str, Any]:
    """The DaskAutoscaler of a run's cluster: the profile's adaptive bounds (pure)."""
    prof = WORKER_PROFILES[profile or settings.worker_profile]
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskAutoscaler",
        "metadata": {"name": cluster_name, "labels": {"app.kubernetes.io/part-of": "riverlake"}},
        "spec": {"cluster": cluster_name, "minimum": prof["minimum"], "maximum": prof["maximum"]},
    }


def make_dask_cluster_spec(
    settings: Settings, name: str | None = None, profile: str | None = None
) -> dict[str, Any]:
    """The DaskCluster manifest for ``settings`` (pure: no API server is contacted).

    Worker resources come from the pipeline's ``profile`` (see WORKER_PROFILES); the
    flow-run pod owns the cluster (see :func:`owner_reference`).
    """
    prof = WORKER_PROFILES[profile or settings.worker_profile]
    template = yaml.safe_load(resources.files("cluster").joinpath("daskcluster.yaml").read_text())
    spec = copy.deepcopy(template)
    name = name or f"riverlake-{uuid.uuid4().hex[:8]}"
    spec["metadata"]["name"] = name
    if owners := owner_reference(settings):
        spec["metadata"]["ownerReferences"] = owners
    spec["spec"]["idleTimeout"] = settings.idle_timeout
    secret_keys = ("RIVERLAKE_S3_ACCESS_KEY", "RIVERLAKE_S3_SECRET_KEY")
    env = [
        {"name": k, "value": v}
        for k, v in sorted(settings.worker_env().items())
        if k not in secret_keys
    ]
    # Credentials never go into the manifest: in a cluster the pods get them from the
    # service account (IRSA) or from this Secret, when one exists.
    env += [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": "riverlake-s3", "key": key,
                                                     "optional": True}}}
        for key in secret_keys
    ]  # fmt: skip
    worker = spec["spec"]["worker"]
    worker["replicas"] = prof["minimum"]
    wc = worker["spec"]["containers"][0]
    wc["image"] = settings.image
    wc["env"] = env
    wc["resources"] = {
        "requests": {"cpu": prof["cpu"], "memory": prof["memory"]},
        "limits": {"cpu": prof["cpu"], "memory": prof["memory"]},
    }
    nthreads = wc["args"].index("--nthreads") + 1
    wc["args"][nthreads] = str(prof["threads"])
    sched = spec["spec"]["scheduler"]
    sc = sched["spec"]["containers"][0]
    sc["image"] = settings.image
    sc["env"] = env
    sched["service"]["selector"]["dask.org/cluster-name"] = name
    return spec


def local_cluster(settings: Settings):
    """A LocalCluster of ``settings.workers`` processes, each with the worker environment."""
    from distributed import LocalCluster

    if not settings.local_processes:
        # Thread workers share this process, and so its environment and Prefect client.
        return LocalCluster(
            n_workers=settings.workers,
            threads_per_worker=settings.threads_per_worker,
            processes=False,
            protocol="tcp",
            dashboard_address=f"127.0.0.1:{settings.dashboard_port}",
            host="127.0.0.1",
        )
    return LocalCluster(
        n_workers=settings.workers,
        threads_per_worker=settings.threads_per_worker,
        memory_limit=settings.worker_memory,
        dashboard_address=f"127.0.0.1:{settings.dashboard_port}",
        host="127.0.0.1",
        env=settings.worker_env(),
    )


def kubernetes_cluster(settings: Settings):
    """A KubeCluster created by the dask-kubernetes operator from our DaskCluster spec."""
    from dask_kubernetes.operator import KubeCluster
    from distributed import Client

    spec = make_dask_cluster_spec(settings)
    cluster = KubeCluster(
        custom_cluster_spec=spec, namespace=settings.namespace, shutdown_on_close=True
    )
    bounds = make_dask_autoscaler_spec(settings, spec["metadata"]["name"])["spec"]
    cluster.adapt(minimum=bounds["minimum"], maximum=bounds["maximum"])  # a DaskAutoscaler
    with Client(cluster) as client:
        check_versions(client)
    return cluster


def get_cluster(profile: str | None = None, settings: Settings | None = None):
    """The Dask cluster for ``profile`` (default: the settings' profile).

    For an address profile there is nothing to start: use :func:`distributed.Client`
    on the address; this function refuses it so callers make that choice explicitly.
    """
    settings = settings or get_settings()
    profile = validate_profile(profile or settings.cluster)
    if profile == "local":
        return local_cluster(settings)
    if profile == "kubernetes":
        return kubernetes_cluster(settings)
    raise RiverlakeError(f"{profile} is a running scheduler: connect to it, do not start one")


def make_cluster(profile: str = "local", **overrides: Any):
    """Factory for prefect-dask's ``cluster_class``: settings overrides as keyword arguments."""
    return get_cluster(profile, get_settings(**overrides))


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
    return Client(local_cluster(settings))
