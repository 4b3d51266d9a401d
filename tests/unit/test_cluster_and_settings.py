"""Cluster profiles, the DaskCluster spec as data (checked against the operator's CRD), settings."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from riverlake import cluster
from riverlake.errors import RiverlakeError
from riverlake.ops import stack
from riverlake.settings import get_settings

pytestmark = pytest.mark.unit


def crd_schema(kind: str) -> dict:
    import dask_kubernetes

    crd = Path(dask_kubernetes.__file__).parent / (
        f"operator/deployment/helm/dask-kubernetes-operator/crds/{kind}.yaml"
    )
    doc = yaml.safe_load(crd.read_text())
    (version,) = [v for v in doc["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def test_dask_cluster_spec_is_valid_sized_by_profile_and_owned_by_the_run_pod(monkeypatch):
    monkeypatch.setenv("RIVERLAKE_WORKER_PROFILE", "large")
    monkeypatch.setenv("RIVERLAKE_IMAGE", "registry.example/riverlake:9")
    monkeypatch.setenv("RIVERLAKE_IDLE_TIMEOUT", "120")
    monkeypatch.setenv("RIVERLAKE_S3_SECRET_KEY", "do-not-leak")
    monkeypatch.setenv("RIVERLAKE_POD_NAME", "flights-run-abc")
    monkeypatch.setenv("RIVERLAKE_POD_UID", "0b6c1d1e-1111-2222-3333-444455556666")
    spec = cluster.make_dask_cluster_spec(cluster.cluster_options(get_settings()), name="rl-test")
    jsonschema.validate(spec, crd_schema("daskcluster"))
    assert spec["metadata"]["name"] == "rl-test"
    (owner,) = spec["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Pod", "flights-run-abc", "0b6c1d1e-1111-2222-3333-444455556666")  # fmt: skip
    assert spec["spec"]["idleTimeout"] == 120
    worker = spec["spec"]["worker"]
    assert worker["replicas"] == cluster.WORKER_PROFILES["large"]["minimum"] == 2
    (c,) = worker["spec"]["containers"]
    assert c["image"] == "registry.example/riverlake:9"
    assert c["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}
    assert c["args"][c["args"].index("--nthreads") + 1] == "2"
    env = {e["name"]: e for e in c["env"]}
    assert env["PREFECT_API_URL"]["value"].endswith("/api")
    assert "valueFrom" in env["RIVERLAKE_S3_SECRET_KEY"]  # from a Secret, never inline
    assert "do-not-leak" not in yaml.safe_dump(spec)
    assert spec["spec"]["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == "rl-test"


@pytest.mark.parametrize(
    ("url", "forms"),
    [
        ("postgresql+psycopg://riverlake:s3cr3t-pw@db.example:5432/dims", ["s3cr3t-pw"]),
        ("postgresql://riverlake:p%40ss%2Fw0rd@db.example/dims", ["p%40ss%2Fw0rd", "p@ss/w0rd"]),
        ("postgresql://riverlake@db.example/dims?password=qs-s3cr3t", ["qs-s3cr3t"]),
        ("mssql+pyodbc:///?odbc_connect=DRIVER%3D%7BODBC+Driver+18%7D%3BSERVER%3Ddb%3B"
         "UID%3Driverlake%3BPWD%3Dodbc-s3cr3t", ["odbc-s3cr3t"]),
        ("mssql+pyodbc:///?odbc_connect=Server=db;Uid=riverlake;Password=odbc2-s3cr3t",
         ["odbc2-s3cr3t"]),
        ("mysql+pymysql://riverlake@db.example/dims?passwd=my-s3cr3t", ["my-s3cr3t"]),
        ("postgresql://riverlake@db.example/dims?sslmode=verify-full&sslpassword=ssl-s3cr3t",
         ["ssl-s3cr3t"]),
        ("postgresql://riverlake@db.example/dims?password=", []),
        ("postgresql://riverlake@db.example/dims?PASSWORD=UP-s3cr3t", ["UP-s3cr3t"]),
        ("snowflake://riverlake@acct/db?private_key_passphrase=pk-s3cr3t", ["pk-s3cr3t"]),
        ("databricks://host.example/db?access_token=dapi-s3cr3t", ["dapi-s3cr3t"]),
        ("postgresql://riverlake@db.example/dims?app_secret=as-s3cr3t", ["as-s3cr3t"]),
    ],
    ids=["userinfo", "percent-encoded", "query-parameter", "odbc-connect-pwd",
         "odbc-connect-password", "passwd", "sslpassword", "empty-password", "upper-case",
         "key", "token", "secret"],
)  # fmt: skip
def test_a_sql_url_with_a_password_reaches_the_manifest_as_a_secret_reference(
    monkeypatch, url, forms
):
    monkeypatch.setenv("RIVERLAKE_SQL_URL", url)
    options = cluster.cluster_options(get_settings())
    assert options.env["RIVERLAKE_SQL_URL"] == url  # local workers still get the URL itself
    spec = cluster.make_dask_cluster_spec(options, name="rl-test")
    jsonschema.validate(spec, crd_schema("daskcluster"))
    rendered = json.dumps(spec) + yaml.safe_dump(spec)
    for form in forms:
        assert form not in rendered, f"the password ({form}) is in the manifest"
    for role in ("worker", "scheduler"):
        (c,) = spec["spec"][role]["spec"]["containers"]
        env = {e["name"]: e for e in c["env"]}
        assert env["RIVERLAKE_SQL_URL"] == {
            "name": "RIVERLAKE_SQL_URL",
            "valueFrom": {"secretKeyRef": {"name": "riverlake-sql", "key": "RIVERLAKE_SQL_URL"}},
        }


def test_a_sql_url_without_a_password_stays_in_the_manifest(monkeypatch):
    url = "postgresql+psycopg://riverlake@db.example:5432/dims"
    monkeypatch.setenv("RIVERLAKE_SQL_URL", url)
    spec = cluster.make_dask_cluster_spec(cluster.cluster_options(get_settings()), name="rl-t")
    (c,) = spec["spec"]["worker"]["spec"]["containers"]
    assert {"name": "RIVERLAKE_SQL_URL", "value": url} in c["env"]


def test_without_a_pod_there_is_no_owner():
    options = cluster.cluster_options(get_settings(), worker_profile="small")
    spec = cluster.make_dask_cluster_spec(options, name="rl-test")
    assert "ownerReferences" not in spec["metadata"]
    assert spec["spec"]["worker"]["spec"]["containers"][0]["resources"]["requests"] == {
        "cpu": "500m", "memory": "2Gi"}  # fmt: skip


@pytest.mark.parametrize("profile", sorted(cluster.WORKER_PROFILES))
def test_dask_autoscaler_spec_is_valid_with_the_profiles_bounds(profile):
    spec = cluster.make_dask_autoscaler_spec("rl-test", profile)
    jsonschema.validate(spec, crd_schema("daskautoscaler"))
    bounds = cluster.WORKER_PROFILES[profile]
    assert spec["spec"] == {"cluster": "rl-test", "minimum": bounds["minimum"],
                            "maximum": bounds["maximum"]}  # fmt: skip


def _versions(**worker_pkgs) -> dict:
    pk = {"dask": "2025.1.0", "distributed": "2025.1.0", "pyarrow": "19.0.0"}
    return {
        "client": {"host": {"python": "3.11.7"}, "packages": pk},
        "scheduler": {"host": {"python": "3.11.7"}, "packages": pk},
        "workers": {"tcp://10.0.0.9:4000": {"host": {"python": "3.11.7"},
                                            "packages": {**pk, **worker_pkgs}}},
    }  # fmt: skip


def test_version_mismatches_name_the_worker_and_the_package():
    assert cluster.version_mismatches(_versions()) == []
    assert cluster.version_mismatches(_versions(pyarrow="17.0.0")) == [
        "tcp://10.0.0.9:4000 has pyarrow 17.0.0 but the client has 19.0.0"
    ]


def test_a_real_cluster_with_one_environment_passes_the_version_check():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, processes=True, dashboard_address=":0") as lc, Client(lc) as c:
        said = cluster.check_versions(c)  # raises ClusterError on any mismatch
    import platform

    import distributed

    assert said.startswith("the scheduler and 1 workers match the client: ")
    assert f"python {platform.python_version()}" in said
    assert f"distributed {distributed.__version__}" in said


@pytest.mark.parametrize("profile", ["local", "kubernetes", "tcp://10.1.2.3:8786"])
def test_valid_profiles(profile):
    assert cluster.validate_profile(profile) == profile


def test_unknown_profile_is_one_clear_line():
    with pytest.raises(RiverlakeError, match=r"unknown cluster 'yarn': use local, kubernetes"):
        cluster.validate_profile("yarn")


def test_local_cluster_workers_get_prefect_and_storage_env(monkeypatch):
    from distributed import Client

    monkeypatch.setenv("RIVERLAKE_PREFECT_API_URL", "http://127.0.0.1:1/api")
    monkeypatch.setenv("RIVERLAKE_WORKERS", "1")
    monkeypatch.setenv("RIVERLAKE_LOCAL_PROCESSES", "true")
    monkeypatch.setenv("RIVERLAKE_DASHBOARD_PORT", "0")
    monkeypatch.setenv("RIVERLAKE_LAKE_URL", "s3://b/p")
    options = cluster.cluster_options(get_settings(), profile="local")
    with cluster.make_cluster(options) as c, Client(c) as client:
        env = client.run(lambda: {k: __import__("os").environ.get(k) for k in
                                  ("PREFECT_API_URL", "RIVERLAKE_LAKE_URL")})  # fmt: skip
        (worker_env,) = env.values()
    assert worker_env == {
        "PREFECT_API_URL": "http://127.0.0.1:1/api",
        "RIVERLAKE_LAKE_URL": "s3://b/p",
    }


def test_thread_workers_pause_on_the_process_s_memory_not_a_share_of_it(monkeypatch):
    """Thread workers share one process, and each worker's memory manager measures that
    whole process: with a share of the machine each (dask's "auto"), 2 workers paused
    at 80% of half the memory (the 60M-row transform's gold stage crawled, paused and
    resumed every few seconds). Each gets the whole machine's memory instead."""
    from distributed import Client
    from distributed.system import MEMORY_LIMIT

    monkeypatch.setenv("RIVERLAKE_PREFECT_API_URL", "http://127.0.0.1:1/api")
    monkeypatch.setenv("RIVERLAKE_WORKERS", "2")
    monkeypatch.setenv("RIVERLAKE_DASHBOARD_PORT", "0")
    options = cluster.cluster_options(get_settings(), profile="local")
    assert options.processes is False and options.workers == 2
    with cluster.make_cluster(options) as c, Client(c) as client:
        limits = client.run(lambda dask_worker: dask_worker.memory_manager.memory_limit)
        pids = client.run(lambda: __import__("os").getpid())
    assert len(set(pids.values())) == 1  # one process, measured by both workers
    assert list(limits.values()) == [MEMORY_LIMIT, MEMORY_LIMIT]


def test_settings_defaults_and_credentials_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RIVERLAKE_HOME", str(tmp_path))
    monkeypatch.setenv("RIVERLAKE_S3_PORT", "9001")
    (tmp_path / "credentials.json").write_text('{"access_key": "a", "secret_key": "s"}')
    s = get_settings()
    assert s.s3_endpoint == "http://127.0.0.1:9001"
    assert s.prefect_api_url == "http://127.0.0.1:4200/api"
    assert s.s3_access_key.get_secret_value() == "a"
    assert "s" not in repr(s.s3_secret_key)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def test_the_state_folder_and_what_an_earlier_up_left_in_it_are_made_private(tmp_path):
    home = tmp_path / "state"
    dirs = ["logs", "run", "seaweedfs", "seaweedfs/volume", "demo"]
    files = {"prefect.db": 0o644, "logs/seaweedfs.log": 0o664, "run/seaweedfs.pid": 0o644,
             "seaweedfs/volume/1.dat": 0o666, "seaweedfs/s3.json": 0o600,
             "demo/run.sh": 0o755, "credentials.json": 0o640}  # fmt: skip
    for d in ["", *dirs]:  # an older, world-readable state folder
        (home / d).mkdir(exist_ok=True)
        (home / d).chmod(0o755)
    for f, mode in files.items():
        (home / f).write_text('{"access_key": "a", "secret_key": "s"}')
        (home / f).chmod(mode)
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not ours")
    outside.chmod(0o644)
    (home / "link").symlink_to(outside)
    assert stack.ensure_home(get_settings(home=home)) == home.resolve()
    assert _mode(home) == 0o700
    assert {d: _mode(home / d) for d in dirs} == dict.fromkeys(dirs, 0o700)
    assert {f: _mode(home / f) for f in files} == {f: m & 0o700 for f, m in files.items()}
    assert _mode(outside) == 0o644  # a link out of the folder is not followed


def test_a_new_state_folder_and_a_services_files_are_private(tmp_path):
    old = os.umask(0o022)
    try:
        home = stack.ensure_home(get_settings(home=tmp_path / "new" / "state"))
        assert _mode(home) == 0o700
        probe = stack.Service(
            name="probe", argv=[sys.executable, "-c", "open('made-by-service', 'w').write('x')"],
            ports={}, health_url="", url="",
        )  # fmt: skip
        stack._start(probe, home)
        made = home / "made-by-service"
        deadline = time.monotonic() + 20
        while not (made.exists() and made.read_text() == "x") and time.monotonic() < deadline:
            time.sleep(0.05)
        stack.set_demo(get_settings(home=home), True)
    finally:
        os.umask(old)
    created = {
        "made-by-service": _mode(made),
        "logs": _mode(home / "logs"),
        "logs/probe.log": _mode(probe.log_file(home)),
        "run": _mode(home / "run"),
        "run/probe.pid": _mode(probe.pid_file(home)),
        "stack.json": _mode(home / stack.STACK_FILE),
    }
    assert created == {"made-by-service": 0o600, "logs": 0o700, "logs/probe.log": 0o600,
                       "run": 0o700, "run/probe.pid": 0o600, "stack.json": 0o600}  # fmt: skip


def test_a_service_just_started_is_alive_even_inside_exec_on_a_loaded_machine():
    """Right after Popen the child can still be inside exec (its command line empty):
    that is not a dead service. 3 busy processes make the window show up (the fault
    suite met it restarting SeaweedFS: 24 in 200 starts before the fix)."""
    import subprocess

    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        dead = 0
        for _ in range(100):
            p = subprocess.Popen(["sleep", "5"])
            dead += not stack._alive({"pid": p.pid, "argv": ["sleep", "5"]})
            p.kill()
            p.wait()
        zombie = subprocess.Popen(["true"])
        time.sleep(0.3)  # exited, not reaped: a zombie is not alive
        assert not stack._alive({"pid": zombie.pid, "argv": ["true"]})
        zombie.wait()
    finally:
        for b in busy:
            b.kill()
            b.wait()
    assert dead == 0


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://riverlake@db.example/dims?sslmode=require&connect_timeout=10", False),
        ("sqlite:////data/dims.db", False),
        ("mssql+pyodbc:///?odbc_connect=Server%3Ddb%3BUid%3Driverlake", False),
        ("postgresql://riverlake@db.example/dims?options=-c%20search_path%3Dx", False),
        ("mssql+pyodbc:///?odbc_connect=Server%3Ddb%3BPwd%3Dx", True),
        ("postgresql://riverlake@db.example/dims?Auth_Token=x", True),
        ("postgresql://riverlake:@db.example/dims", True),  # an empty password is one
    ],
)
def test_has_password_knows_secret_query_keys_and_odbc_strings_from_plain_options(url, secret):
    assert cluster.has_password(url) is secret


def test_the_cluster_spec_starts_commands_that_exist_in_the_image_environment():
    """The scheduler and worker containers start `dask scheduler` / `dask worker`
    (distributed 2026.x removed `dask-scheduler` and `dask-worker`): each command line's
    program and subcommand answer --help in this environment, which the image installs."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    spec = cluster.make_dask_cluster_spec(cluster.cluster_options(get_settings()), name="rl-cmd")
    for part in ("scheduler", "worker"):
        (c,) = spec["spec"][part]["spec"]["containers"]
        args = c["args"]
        assert args[:2] == ["dask", part]
        program = shutil.which(args[0], path=str(Path(sys.executable).parent))
        assert program, f"{args[0]} is not installed beside {sys.executable}"
        res = subprocess.run([program, args[1], "--help"], capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        assert res.returncode == 0, res.stderr[-500:]
        for flag in [a for a in args[2:] if a.startswith("--")]:
            assert flag in res.stdout, f"`dask {part}` has no {flag}"
