"""User mistakes: one clear line on stderr, exit status 1, no traceback."""

from __future__ import annotations

import json
import socket

import pytest

from tests.conftest import _free_port_block, riverlake_cli

pytestmark = pytest.mark.integration


def one_line_error(res, pattern: str) -> str:
    assert res.returncode == 1, (res.stdout, res.stderr)
    err = res.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("riverlake: error: ")
    assert pattern in err, err
    return err


def test_unknown_pipeline(stack_env):
    one_line_error(
        riverlake_cli("run", "ships"),
        "unknown pipeline 'ships'; known pipelines: flight_events, flights",
    )


def test_unknown_cluster(stack_env):
    one_line_error(riverlake_cli("run", "flights", "--cluster", "yarn"), "unknown cluster 'yarn'")


def test_port_already_in_use(tmp_path, stack_env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = riverlake_cli(
            "up",
            env={
                "RIVERLAKE_HOME": str(tmp_path),
                "RIVERLAKE_PREFECT_PORT": str(port),
                "RIVERLAKE_S3_PORT": str(_free_port_block()),
            },
        )
    one_line_error(res, f"port {port} (prefect api) is already in use; set RIVERLAKE_PREFECT_PORT")
    assert not list(tmp_path.glob("run/*.pid"))  # nothing was started


def test_s3_unreachable(stack_env):
    res = riverlake_cli("tables", env={"RIVERLAKE_S3_ENDPOINT": "http://127.0.0.1:1"})
    one_line_error(res, "is unreachable")


def test_bad_credentials(stack_env):
    res = riverlake_cli("tables", env={"RIVERLAKE_S3_SECRET_KEY": "wrong"})
    one_line_error(res, "refused the credentials")


def test_anonymous_access_is_refused(stack_env):
    import s3fs

    from riverlake.settings import get_settings

    anon = s3fs.S3FileSystem(anon=True, endpoint_url=get_settings().s3_endpoint)
    with pytest.raises(PermissionError):
        anon.ls("riverlake-test")


def test_prefect_unreachable(stack_env):
    res = riverlake_cli(
        "run", "flights", env={"RIVERLAKE_PREFECT_API_URL": "http://127.0.0.1:1/api"}
    )
    one_line_error(res, "is unreachable; run `riverlake up` first")


def test_status_and_down_touch_only_our_processes(tmp_path, stack_env):
    res = riverlake_cli("down", env={"RIVERLAKE_HOME": str(tmp_path)})
    # a message for the person: stderr; stdout stays for machine output
    assert res.returncode == 0 and "nothing was running" in res.stderr and res.stdout == ""
    res = riverlake_cli("status")
    assert res.returncode == 0
    states = {ln.split()[0]: ln.split()[1] for ln in res.stdout.splitlines()[1:]}
    assert states["seaweedfs"] == states["prefect"] == "running"
    assert states["worker"] in ("running", "stopped")  # started only by `riverlake deploy`
    as_json = riverlake_cli("status", "--json")
    assert {s["service"]: s["state"] for s in json.loads(as_json.stdout)} == states


def test_no_credentials(stack_env, tmp_path):
    env = {"RIVERLAKE_HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    res = riverlake_cli("tables", env=env)
    one_line_error(res, "no S3 credentials for s3://riverlake-test/lake")


def test_an_unreachable_source_fails_the_run_before_anything_is_written(stack_env):
    from riverlake import lake
    from riverlake.settings import get_settings

    dead = f"http://127.0.0.1:{_free_port_block(1)}"
    lake_url = "s3://riverlake-test/unreachable-source"
    res = riverlake_cli("run", "flights", "--start", "2013-01-01", "--end", "2013-01-01",
                        env={"RIVERLAKE_API_URL": dead, "RIVERLAKE_LAKE_URL": lake_url})  # fmt: skip
    one_line_error(res, f"source 'weather': {dead}/weather unreachable after 5 retries")
    settings = get_settings(lake_url=lake_url)
    assert lake.list_tables(settings) == []  # nothing committed, no state advanced


def test_an_unreachable_broker_fails_the_stream_run_in_one_line(stack_env):
    dead = f"nats://127.0.0.1:{_free_port_block(1)}"
    res = riverlake_cli("run", "flight_events", env={"RIVERLAKE_NATS_URL": dead})
    one_line_error(res, f"source 'flight_events': cannot connect to {dead}")
