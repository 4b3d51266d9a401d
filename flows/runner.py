"""The task runner of every flow: an ephemeral Dask cluster per flow run."""

from __future__ import annotations

from prefect_dask import DaskTaskRunner

from cluster import is_address, validate_profile
from riverlake.settings import get_settings


def dask_task_runner(profile: str | None = None) -> DaskTaskRunner:
    """A DaskTaskRunner that starts the profile's cluster for the run (or joins an address)."""
    profile = validate_profile(profile or get_settings().cluster)
    if is_address(profile):
        return DaskTaskRunner(address=profile)
    return DaskTaskRunner(cluster_class="cluster.make_cluster", cluster_kwargs={"profile": profile})
