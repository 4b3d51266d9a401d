"""Integrity of the lake on a local path: concurrent partition overwrites, vacuum against
in-flight writes, commits of missing files, partition values in paths, null merge keys.

Every test uses a real local Delta lake under ``tmp_path``, real concurrent writers,
real files and deltalake's own reader; nothing of the lake is mocked.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from riverlake import lake
from riverlake.errors import LakeError

pytestmark = pytest.mark.unit


def month_frame(month: int, who: int, n: int = 5) -> pa.Table:
    df = pd.DataFrame({"month": [month] * n, "who": [who] * n, "i": range(n)})
    return pa.Table.from_pandas(df.astype({"month": "int32", "i": "int64"}), preserve_index=False)


def parquet_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*.parquet") if p.is_file()}


# ------------------------------------------------------------------ 5: concurrent overwrites


def _race_overwrites(settings, month: int, planned_at: int) -> list[lake.CommitResult]:
    """Two threads overwrite partition ``month``. Each writes its files and opens the table
    (the snapshot its removes are computed from) before either commits: a barrier holds
    both until both plans exist."""
    uri = lake.table_uri("t", settings)
    barrier = threading.Barrier(2, timeout=30)
    planned, results, errors = [], [], []

    def writer(who: int) -> None:
        try:
            batch = month_frame(month, who)
            adds = lake.write_fragments(batch, uri, ["month"], settings)
            handle = lake.table("t", settings)
            planned.append(handle.version)
            barrier.wait()
            results.append(
                lake.commit(
                    uri,
                    adds,
                    batch.schema,
                    partition_by=["month"],
                    mode="overwrite_partitions",
                    table=handle,
                    settings=settings,
                )
            )
        except Exception as e:  # reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert planned == [planned_at, planned_at]  # both planned against the same version
    return sorted(results, key=lambda r: r.version)


@pytest.mark.parametrize("existed", [False, True], ids=["new-partition", "existing-partition"])
def test_concurrent_overwrites_of_a_partition_leave_one_writers_rows(settings, existed):
    lake.write_table("t", month_frame(1, 0, n=3), partition_by=["month"], settings=settings)
    if existed:
        lake.write_table("t", month_frame(2, 0, n=7), partition_by=["month"], settings=settings)
    base = 1 if existed else 0
    first, last = _race_overwrites(settings, month=2, planned_at=base)
    assert (first.version, last.version) == (base + 1, base + 2)
    got = lake.read_pandas("t", settings=settings)
    month2 = got[got["month"] == 2]
    assert len(month2) == 5, f"{len(month2)} rows in the overwritten partition"
    assert month2["who"].nunique() == 1 and sorted(month2["i"]) == [0, 1, 2, 3, 4]
    assert (got["month"] == 1).sum() == 3
    # the last writer replaced the first writer's file, whether or not the partition existed
    assert (first.files_removed, last.files_removed) == (1 if existed else 0, 1)


def test_a_merge_computed_from_a_version_commits_only_on_that_version(settings):
    """A partition merged with the rows it held (incremental curation) is valid only on
    the version it read: two merges computed from the same version race; one commits,
    the other is refused whole (no rebase over the first, which would drop its rows)."""
    lake.write_table("t", month_frame(2, 0, n=3), partition_by=["month"], settings=settings)
    uri = lake.table_uri("t", settings)
    barrier = threading.Barrier(2, timeout=30)
    outcomes: dict[int, object] = {}

    def merger(who: int) -> None:
        base = lake.table("t", settings)
        held = base.delta.to_pyarrow_table()  # what the partition holds at the base version
        merged = pa.concat_tables([held, month_frame(2, who, n=2)])
        adds = lake.write_fragments(merged, uri, ["month"], settings)
        barrier.wait()  # both computed from version 0 before either commits
        try:
            outcomes[who] = lake.commit(
                uri, adds, merged.schema, partition_by=["month"], mode="overwrite_partitions",
                batch=lake.Batch(f"merge:{who}"), expect_version=base.version, settings=settings,
            )  # fmt: skip
        except lake.CommitConflict as e:
            outcomes[who] = e

    threads = [threading.Thread(target=merger, args=(w,)) for w in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    won = [w for w, o in outcomes.items() if isinstance(o, lake.CommitResult)]
    lost = [w for w, o in outcomes.items() if isinstance(o, lake.CommitConflict)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert "nothing committed" in str(outcomes[lost[0]])
    got = lake.read_pandas("t", settings=settings)
    assert sorted(got["who"]) == [0, 0, 0, won[0], won[0]]  # the winner's merge, exactly
    assert lake.table("t", settings).version == 1
    # a later commit computed from the stale version is refused before it tries
    with pytest.raises(lake.CommitConflict, match="is at version 1, not 0"):
        lake.commit(uri, [], month_frame(2, 9).schema, partition_by=["month"],
                    mode="overwrite_partitions", batch=lake.Batch("late"), expect_version=0,
                    settings=settings)  # fmt: skip


# ------------------------------------------------------------------ 8: vacuum and missing files


def test_vacuum_refuses_a_retention_below_the_minimum_and_spares_in_flight_files(settings):
    lake.write_table("t", month_frame(1, 0), partition_by=["month"], settings=settings)
    uri = lake.table_uri("t", settings)
    batch = month_frame(2, 1)
    adds = lake.write_fragments(batch, uri, ["month"], settings)  # written, not committed yet
    (in_flight,) = [Path(uri) / a["path"] for a in adds]
    assert in_flight.exists()
    with pytest.raises(LakeError) as e:
        lake.vacuum("t", retention_hours=0, settings=settings)
    minimum = settings.vacuum_min_retention_hours
    assert str(e.value) == (
        "vacuum of table 't': a retention of 0 hours is below the minimum of 1 "
        "(RIVERLAKE_VACUUM_MIN_RETENTION_HOURS): files being written but not committed yet "
        "would be deleted"
    )
    assert in_flight.exists()
    assert lake.vacuum("t", retention_hours=minimum, settings=settings) == []
    assert in_flight.exists()
    r = lake.commit(uri, adds, batch.schema, partition_by=["month"], settings=settings)
    assert (r.version, r.rows) == (1, 5)
    assert sorted(lake.read_pandas("t", settings=settings)["who"]) == [0] * 5 + [1] * 5


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_commit_of_a_missing_or_changed_file_is_refused_and_the_table_stays_readable(
    settings, damage
):
    lake.write_table("t", month_frame(1, 0), partition_by=["month"], settings=settings)
    uri = lake.table_uri("t", settings)
    batch = pa.concat_tables([month_frame(2, 1), month_frame(3, 1)])
    adds = lake.write_fragments(batch, uri, ["month"], settings)
    victim = Path(uri) / adds[1]["path"]
    if damage == "deleted":  # what a vacuum with no retention does to an in-flight file
        victim.unlink()
        reason = "does not exist"
    else:
        victim.write_bytes(victim.read_bytes()[:10])
        reason = f"has 10 bytes, not the {adds[1]['size']} written"
    with pytest.raises(LakeError) as e:
        lake.commit(uri, adds, batch.schema, partition_by=["month"], settings=settings)
    assert str(e.value) == (
        f"commit to table 't' refused: file {adds[1]['path']} {reason}; "
        "nothing was committed, write the batch again"
    )
    assert "\n" not in str(e.value)
    assert lake.table_version("t", settings) == 0
    got = lake.read_pandas("t", settings=settings)
    assert len(got) == 5 and set(got["month"]) == {1}


# ------------------------------------------------------------------ 9: partition values in paths

NASTY = [
    "../../escaped",
    "/../../../../outside",
    "x y%",
    "a/b",
    "a:b=c",
    "q?#*",
    "%41",
    "ü é",
    "tab\tnl\n",
    "\\back",
    "[x]{y}^'\"",
    "..",
    "normal",
    None,
]


def test_partition_values_are_escaped_like_deltalake_and_read_back_exactly(settings, tmp_path):
    from deltalake import DeltaTable, write_deltalake

    data = pa.table({"p": NASTY, "v": list(range(len(NASTY)))})
    lake.write_table("t", data, partition_by=["p"], settings=settings)
    uri = lake.table_uri("t", settings)
    outside = parquet_files(tmp_path) - parquet_files(Path(uri))
    assert outside == set(), f"files written outside the table: {sorted(map(str, outside))}"
    ours = lake.read_pandas("t", settings=settings).sort_values("v")
    assert [None if pd.isna(p) else p for p in ours["p"]] == NASTY
    theirs = DeltaTable(uri).to_pyarrow_table().sort_by("v")
    assert theirs.column("p").to_pylist() == NASTY
    # the folders are named as deltalake's own writer names them
    ref = tmp_path / "reference"
    write_deltalake(str(ref), data, partition_by=["p"])
    assert {p.parent.name for p in parquet_files(Path(uri))} == {
        p.parent.name for p in parquet_files(ref)
    }
    # an overwrite of the escaped partitions finds and replaces their files
    again = pa.table({"p": NASTY[:3], "v": [100, 101, 102]})
    r = lake.write_table("t", again, partition_by=["p"], mode="overwrite_partitions",
                         settings=settings)  # fmt: skip
    assert (r.files_added, r.files_removed) == (3, 3)
    got = DeltaTable(uri).to_pyarrow_table().sort_by("v").to_pylist()
    assert got == [{"p": p, "v": i} for i, p in enumerate(NASTY) if i >= 3] + [
        {"p": p, "v": 100 + i} for i, p in enumerate(NASTY[:3])
    ]


# ------------------------------------------------------------------ 10: null merge keys


def test_merge_refuses_rows_with_a_null_key_naming_the_column(settings):
    first = pa.table({"k": [1, 2], "j": ["a", "b"], "v": [1.0, 2.0]})
    lake.merge_table("t", first, ["k", "j"], settings=settings)
    late = pa.table({"k": [2, 3, None], "j": ["b", None, "c"], "v": [20.0, 30.0, 40.0]})
    with pytest.raises(LakeError) as e:
        lake.merge_table("t", late, ["k", "j"], settings=settings)
    assert str(e.value) == (
        "merge into table 't' refused: 2 of 3 rows have a null key column ('k', 'j'); a null "
        "key never matches, so such rows are never merged (split them off with "
        "lake.null_key_rows)"
    )
    assert lake.table_version("t", settings) == 0
    good, bad = lake.null_key_rows(late, ["k", "j"])
    assert good.to_pylist() == [{"k": 2, "j": "b", "v": 20.0}]
    assert [(r["k"], r["j"], reason) for r, reason in bad] == [
        (3, None, "null key column 'j'"),
        (None, "c", "null key column 'k'"),
    ]
    for _ in range(2):  # a repeated merge of the good rows inserts nothing twice
        lake.merge_table("t", good, ["k", "j"], settings=settings)
    got = sorted(lake.table("t", settings).to_arrow().to_pylist(), key=lambda r: r["k"])
    assert got == [{"k": 1, "j": "a", "v": 1.0}, {"k": 2, "j": "b", "v": 20.0}]


def test_merge_into_a_new_table_refuses_null_keys_too(settings):
    with pytest.raises(
        LakeError,
        match=r"^merge into table 'n' refused: 1 of 2 rows have a null key column \('k'\);",
    ):
        lake.merge_table("n", pa.table({"k": [1, None]}), ["k"], settings=settings)
    assert lake.table("n", settings) is None


def test_replacing_a_month_of_a_table_by_day_replaces_every_day_under_it(settings):
    """A correction moves a row from day 5 to day 6: the month is replaced whole (the
    replace names year and month, a prefix of the partition columns), so the row is not
    left behind in day 5 as well."""
    parts = ["year", "month", "day"]
    rows = pd.DataFrame({"year": [2013] * 2 + [2013], "month": [1, 1, 2], "day": [5, 5, 1],
                         "k": [1, 2, 3]})  # fmt: skip
    lake.write_table("by_day", rows, partition_by=parts, settings=settings)
    fixed = pd.DataFrame({"year": [2013, 2013], "month": [1, 1], "day": [6, 5], "k": [1, 2]})
    lake.write_table("by_day", fixed, partition_by=parts, mode="overwrite_partitions",
                     replace_partitions=[{"year": 2013, "month": 1}], settings=settings)  # fmt: skip
    got = lake.read_pandas("by_day", settings=settings).sort_values("k")
    assert got[["k", "month", "day"]].values.tolist() == [[1, 1, 6], [2, 1, 5], [3, 2, 1]]
