"""Typed settings, one env prefix (``RIVERLAKE_``).

Every knob is documented where it is defined. Secrets are never committed: the S3
credentials come from the environment or, for the local stack, from the
credentials file that ``riverlake up`` generates under the state folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CREDENTIALS_FILE = "credentials.json"
#: The library's logger: Prefect attaches its run-log handler to it (PREFECT_LOGGING_EXTRA_LOGGERS),
#: so commits, skips and quarantines show in the Prefect UI beside the run's own logs.
LIBRARY_LOGGER = "riverlake"


class Settings(BaseSettings):
    """Riverlake configuration; read from ``RIVERLAKE_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="RIVERLAKE_", extra="ignore")

    home: Path = Field(
        Path(".riverlake"),
        description="State folder of the local stack: pid files, logs, SeaweedFS and Prefect data.",
    )
    lake_url: str = Field(
        "s3://riverlake/lake",
        description="Root of the lake: s3://bucket/prefix, or a local path for a store-less lake.",
    )
    s3_endpoint: str | None = Field(
        None,
        description="S3 endpoint URL; defaults to the local SeaweedFS "
        "(http://127.0.0.1:<s3_port>). "
        "Set to an empty string to use AWS's default endpoint.",
    )
    s3_access_key: SecretStr | None = Field(None, description="S3 access key id.")
    s3_secret_key: SecretStr | None = Field(None, description="S3 secret access key.")
    s3_region: str = Field("us-east-1", description="S3 region.")

    prefect_port: int = Field(4200, description="Port of the local Prefect server (API and UI).")
    s3_port: int = Field(
        8333,
        description="Port of the local SeaweedFS S3 gateway. SeaweedFS's internal master, volume "
        "and filer ports are s3_port+1..+3 and their gRPC ports s3_port+11..+13.",
    )
    panel_port: int = Field(5006, description="Port of `riverlake serve` (the Panel apps).")
    app_address: str = Field(
        "127.0.0.1", description="Address `riverlake serve` binds (0.0.0.0 in a pod)."
    )
    app_origins: str = Field(
        "",
        description="Comma-separated extra websocket origins the apps accept "
        "(the Ingress host, e.g. riverlake.example.com).",
    )
    metrics_port: int = Field(
        9108, description="Port of `riverlake metrics`, the platform's Prometheus exporter."
    )
    prefect_api_url: str | None = Field(
        None, description="Prefect API URL; defaults to the local server on prefect_port."
    )

    # Sources (issue: extraction). The local stack serves a demo of each kind.
    nats_port: int = Field(
        4250,
        description="Port of the local stack's NATS JetStream server (its monitor is +1). "
        "Not 4222, so it never collides with a system NATS.",
    )
    nats_url: str | None = Field(
        None, description="NATS server of the event stream; defaults to the local stack's."
    )
    api_port: int = Field(
        8700, description="Port of the local stack's demo HTTP API (the weather source)."
    )
    api_url: str | None = Field(
        None, description="Base URL of the weather API; defaults to the local stack's demo API."
    )
    sql_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the dimensions database (planes, airports, airlines); "
        "defaults to SQLite under the state folder. "
        "PostgreSQL: postgresql+psycopg://user@host:5432/db.",
    )
    drops_url: str | None = Field(
        None,
        description="Where the daily flight CSV drops arrive (local path, s3:// or http://); "
        "defaults to <lake_url>/drops/flights.",
    )
    pipelines_file: Path | None = Field(
        None,
        description="Pipeline declarations to use instead of the ones Riverlake ships "
        "(riverlake/pipelines/pipelines.yaml, package data).",
    )
    pipelines_dir: Path | None = Field(
        Path("pipelines"),
        description="A folder of your own pipeline declarations (*.yaml), read beside the "
        "shipped ones; `riverlake new` writes there. Relative to the working directory.",
    )
    replay_rate: float = Field(
        20.0,
        ge=0,
        description="Flight events per second that the local stack's replayer publishes "
        "(0: the replayer is not started).",
    )
    # Input caps: what a source may hand us is bounded; what exceeds a cap is quarantined
    # with the cap named in its reason (and a bounded prefix of its bytes), never loaded.
    # (max_batch_bytes, the stream micro-batch cap, is declared further down.)
    max_file_bytes: int = Field(
        2 << 30,
        ge=1,
        description="Most bytes of one file, decompressed, that the files connector reads; "
        "gzip/zstd is inflated in a stream that stops here (a compression bomb is never "
        "inflated whole). A larger file is quarantined.",
    )
    max_response_bytes: int = Field(
        64 << 20,
        ge=1,
        description="Most bytes of one HTTP response body (decoded) that the HTTP connector "
        "reads; a larger page is quarantined and paging stops there.",
    )
    max_json_depth: int = Field(
        64,
        ge=1,
        description="Deepest nesting of arrays and objects accepted in JSON input (JSON lines, "
        "API pages, stream messages); deeper input is quarantined before any parser sees it.",
    )

    cluster: str = Field(
        "local",
        description="Dask cluster profile: 'local' (LocalCluster), 'kubernetes' (dask-kubernetes "
        "operator), or a scheduler address such as tcp://10.0.0.5:8786.",
    )
    workers: int = Field(2, ge=1, description="Number of Dask workers.")
    threads_per_worker: int = Field(1, ge=1, description="Threads per Dask worker.")
    worker_memory: str = Field("4GiB", description="Memory limit of each Dask worker.")
    local_processes: bool = Field(
        False,
        description="Local profile: workers as threads of the flow-run process (False, the "
        "default) or as separate processes (True). The transforms are Arrow kernels that "
        "release the GIL, so threads keep up on the ETL benchmark and skip each worker "
        "process's start-up and imports (several seconds on 2 cores), which dominates "
        "small runs. Choose processes for GIL-bound Python code.",
    )
    dashboard_port: int = Field(
        8787, description="Port of the local Dask dashboard; 0 picks a free one."
    )
    curate_part_bytes: int = Field(
        64 << 20,
        ge=1,
        description="A month rebuilt whole from more landed bytes than this, by row-wise "
        "steps, is curated in parts of about this size split by its key, one after another, "
        "so a worker's memory does not grow with the month.",
    )
    gold_in_pandas_bytes: int = Field(
        32 << 20,
        ge=0,
        description="Up to this many bytes of curated files, the gold step reads them "
        "straight into pandas in the task's process (a daily run's month is about 1 MB): "
        "there, importing dask's dataframe and running a graph on the cluster cost more "
        "than the work. Larger reads are dask frames reduced on the workers. 0: always dask.",
    )

    image: str = Field(
        "ghcr.io/riverlake/riverlake:0.1.0",
        description="Container image for the Kubernetes Dask scheduler and workers.",
    )
    namespace: str = Field("riverlake", description="Kubernetes namespace of the Dask clusters.")
    worker_profile: Literal["small", "standard", "large"] = Field(
        "standard",
        description="Kubernetes worker resources and adaptive bounds (cluster.WORKER_PROFILES) "
        "of runs whose pipeline declares no profile (a declared profile wins).",
    )
    pod_name: str | None = Field(
        None, description="The flow-run pod's name (downward API); owns the run's DaskCluster."
    )
    pod_uid: str | None = Field(None, description="The flow-run pod's uid (downward API).")
    idle_timeout: int = Field(
        600, description="Seconds after which an idle Kubernetes Dask cluster deletes itself."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    vacuum_min_retention_hours: int = Field(
        1,
        ge=0,
        description="Shortest retention `vacuum` accepts: a file a writer has written but not "
        "committed yet is an orphan to vacuum, so a shorter retention could delete it before "
        "its commit. 0 only where no writer can be running.",
    )
    max_batch_bytes: int = Field(
        64 << 20,
        ge=1024,
        description="Bytes of one stream micro-batch; a message larger than this alone is "
        "quarantined with the reason.",
    )

    app_auth: Literal["none", "basic", "oauth"] = Field(
        "none",
        description="Authentication of the Panel apps: none (the local stack), basic (one "
        "shared password, app_password), or oauth (Panel's generic OIDC provider).",
    )
    app_user: str = Field("riverlake", description="User name for basic auth.")
    app_password: SecretStr | None = Field(None, description="Password for basic auth.")
    cookie_secret: SecretStr | None = Field(
        None, description="Secret that signs the apps' session cookies (basic and oauth)."
    )
    oauth_key: str | None = Field(None, description="OIDC client id.")
    oauth_secret: SecretStr | None = Field(None, description="OIDC client secret.")
    oauth_encryption_key: SecretStr | None = Field(
        None, description="Key that encrypts OAuth tokens in the cookie (Fernet, base64)."
    )
    oauth_redirect_uri: str | None = Field(
        None,
        description="The apps' OAuth callback as the identity provider knows it, "
        "e.g. https://riverlake.example.com/login (default: the request's own host).",
    )
    oauth_extra_params: str = Field(
        "{}",
        description="JSON of Panel's generic-provider settings, e.g. "
        '{"TOKEN_URL": ..., "AUTHORIZE_URL": ..., "USER_URL": ...}.',
    )

    @model_validator(mode="after")
    def _fill_from_state(self) -> Settings:
        if self.s3_endpoint is None:
            self.s3_endpoint = f"http://127.0.0.1:{self.s3_port}"
        if self.prefect_api_url is None:
            self.prefect_api_url = f"http://127.0.0.1:{self.prefect_port}/api"
        if self.nats_url is None:
            self.nats_url = f"nats://127.0.0.1:{self.nats_port}"
        if self.api_url is None:
            self.api_url = f"http://127.0.0.1:{self.api_port}"
        if self.sql_url is None:
            self.sql_url = f"sqlite:///{(self.home / 'demo' / 'dimensions.sqlite').resolve()}"
        if self.drops_url is None:
            self.drops_url = f"{self.lake_url.rstrip('/')}/drops/flights"
        creds = self.home / CREDENTIALS_FILE
        if (self.s3_access_key is None or self.s3_secret_key is None) and creds.exists():
            data = json.loads(creds.read_text())
            self.s3_access_key = self.s3_access_key or SecretStr(data["access_key"])
            self.s3_secret_key = self.s3_secret_key or SecretStr(data["secret_key"])
        return self

    @property
    def lake_is_s3(self) -> bool:
        return self.lake_url.startswith("s3://")

    def worker_env(self) -> dict[str, str]:
        """Environment handed to every Dask worker: the Prefect API and the storage settings.

        With PREFECT_API_URL set, a Prefect task running on a worker reports to the real
        server instead of starting a temporary one of its own.
        """
        env = {
            "PREFECT_API_URL": str(self.prefect_api_url),
            "PREFECT_LOGGING_EXTRA_LOGGERS": LIBRARY_LOGGER,
            "RIVERLAKE_LAKE_URL": self.lake_url,
            "RIVERLAKE_S3_REGION": self.s3_region,
            "RIVERLAKE_HOME": str(self.home.resolve()),
            "RIVERLAKE_S3_ENDPOINT": self.s3_endpoint or "",
            "RIVERLAKE_NATS_URL": str(self.nats_url),
            "RIVERLAKE_API_URL": str(self.api_url),
            "RIVERLAKE_SQL_URL": str(self.sql_url),
            "RIVERLAKE_DROPS_URL": str(self.drops_url),
        }
        if self.pipelines_dir is not None:  # a user's declarations, wherever a worker runs
            env["RIVERLAKE_PIPELINES_DIR"] = str(Path(self.pipelines_dir).resolve())
        if self.s3_access_key and self.s3_secret_key:
            env["RIVERLAKE_S3_ACCESS_KEY"] = self.s3_access_key.get_secret_value()
            env["RIVERLAKE_S3_SECRET_KEY"] = self.s3_secret_key.get_secret_value()
        return env


def get_settings(**overrides: object) -> Settings:
    """Read the settings from the environment now (never cached: tests and CLI flags change it)."""
    return Settings(**overrides)
