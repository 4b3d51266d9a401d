"""The lake on a local path: atomic commits, exactly-once batches, partition overwrite, reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dask.dataframe as dd
import pandas as pd
import pytest
from deltalake.exceptions import DeltaError

from riverlake import lake
from riverlake.errors import LakeError

pytestmark = pytest.mark.unit


def frame(months, n=10, offset=0):
    rows = [
        {"year": 2013, "month": m, "k": offset + i, "v": float(i)} for m in months for i in range(n)
    ]
    return pd.DataFrame(rows).astype({"year": "int32", "month": "int32", "k": "int64"})


def test_dask_write_is_one_commit_and_batch_is_exactly_once(settings):
    ddf = dd.from_pandas(frame([1, 2, 3]), npartitions=3)
    r1 = lake.write_table(
        "t", ddf, partition_by=["year", "month"], app_id="p:b1", settings=settings
    )
    assert (r1.version, r1.rows, r1.files_added, r1.skipped) == (0, 30, 3, False)
    again = lake.write_table(
        "t", ddf, partition_by=["year", "month"], app_id="p:b1", settings=settings
    )
    assert again.skipped and again.version == 0
    assert len(lake.read_pandas("t", settings=settings)) == 30


def test_overwrite_partitions_replaces_only_touched_partitions(settings):
    lake.write_table("t", frame([1, 2]), partition_by=["year", "month"], settings=settings)
    r = lake.write_table(
        "t", frame([2], n=4, offset=100), partition_by=["year", "month"],
        mode="overwrite_partitions", settings=settings,
    )  # fmt: skip
    assert (r.files_added, r.files_removed) == (1, 1)
    df = lake.read_pandas("t", settings=settings)
    assert sorted(df.loc[df["month"] == 2, "k"]) == [100, 101, 102, 103]
    assert (df["month"] == 1).sum() == 10
    # time travel: version 0 still holds the old month 2
    old = lake.read_pandas("t", version=0, settings=settings)
    assert sorted(old.loc[old["month"] == 2, "k"]) == list(range(10))


def test_partition_filters_prune_files_and_other_filters_apply(settings):
    lake.write_table("t", frame([1, 2, 3, 4]), partition_by=["year", "month"], settings=settings)
    _, _, files = lake.table_files("t", [("month", "in", [2, 3])], settings=settings)
    assert len(files) == 2
    ddf = lake.read_table(
        "t", columns=["month", "k"], filters=[("month", ">=", 3), ("k", "<", 5)], settings=settings
    )
    assert ddf.npartitions == 2
    df = ddf.compute()
    assert list(df.columns) == ["month", "k"]
    assert len(df) == 10 and set(df["month"]) == {3, 4}


def test_catalog_lists_rows_partitions_and_batch(settings):
    lake.write_table(
        "t", frame([1, 2]), partition_by=["year", "month"], app_id="flights:abc", settings=settings
    )
    (info,) = lake.list_tables(settings)
    assert info["name"] == "t" and info["rows"] == 20 and info["partitions"] == 2
    assert info["files"] == 2 and info["version"] == 0 and info["last_batch"] == "flights:abc"


def test_missing_table_is_a_clear_error(settings):
    with pytest.raises(LakeError, match="table 'nope' does not exist"):
        lake.read_table("nope", settings=settings)


def test_commit_into_a_table_another_writer_just_created(settings, monkeypatch):
    import pyarrow as pa

    lake.write_table("t", frame([1]), settings=settings)
    uri = lake.table_uri("t", settings)
    from riverlake.lake import write

    real = write.open_table
    calls = []

    def stale_first(u, s=None, version=None):  # we looked before the other writer created it
        calls.append(u)
        return None if len(calls) == 1 else real(u, s, version)

    monkeypatch.setattr(write, "open_table", stale_first)
    batch = pa.Table.from_pandas(frame([2]), preserve_index=False)
    adds = lake.write_fragments(batch, uri, [], settings)
    r = lake.commit(uri, adds, batch.schema, batch=lake.Batch("late:1"), settings=settings)
    monkeypatch.undo()
    assert r.version == 1 and not r.skipped
    assert len(lake.read_pandas("t", settings=settings)) == 20


def in_a_new_python(tmp_path, body: str) -> list[str]:
    """The lines ``body`` prints in a new Python process (nothing imported yet), with
    ``sys``, ``pd``, ``lake`` and ``s``, the settings of a lake under ``tmp_path``."""
    code = (
        "import sys\n"
        "import pandas as pd\n"
        "from riverlake import lake\n"
        "from riverlake.settings import get_settings\n"
        f"s = get_settings(lake_url={str(tmp_path / 'lake')!r})\n"
    ) + body
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.splitlines()


def test_a_pandas_write_does_not_import_dask_dataframe(tmp_path):
    """write_table took 0.6 s importing dask.dataframe to learn that a pandas frame is not
    a dask one; a dask frame is still written partition by partition (test above)."""
    lines = in_a_new_python(tmp_path, (
        "r = lake.write_table('t', pd.DataFrame({'k': [1, 2]}), settings=s)\n"
        "print(r.rows, 'dask.dataframe' in sys.modules)\n"
    ))  # fmt: skip
    assert lines == ["2 False"]


def test_read_pandas_equals_the_dask_read_and_does_not_import_dask_dataframe(tmp_path):
    """read_pandas read through a dask graph (importing dask.dataframe, 0.6 s or more, in
    every process that read a small table); it reads the files in threads, giving what
    the dask read gives: the same rows, columns, types and order, filters applied."""
    lines = in_a_new_python(tmp_path, (
        "rows = [{'year': 2013, 'month': m, 'k': 10 * m + i, 'v': i / 3, 's': f'x{i}'}\n"
        "        for m in (1, 2, 3) for i in range(5)]\n"
        "df = pd.DataFrame(rows).astype({'year': 'int32', 'month': 'int32'})\n"
        "lake.write_table('t', df, partition_by=['year', 'month'], settings=s)\n"
        "kw = dict(columns=['k', 'month', 's'], filters=[('month', '>=', 2), ('k', '<', 33)])\n"
        "got = lake.read_pandas('t', settings=s, **kw)\n"
        "print(len(got), 'dask.dataframe' in sys.modules)\n"
        "want = lake.read_table('t', settings=s, **kw).compute()\n"
        "want = want.sort_values('k').reset_index(drop=True)\n"
        "pd.testing.assert_frame_equal(got.sort_values('k').reset_index(drop=True), want)\n"
        "print(list(got.columns), got['k'].tolist() == sorted(got['k']))\n"
        "none = lake.read_pandas('t', filters=[('month', '=', 9)], settings=s)\n"
        "print(len(none), none.dtypes['s'] == want.dtypes['s'])\n"
    ))  # fmt: skip
    assert lines == ["8 False", "['k', 'month', 's'] True", "0 True"]


def test_read_pandas_of_a_missing_table_is_an_error_or_none_when_allowed(settings):
    with pytest.raises(LakeError, match="table 'nope' does not exist"):
        lake.read_pandas("nope", settings=settings)
    assert lake.read_pandas("nope", missing_ok=True, settings=settings) is None
    lake.write_table("t", frame([1]), settings=settings)
    assert len(lake.read_pandas("t", missing_ok=True, settings=settings)) == 10


def test_a_version_whose_log_was_cleaned_up_is_an_error_not_a_missing_table(settings):
    """open_table takes "no table here" from deltalake's TableNotFoundError, which it also
    raises for an old version whose log files are gone: that must stay an error."""
    for i in range(3):
        lake.write_table("t", frame([1], offset=10 * i), settings=settings)
    t = lake.table("t", settings)
    t.delta.create_checkpoint()
    log = t.uri.rstrip("/") + "/_delta_log"
    for name in ("00000000000000000000.json", "00000000000000000001.json"):
        (Path(lake.strip_scheme(log)) / name).unlink()
    assert lake.table("t", settings).version == 2
    with pytest.raises(DeltaError):  # it was None: "no table t"
        lake.table("t", settings, version=0)
