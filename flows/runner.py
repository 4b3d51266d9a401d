"""The task runner of every flow: an ephemeral Dask cluster per flow run."""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from datetime import date
from typing import TYPE_CHECKING, Any

from prefect.task_runners import TaskRunner

from riverlake import pipelines
from riverlake.cluster import ClusterOptions, cluster_options, is_address, make_cluster
from riverlake.settings import LIBRARY_LOGGER, Settings, get_settings

if TYPE_CHECKING:
    from prefect import Flow

# Prefect attaches its run-log handler to the library's logger (PREFECT_LOGGING_EXTRA_LOGGERS)
# but leaves its level unset, so the root logger's WARNING would drop every INFO line:
# a process that runs flows (and a worker process that imports them) logs at the settings'
# level, so commits, skips and quarantines reach the run's logs in the Prefect UI.
logging.getLogger(LIBRARY_LOGGER).setLevel(get_settings().log_level)


def dask_task_runner(options: ClusterOptions):
    """A DaskTaskRunner that starts the options' cluster for the run (or joins an address)."""
    from prefect_dask import DaskTaskRunner

    if is_address(options.profile):
        return DaskTaskRunner(address=options.profile)
    return DaskTaskRunner(cluster_class=make_cluster, cluster_kwargs={"options": options})


_STARTING = threading.Lock()


class ClusterTaskRunner(TaskRunner):
    """prefect-dask's ``DaskTaskRunner`` for ``options``, made and started when the run
    submits its first task: a run that has no data work (it learns so in its own process)
    neither starts a cluster nor imports Dask's distributed (0.35 s). Submitting, mapping
    and the futures are the DaskTaskRunner's; ``prefect_dask.get_dask_client`` in the
    flow's own code finds its client here."""

    def __init__(self, options: ClusterOptions) -> None:
        super().__init__()
        self.options = options
        self._dask: Any = None  # (no lock held here: a flow pickles its task runner)

    def duplicate(self) -> ClusterTaskRunner:
        return type(self)(self.options)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClusterTaskRunner) and other.options == self.options

    __hash__ = None  # type: ignore[assignment]

    @property
    def dask(self):
        """The started DaskTaskRunner (made on first use, within this runner's run)."""
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        with _STARTING:
            if self._dask is None:
                self._dask = dask_task_runner(self.options).__enter__()
        return self._dask

    def submit(self, task, parameters, wait_for=None, dependencies=None):
        return self.dask.submit(task, parameters, wait_for, dependencies)

    # What prefect_dask.get_dask_client reads from the flow run's task runner.
    @property
    def client_kwargs(self) -> dict[str, Any]:
        return self.dask.client_kwargs

    @property
    def _client(self):
        return self.dask.client

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._dask is not None:
                self._dask.__exit__(*exc)
        finally:
            self._dask = None
            super().__exit__(*exc)


def pipeline_task_runner(
    pipeline: str, settings: Settings | None = None, profile: str | None = None
) -> ClusterTaskRunner:
    """The task runner of a pipeline's runs: the settings' cluster (or ``profile``), sized by
    the worker profile the pipeline declares. Settings are read here, once, at the edge."""
    settings = settings or get_settings()
    size = pipelines.pipeline(pipeline, settings).profile
    return ClusterTaskRunner(cluster_options(settings, profile=profile, worker_profile=size))


def verify_cluster() -> None:
    """Refuse the run's cluster if its scheduler or workers run other package versions.

    Called in a task (the task runner's client exists once a task has been submitted).
    """
    from prefect import get_run_logger
    from prefect_dask import get_dask_client

    from riverlake.cluster import check_versions

    with get_dask_client() as client:
        get_run_logger().info(check_versions(client))


def result_storage_block():
    """The block that stores flow results under ``<lake>/_prefect/results``, and its slug.

    It holds no secret (Prefect keeps blocks in its database): on S3 only the endpoint;
    the credentials come from the standard AWS variables, which
    :func:`export_storage_credentials` sets in the flow-run process. One block per lake.
    """
    import hashlib

    from prefect.filesystems import RemoteFileSystem

    from riverlake import lake

    settings = get_settings()
    root = lake.lake_root(settings)
    base = f"{root}/_prefect/results" if settings.lake_is_s3 else f"file://{root}/_prefect/results"
    opts = lake.s3_client_options(settings)  # the lake's own, so one S3 client per process
    name = "riverlake-results-" + hashlib.sha256(root.encode()).hexdigest()[:10]
    return RemoteFileSystem(basepath=base, settings=opts), f"remote-file-system/{name}"


def ensure_result_storage():
    """Save the lake's result-storage block: (the saved block, the Prefect settings that
    make runs use it).

    A run in this process passes the saved block to its flow (``result_storage``):
    loading it by its slug instead makes Prefect import every installed collection
    first (prefect-kubernetes: 0.9 s). Deployment runs take the settings.
    """
    block, slug = result_storage_block()
    name = slug.split("/", 1)[1]
    try:  # saved already as it is (one request; saving costs four to six)
        saved = type(block).load(name)
    except ValueError:  # no such block yet
        saved = None
    if saved is not None and (saved.basepath, saved.settings) == (block.basepath, block.settings):
        block = saved
    else:  # new, or its store moved (another S3 endpoint)
        block.save(name, overwrite=True)
    # Flows that persist their result (persist_result=True) write it there; task results
    # stay in memory (persisting every task's frames would cost more than it saves).
    return block, {"PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": slug}


def export_storage_credentials() -> None:
    """Expose the lake's S3 credentials as AWS_* variables for Prefect's result storage."""
    import os

    settings = get_settings()
    if settings.s3_access_key and settings.s3_secret_key:
        os.environ["AWS_ACCESS_KEY_ID"] = settings.s3_access_key.get_secret_value()
        os.environ["AWS_SECRET_ACCESS_KEY"] = settings.s3_secret_key.get_secret_value()
        for stale in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):  # another key's token
            os.environ.pop(stale, None)


@contextmanager
def foreground_run():
    """Prefect's settings for a run the CLI makes in its own process: no heartbeats.

    Prefect's heartbeat thread sleeps in one-second steps and the run waits for it when
    it ends, so each run paid 0 to 1 s (0.5 s on average) for heartbeats that only a
    zombie-run automation would read; the terminal that started the run watches it
    instead. Deployment runs (a worker's process) keep them.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


#: Parameter types pydantic encodes as Prefect's FastAPI encoder does (not datetime: pydantic
#: writes UTC as 'Z').
PLAIN = frozenset({type(None), bool, int, float, str, date})


def plain_parameters(flow: Flow) -> Flow:
    """``flow`` recording plain parameters (dates, text, numbers, None) as Prefect does,
    without FastAPI. Prefect encodes a new run's parameters with FastAPI's
    ``jsonable_encoder``, and importing FastAPI to write two dates cost a CLI run 0.3 s.
    pydantic's encoder gives the same JSON for these types (tested); any other value
    goes to Prefect's own method."""
    from pydantic_core import to_jsonable_python

    prefects = flow.serialize_parameters

    def serialize_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
        if all(type(v) in PLAIN for v in parameters.values()):
            return {k: to_jsonable_python(v) for k, v in parameters.items()}
        return prefects(parameters)

    flow.serialize_parameters = serialize_parameters  # type: ignore[method-assign]
    return flow
