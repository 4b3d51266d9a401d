"""The lake on the real S3 store (SeaweedFS): atomicity, exactly-once, modes, schema, reads,
maintenance and concurrency, with real failures (killed processes, raised exceptions)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import UTC, datetime

import dask
import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pytest

from riverlake import lake
from riverlake.errors import LakeError
from riverlake.settings import get_settings
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def no_writer():
    """Settings for vacuuming a test's own table, which no other writer touches: the
    minimum retention that protects in-flight files is not needed there."""
    return get_settings(vacuum_min_retention_hours=0)


@pytest.fixture
def name(stack_env) -> str:
    """A fresh table name per test (tables live in the session's S3 bucket)."""
    return f"t_{uuid.uuid4().hex[:8]}"


def frame(months=(1, 2, 3), n=100, offset=0) -> pd.DataFrame:
    rows = [{"year": 2013, "month": m, "k": offset + m * 1000 + i, "v": float(i)}
            for m in months for i in range(n)]  # fmt: skip
    return pd.DataFrame(rows).astype({"year": "int32", "month": "int32", "k": "int64"})


def stored_files(name: str) -> set[str]:
    """Every Parquet file under the table's folder, committed or not."""
    s = get_settings()
    fs = lake.filesystem(s)
    fs.invalidate_cache()
    root = lake.strip_scheme(lake.table_uri(name, s))
    return {p for p in fs.find(root) if p.endswith(".parquet")}


def live_files(name: str) -> set[str]:
    s = get_settings()
    root = lake.strip_scheme(lake.table_uri(name, s))
    return {f"{root}/{f['path']}" for f in lake.table(name, s).files()}


def version(name: str) -> int | None:
    return lake.table_version(name, get_settings())


def run_script(code: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True, text=True, timeout=240, cwd=ROOT, env=os.environ.copy(),
    )  # fmt: skip
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


# ----------------------------------------------------------------------- store guarantees


def test_store_refuses_overwrite_with_if_none_match(stack_env):
    """The log's put-if-absent relies on S3 conditional writes: the store must honour them."""
    import botocore.session
    from botocore.exceptions import ClientError

    s = get_settings()
    c = botocore.session.get_session().create_client(
        "s3", endpoint_url=s.s3_endpoint, region_name=s.s3_region,
        aws_access_key_id=s.s3_access_key.get_secret_value(),
        aws_secret_access_key=s.s3_secret_key.get_secret_value(),
    )  # fmt: skip
    key = f"probe/{uuid.uuid4().hex}"
    c.put_object(Bucket="riverlake-test", Key=key, Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError, match="PreconditionFailed"):
        c.put_object(Bucket="riverlake-test", Key=key, Body=b"second", IfNoneMatch="*")
    assert c.get_object(Bucket="riverlake-test", Key=key)["Body"].read() == b"first"


# ----------------------------------------------------------------------- parallel write, one commit


def test_dask_frame_written_in_parallel_then_one_commit(name):
    from distributed import Client, LocalCluster

    df = frame()
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as c, Client(c):
        r = lake.write_table(
            name, dd.from_pandas(df, npartitions=3), partition_by=["year", "month"],
            app_id="test:b1",
        )  # fmt: skip
    assert (r.version, r.rows, r.files_added) == (0, 300, 3)
    assert (
        len(lake.table(name, get_settings()).history()) == 1
    )  # one commit for all the workers' files
    got = lake.read_pandas(name).sort_values("k").reset_index(drop=True)
    pd.testing.assert_frame_equal(got[df.columns], df, check_dtype=False)


# ----------------------------------------------------------------------- exactly once, real failures


def test_exception_after_some_files_commits_nothing_and_rerun_writes_once(name):
    df = frame(months=(1, 2, 3, 4))

    def boom(part: pd.DataFrame) -> pd.DataFrame:
        if (part["month"] == 4).any():
            time.sleep(1.5)  # let the other partitions write their files first
            raise RuntimeError("source went away")
        return part

    ddf = dd.from_pandas(df, npartitions=4).map_partitions(boom, meta=df.iloc[:0])
    with (
        pytest.raises(RuntimeError, match="source went away"),
        dask.config.set(scheduler="threads"),
    ):
        lake.write_table(name, ddf, partition_by=["year", "month"], app_id="test:b2")
    assert version(name) is None  # nothing visible
    orphans = stored_files(name)
    assert orphans  # some workers did write their files before the failure
    r = lake.write_table(
        name, dd.from_pandas(df, npartitions=4), partition_by=["year", "month"], app_id="test:b2"
    )
    assert r.rows == 400 and not r.skipped
    assert len(lake.read_pandas(name)) == 400
    assert lake.write_table(name, df, partition_by=["year", "month"], app_id="test:b2").skipped
    assert len(lake.read_pandas(name)) == 400
    removed = lake.vacuum(name, retention_hours=0, settings=no_writer())
    assert len(removed) == len(orphans)  # only the failed run's files, never a live one
    assert stored_files(name) == live_files(name)


def test_worker_killed_mid_write_is_retried_and_written_once(name, tmp_path):
    from distributed import Client, LocalCluster

    marker = tmp_path / "killed-once"
    df = frame(months=(1, 2, 3, 4))

    def die_once(part: pd.DataFrame) -> pd.DataFrame:
        if (part["month"] == 3).any() and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies mid-write
        return part

    ddf = dd.from_pandas(df, npartitions=4).map_partitions(die_once, meta=df.iloc[:0])
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as c, Client(c):
        r = lake.write_table(name, ddf, partition_by=["year", "month"], app_id="test:b3")
    assert marker.exists()  # a worker really was killed
    assert r.rows == 400 and r.version == 0
    got = lake.read_pandas(name)
    assert len(got) == 400 and got["k"].is_unique


def test_driver_killed_between_file_writes_and_commit(name):
    df = frame()
    res = run_script(
        """
        import os, signal, sys
        import pyarrow as pa
        from riverlake import lake
        from riverlake.settings import get_settings
        from tests.integration.test_lake import frame
        t = pa.Table.from_pandas(frame(), preserve_index=False)
        adds = lake.write_fragments(t, lake.table_uri(sys.argv[1], get_settings()), ["year", "month"])
        print(len(adds), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # dies before lake.commit
        """,
        name,
        check=False,
    )
    assert res.returncode == -signal.SIGKILL and res.stdout.strip() == "3"
    assert version(name) is None and len(stored_files(name)) == 3
    r = lake.write_table(name, df, partition_by=["year", "month"], app_id="test:b4")
    assert r.rows == 300 and len(lake.read_pandas(name)) == 300
    assert lake.write_table(name, df, partition_by=["year", "month"], app_id="test:b4").skipped
    assert (
        len(lake.vacuum(name, retention_hours=0, settings=no_writer())) == 3
    )  # the dead run's orphans
    assert stored_files(name) == live_files(name)
    assert len(lake.read_pandas(name)) == 300


# ----------------------------------------------------------------------- modes


def test_overwrite_partitions_is_atomic_and_partial(name):
    lake.write_table(name, frame(months=(1, 2)), partition_by=["year", "month"])
    r = lake.write_table(
        name, frame(months=(2,), n=5, offset=50_000), partition_by=["year", "month"],
        mode="overwrite_partitions",
    )  # fmt: skip
    assert (r.files_added, r.files_removed, r.version) == (1, 1, 1)
    got = lake.read_pandas(name)
    assert (got["month"] == 1).sum() == 100
    assert sorted(got.loc[got["month"] == 2, "k"]) == [52000 + i for i in range(5)]


def test_merge_upserts_on_key_with_late_and_repeated_rows(name):
    base = frame(months=(1,), n=10)
    lake.write_table(name, base)
    late = pd.DataFrame(
        {"year": [2013, 2013, 2013, 2013], "month": [1, 1, 1, 1],
         "k": [1003, 1003, 1005, 9999], "v": [30.0, 31.0, 50.0, 99.0]}  # 1003 repeated
    ).astype({"year": "int32", "month": "int32"})  # fmt: skip
    r = lake.merge_table(name, late, keys=["k"], app_id="test:m1")
    assert r.extra == {"inserted": 1, "updated": 2}
    got = lake.read_pandas(name).set_index("k")
    assert len(got) == 11
    assert got.loc[1003, "v"] == 31.0 and got.loc[1005, "v"] == 50.0 and got.loc[9999, "v"] == 99.0
    assert lake.merge_table(name, late, keys=["k"], app_id="test:m1").skipped
    assert len(lake.read_pandas(name)) == 11


# ----------------------------------------------------------------------- schema


def test_type_change_and_dropped_column_are_refused_naming_the_column(name):
    lake.write_table(name, frame(months=(1,)))
    files = stored_files(name)
    bad_type = frame(months=(2,)).astype({"v": "string"})
    with pytest.raises(
        LakeError, match=r"column 'v' of table .* is double but the batch has (large_)?string"
    ):
        lake.write_table(name, bad_type)
    with pytest.raises(LakeError, match=r"column 'v' of table .* is missing from the batch"):
        lake.write_table(name, frame(months=(2,)).drop(columns=["v"]))
    with pytest.raises(LakeError, match=r"column 'w' is not in table .*allow_new_columns"):
        lake.write_table(name, frame(months=(2,)).assign(w="x"))
    assert version(name) == 0 and stored_files(name) == files  # nothing committed or written


def test_additive_evolution_adds_a_nullable_column(name):
    lake.write_table(name, frame(months=(1,), n=3))
    lake.write_table(name, frame(months=(2,), n=2).assign(w="new"), allow_new_columns=True)
    got = lake.read_pandas(name).sort_values("k")
    assert list(got.columns) == ["year", "month", "k", "v", "w"]
    assert got["w"].isna().sum() == 3 and (got["w"] == "new").sum() == 2


# ----------------------------------------------------------------------- reads


def test_partition_pruning_reads_only_matching_files(name, monkeypatch):
    lake.write_table(name, frame(months=(1, 2, 3, 4)), partition_by=["year", "month"])
    opened: list[str] = []
    from riverlake.lake import read

    real = read.read_fragment

    def counting(spec, *a, **kw):
        opened.append(spec["path"])
        return real(spec, *a, **kw)

    monkeypatch.setattr(read, "read_fragment", counting)
    df = lake.read_table(
        name, columns=["month", "k"], filters=[("month", "in", [2, 4]), ("k", "<", 2050)]
    ).compute(scheduler="sync")
    assert len(opened) == 2 and all("month=2" in p or "month=4" in p for p in opened)
    assert list(df.columns) == ["month", "k"]
    assert len(df) == 50 and set(df["month"]) == {2}


def test_time_travel_by_version_and_timestamp(name):
    lake.write_table(name, frame(months=(1,), n=5))
    # as_of resolves through the log files' modification times, which S3 keeps to the second
    time.sleep(1.1)
    between = datetime.now(UTC)
    time.sleep(1.1)
    lake.write_table(name, frame(months=(2,), n=7))
    assert len(lake.read_pandas(name)) == 12
    assert len(lake.read_pandas(name, version=0)) == 5
    assert len(lake.read_pandas(name, as_of=between)) == 5


# ----------------------------------------------------------------------- maintenance and catalog


def test_optimize_compacts_small_files_and_catalog_reports(name):
    for i in range(6):
        lake.write_table(name, frame(months=(1,), n=10, offset=i * 100), app_id=f"test:c{i}")
    assert len(live_files(name)) == 6
    lake.optimize(name)
    assert len(live_files(name)) == 1
    assert len(lake.read_pandas(name)) == 60
    info = {t["name"]: t for t in lake.list_tables()}[name]
    assert info["rows"] == 60 and info["files"] == 1 and info["version"] == 6
    assert info["batches"] == [f"test:c{i}" for i in reversed(range(6))]
    assert len(lake.vacuum(name, retention_hours=0, settings=no_writer())) == 6


# ----------------------------------------------------------------------- concurrency

WRITER = """
import sys
import pandas as pd
from riverlake import lake
name, who, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for i in range(8):
    df = pd.DataFrame({"month": [1] * 25, "who": [who] * 25, "i": [i] * 25}).astype({"month": "int32"})
    lake.write_table(name, df, partition_by=["month"], mode=mode, app_id=f"w{who}:{i}")
"""


def _two_writers(name: str, mode: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, name, str(w), mode],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in (1, 2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]


def test_two_processes_appending_at_once_lose_and_duplicate_nothing(name):
    _two_writers(name, "append")
    got = lake.read_pandas(name)
    assert len(got) == 2 * 8 * 25
    assert got.groupby(["who", "i"]).size().eq(25).all()
    assert version(name) == 15  # 16 commits: versions 0..15
    info = {t["name"]: t for t in lake.list_tables()}[name]
    assert sorted(info["batches"]) == sorted(f"w{w}:{i}" for w in (1, 2) for i in range(8))


def test_two_processes_overwriting_one_partition_leave_one_whole_batch(name):
    _two_writers(name, "overwrite_partitions")
    got = lake.read_pandas(name)
    # last writer wins, wholly: exactly one batch of 25 rows, never a mix or a double
    assert len(got) == 25
    assert got[["who", "i"]].drop_duplicates().shape[0] == 1
    assert version(name) == 15
    assert pa.Table.from_pandas(got).num_rows == 25


def test_optimize_and_vacuum_commands(name):
    from tests.conftest import riverlake_cli

    for i in range(3):
        lake.write_table(name, frame(months=(1,), n=5, offset=i * 10))
    res = riverlake_cli("optimize", name)
    assert res.returncode == 0 and f"{name}: 3 files compacted into 1" in res.stdout, res.stderr
    res = riverlake_cli("vacuum", name, "--retention-hours", "0")
    assert res.returncode == 1 and res.stderr.strip() == (
        f"riverlake: error: vacuum of table {name!r}: a retention of 0 hours is below the "
        "minimum of 1 (RIVERLAKE_VACUUM_MIN_RETENTION_HOURS): files being written but not "
        "committed yet would be deleted"
    )
    assert len(stored_files(name)) == 4  # nothing deleted
    no_writer = {"RIVERLAKE_VACUUM_MIN_RETENTION_HOURS": "0"}  # this test's table only
    res = riverlake_cli("vacuum", name, "--retention-hours", "0", "--dry-run", env=no_writer)
    assert res.returncode == 0 and f"{name}: would delete 3 files" in res.stdout, res.stderr
    assert len(stored_files(name)) == 4
    res = riverlake_cli("vacuum", name, "--retention-hours", "0", env=no_writer)
    assert f"{name}: deleted 3 files" in res.stdout
    assert stored_files(name) == live_files(name) and len(lake.read_pandas(name)) == 15
