"""What a run started from the CLI in its own process skips, and what it keeps: no
heartbeats (flows.runner.foreground_run), parameters recorded without importing FastAPI
(plain_parameters), one S3 client for the lake and Prefect's result storage
(lake.fs_options). Real Prefect flows and settings, no mocks."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime

import pytest
from prefect import flow
from prefect.settings import get_current_settings

from riverlake import lake
from riverlake.flows.runner import foreground_run, plain_parameters, result_storage_block

pytestmark = pytest.mark.unit


@flow
def two_dates(start: date | None = None, end: date | None = None) -> None:
    return None


def test_a_foreground_run_has_no_heartbeats_and_other_runs_keep_them():
    assert get_current_settings().flows.heartbeat_frequency is not None  # Prefect's default
    with foreground_run():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency is not None


@pytest.mark.parametrize(
    "parameters",
    [
        {"start": date(2013, 2, 5), "end": date(2013, 2, 5)},
        {"start": None, "end": None},
        {"start": "2013-02-05", "end": 7},
        {"start": 1.5, "end": True},
    ],
)
def test_plain_parameters_are_recorded_as_prefect_records_them(parameters):
    prefects = two_dates.serialize_parameters(parameters)
    assert plain_parameters(two_dates.with_options()).serialize_parameters(parameters) == prefects


def test_other_parameters_go_to_prefects_own_encoder():
    moment = {"start": datetime(2020, 1, 1, tzinfo=UTC), "end": {"a": date(2013, 1, 1)}}
    ours = plain_parameters(two_dates.with_options()).serialize_parameters(moment)
    assert ours == two_dates.serialize_parameters(moment)
    assert ours["start"] == "2020-01-01T00:00:00+00:00"  # FastAPI's form, not pydantic's 'Z'


def test_recording_dates_does_not_import_fastapi():
    code = (
        "import sys\n"
        "from datetime import date\n"
        "from riverlake.flows import pipeline\n"
        "from riverlake.flows.runner import plain_parameters\n"
        "f = plain_parameters(pipeline.declared_flow('flights'))\n"
        "print(f.serialize_parameters({'start': date(2013, 2, 5), 'end': None}))\n"
        "print('fastapi' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["{'start': '2013-02-05', 'end': None}", "False"], out.stderr


@pytest.fixture
def s3_settings(settings, monkeypatch):
    monkeypatch.setenv("RIVERLAKE_LAKE_URL", "s3://bucket/lake")
    monkeypatch.setenv("RIVERLAKE_S3_ENDPOINT", "http://127.0.0.1:1")  # nothing is reached
    monkeypatch.setenv("RIVERLAKE_S3_ACCESS_KEY", "riverlake-key")
    monkeypatch.setenv("RIVERLAKE_S3_SECRET_KEY", "riverlake-secret")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    return lake.store.get_settings()


def test_the_lake_passes_its_keys_unless_the_aws_variables_hold_them(s3_settings, monkeypatch):
    opts = lake.fs_options(s3_settings)
    assert (opts["key"], opts["secret"]) == ("riverlake-key", "riverlake-secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "riverlake-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "another-secret")  # not the same: passed
    assert lake.fs_options(s3_settings)["secret"] == "riverlake-secret"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "riverlake-secret")
    assert lake.fs_options(s3_settings) == lake.s3_client_options(s3_settings)
    assert "key" not in lake.s3_client_options(s3_settings)  # what the block holds: no secret


def test_the_lake_and_the_result_storage_share_one_s3_filesystem(s3_settings, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "riverlake-key")  # as export_storage_credentials
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "riverlake-secret")
    block, _ = result_storage_block()
    assert "secret" not in str(block.settings)
    assert block.filesystem is lake.filesystem(s3_settings)


def test_a_session_token_in_the_environment_keeps_the_lake_s_keys(s3_settings, monkeypatch):
    """A token belongs to other keys: botocore would sign the lake's keys with it."""
    from riverlake.flows.runner import export_storage_credentials

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "riverlake-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "riverlake-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "someone-else-s")
    assert lake.fs_options(s3_settings)["key"] == "riverlake-key"
    export_storage_credentials()  # the lake's keys exported: another key's token goes
    import os

    assert "AWS_SESSION_TOKEN" not in os.environ
    assert "key" not in lake.fs_options(s3_settings)
