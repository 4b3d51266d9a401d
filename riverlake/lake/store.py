"""Where the lake lives: its root, filesystem, storage options and table locations.

The only module that opens a Delta table (:func:`open_table`); everything outside the
lake goes through :class:`riverlake.lake.Table` and the functions of this package.
"""

from __future__ import annotations

from typing import Any

import fsspec

from riverlake.errors import LakeError
from riverlake.lake.names import LANDING, TABLES
from riverlake.settings import Settings, get_settings


def fs_options(settings: Settings) -> dict[str, Any]:
    """fsspec (s3fs) options for the lake store: :func:`s3_client_options` and the
    settings' keys, unless this process's standard AWS variables hold the same keys.

    Then botocore reads them there, and the lake and Prefect's result storage (whose
    block holds no secret: :func:`s3_client_options` only) are one S3 filesystem, so one
    S3 client per process (a second one cost a run 0.15 s)."""
    import os

    opts = s3_client_options(settings)
    if opts and settings.s3_access_key and settings.s3_secret_key:
        key = settings.s3_access_key.get_secret_value()
        secret = settings.s3_secret_key.get_secret_value()
        from_env = (os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY"))
        # a session token in the environment belongs to other keys: botocore would sign
        # the lake's keys with it, so the keys are passed (and the token not used)
        token = os.environ.get("AWS_SESSION_TOKEN") or os.environ.get("AWS_SECURITY_TOKEN")
        if from_env != (key, secret) or token:
            opts.update(key=key, secret=secret)
    return opts


def s3_client_options(settings: Settings) -> dict[str, Any]:
    """The lake store's s3fs options that are not credentials ({} off S3)."""
    if not settings.lake_is_s3:
        return {}
    opts: dict[str, Any] = {
        "client_kwargs": {"region_name": settings.s3_region},
        "config_kwargs": {"connect_timeout": 5, "retries": {"max_attempts": 3}},
    }
    if settings.s3_endpoint:
        opts["endpoint_url"] = settings.s3_endpoint
    return opts


def storage_options(settings: Settings) -> dict[str, str]:
    """deltalake (object_store) options for the lake store."""
    if not settings.lake_is_s3:
        return {}
    opts = {"AWS_REGION": settings.s3_region}
    if settings.s3_endpoint:
        opts["AWS_ENDPOINT_URL"] = settings.s3_endpoint
        if settings.s3_endpoint.startswith("http://"):
            opts["AWS_ALLOW_HTTP"] = "true"
        # SeaweedFS and S3 both honour If-None-Match on PUT, which makes the log's
        # put-if-absent safe without a DynamoDB lock.
        opts["AWS_CONDITIONAL_PUT"] = "etag"
    if settings.s3_access_key and settings.s3_secret_key:
        opts["AWS_ACCESS_KEY_ID"] = settings.s3_access_key.get_secret_value()
        opts["AWS_SECRET_ACCESS_KEY"] = settings.s3_secret_key.get_secret_value()
    return opts


def lake_root(settings: Settings) -> str:
    url = settings.lake_url.rstrip("/")
    if url.startswith("s3://"):
        return url
    return str(fsspec.core.url_to_fs(url)[0]._strip_protocol(url))


def filesystem(settings: Settings) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem of the lake store."""
    fs, _ = fsspec.core.url_to_fs(lake_root(settings), **fs_options(settings))
    return fs


def table_uri(name: str, settings: Settings) -> str:
    return f"{lake_root(settings)}/{TABLES}/{name}"


def landing_uri(source: str, settings: Settings) -> str:
    return f"{lake_root(settings)}/{LANDING}/{source}"


def strip_scheme(uri: str) -> str:
    return uri.split("://", 1)[1] if "://" in uri else uri


def check_store(settings: Settings) -> None:
    """Fail with one clear line when the lake store is unreachable or refuses our credentials."""
    fs = filesystem(settings)
    root = strip_scheme(lake_root(settings))
    try:
        if settings.lake_is_s3:
            bucket = root.split("/", 1)[0]
            fs.ls(bucket)
        else:
            fs.makedirs(root, exist_ok=True)
    except PermissionError as exc:
        raise LakeError(
            f"lake store {settings.s3_endpoint} refused the credentials "
            f"for {settings.lake_url}: {exc}"
        ) from None
    except FileNotFoundError:
        raise LakeError(
            f"lake bucket of {settings.lake_url} does not exist on {settings.s3_endpoint}"
        ) from None
    except Exception as exc:  # botocore/aiohttp connection errors are not OSErrors
        if type(exc).__name__ == "NoCredentialsError":
            raise LakeError(
                f"no S3 credentials for {settings.lake_url}: set RIVERLAKE_S3_ACCESS_KEY and "
                f"RIVERLAKE_S3_SECRET_KEY, or point RIVERLAKE_HOME at the state folder of "
                f"`riverlake up` (now {settings.home.resolve()})"
            ) from None
        raise LakeError(
            f"lake store {settings.s3_endpoint} is unreachable ({type(exc).__name__}); "
            "is the local stack up? run `riverlake up`"
        ) from None


def open_table(uri: str, settings: Settings | None = None, version: int | None = None):
    """The DeltaTable at ``uri``, or None when no table exists there yet (one read of
    its log: asking ``is_deltatable`` first would list the log twice)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    settings = settings or get_settings()
    opts = storage_options(settings)
    try:
        return DeltaTable(uri, version=version, storage_options=opts)
    except TableNotFoundError:  # no folder, or no commit in its log
        # ... or, for an old version, its log files cleaned up: that is an error.
        if version is not None and DeltaTable.is_deltatable(uri, storage_options=opts):
            raise
        return None
