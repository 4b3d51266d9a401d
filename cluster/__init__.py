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


def make_dask_cluster_spec(settings: Settings, name: str | None = None) -> dict[str, Any]:
    """The DaskCluster manifest for ``settings`` (pure: no API server is contacted)."""
    template = yaml.safe_load(resources.files("cluster").joinpath("daskcluster.yaml").read_text())
    spec = copy.deepcopy(template)
    name = name or f"riverlake-{uuid.uuid4().hex[:8]}"
    spec["metadata"]["name"] = name
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
    mem = _k8s_memory(settings.worker_memory)
    worker = spec["spec"]["worker"]
    worker["replicas"] = settings.workers
    wc = worker["spec"]["containers"][0]
    wc["image"] = settings.image
    wc["env"] = env
    wc["resources"] = {
        "requests": {"cpu": settings.worker_cpu, "memory": mem},
        "limits": {"cpu": settings.worker_cpu, "memory": mem},
    }
    nthreads = wc["args"].index("--nthreads") + 1
    wc["args"][nthreads] = str(settings.threads_per_worker)
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

    return KubeCluster(
        custom_cluster_spec=make_dask_cluster_spec(settings),
        namespace=settings.namespace,
        shutdown_on_close=True,
    )


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
        return Client(settings.cluster)
    shared = settings.home / "scheduler.json"
    if shared.exists():
        return Client(json.loads(shared.read_text())["address"])
    return Client(local_cluster(settings))
