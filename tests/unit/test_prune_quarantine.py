"""Old quarantine rows leave through Delta: a delete commit, then a vacuum of the files the
log no longer names (`lake.prune_quarantine`, `riverlake prune-quarantine`). No S3
lifecycle rule expires anything inside a table (tests/deploy/test_terraform.py).

A real local Delta lake under ``tmp_path``, written the way the platform writes its two
kinds of quarantine: ``source_quarantine`` (merged, rows stamped ``quarantined_at``) and a
curated table's ``<table>_quarantine`` (partitions by year and month, each replaced whole
by the run that touches its month; the Delta log records when each file was written).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from riverlake import lake
from riverlake.errors import LakeError
from riverlake.flows.pipeline import QUARANTINE_PARTITION_BY, QUARANTINE_SCHEMA
from riverlake.settings import get_settings
from riverlake.sources.base import SOURCE_QUARANTINE_SCHEMA

pytestmark = pytest.mark.unit

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)


@pytest.fixture
def no_retention(settings, monkeypatch):
    """Settings that let a vacuum delete what the log removed at once (no reader runs)."""
    monkeypatch.setenv("RIVERLAKE_VACUUM_MIN_RETENTION_HOURS", "0")
    return get_settings()


def table_dir(name: str, settings) -> Path:
    return Path(lake.table_uri(name, settings))


def parquet_on_disk(name: str, settings) -> set[str]:
    root = table_dir(name, settings)
    return {p.relative_to(root).as_posix() for p in root.rglob("*.parquet")}


def live_files(name: str, settings) -> set[str]:
    return {f["path"] for f in lake.table(name, settings).files()}


def source_rows(rows: list[tuple[str, str, int]]) -> pa.Table:
    """source_quarantine rows: (unit, source, days since it was quarantined)."""
    rows = [{"source": source, "unit": unit, "reason": f"bad {unit}",
             "original": f"<{unit}>".encode(), "batch": f"b{i}",
             "quarantined_at": NOW - days * DAY}
            for i, (unit, source, days) in enumerate(rows)]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=SOURCE_QUARANTINE_SCHEMA)


def write_source_quarantine(rows: list[tuple[str, str, int]], settings) -> pa.Table:
    table = source_rows(rows)
    # as riverlake.sources.base.quarantine writes it
    lake.merge_table(lake.SOURCE_QUARANTINE, table, ["source", "unit"], partition_by=["source"],
                     settings=settings)  # fmt: skip
    return table


def files_of(name: str, settings, source: str) -> set[str]:
    return {f["path"] for f in lake.table(name, settings).files()
            if f["partition_values"]["source"] == source}  # fmt: skip


def sort_rows(table: pa.Table, key: str) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: r[key])


# ------------------------------------------------------------------ source_quarantine


def test_source_quarantine_loses_exactly_the_old_rows_and_their_files(no_retention):
    settings = no_retention
    written = write_source_quarantine([
        ("old-1", "mixed", 200), ("new-1", "mixed", 1), ("old-2", "mixed", 181),
        ("old-3", "old", 400), ("old-4", "old", 365),
        ("new-2", "new", 179), ("new-3", "new", 0),
    ], settings)  # fmt: skip
    name = lake.SOURCE_QUARANTINE
    mixed, old, new = (files_of(name, settings, s) for s in ("mixed", "old", "new"))
    uri = lake.table_uri(name, settings)
    # a file a writer has written but not committed yet: no prune may touch it
    (in_flight,) = [a["path"] for a in lake.write_fragments(written.slice(0, 1), uri,
                                                             ["source"], settings)]  # fmt: skip

    deleted = lake.prune_quarantine(name, timedelta(days=180), retention_hours=0,
                                    settings=settings)  # fmt: skip

    assert deleted == 4
    kept = lake.table(name, settings).to_arrow().select(SOURCE_QUARANTINE_SCHEMA.names)
    expected = written.filter(pa.array([u.startswith("new") for u in written["unit"].to_pylist()]))
    # value by value: sources, original bytes, reasons, batches, times
    assert sort_rows(kept, "unit") == sort_rows(expected, "unit")
    # the files that held old rows are gone from the disk (the mixed partition's rewritten,
    # the old one's removed); the new partition's file is untouched; what is left on the
    # disk is what the log names, and the uncommitted file
    on_disk = parquet_on_disk(name, settings)
    assert mixed and old and not (mixed | old) & on_disk
    assert new <= on_disk and new <= live_files(name, settings)
    assert on_disk == live_files(name, settings) | {in_flight}


def test_nothing_old_is_no_commit(no_retention):
    write_source_quarantine([("new-1", "a", 1), ("new-2", "b", 2)], no_retention)
    version = lake.table_version(lake.SOURCE_QUARANTINE, no_retention)
    assert lake.prune_quarantine(lake.SOURCE_QUARANTINE, timedelta(days=30), retention_hours=0,
                                 settings=no_retention) == 0  # fmt: skip
    assert lake.table_version(lake.SOURCE_QUARANTINE, no_retention) == version
    assert lake.table(lake.SOURCE_QUARANTINE, no_retention).rows() == 2


def test_a_retention_keeps_the_files_for_readers_and_below_the_minimum_is_refused(settings):
    write_source_quarantine([("old-1", "a", 300), ("new-1", "a", 1)], settings)
    before = parquet_on_disk(lake.SOURCE_QUARANTINE, settings)
    with pytest.raises(LakeError, match=r"a retention of 0 hours is below the minimum of 1"):
        lake.prune_quarantine(lake.SOURCE_QUARANTINE, timedelta(days=30), retention_hours=0,
                              settings=settings)  # fmt: skip
    assert lake.table(lake.SOURCE_QUARANTINE, settings).rows() == 2  # refused before deleting
    # the default retention (RIVERLAKE_VACUUM_MIN_RETENTION_HOURS): the rows go now, their
    # files with a later prune's vacuum, once no reader of an older version may need them
    assert lake.prune_quarantine(lake.SOURCE_QUARANTINE, timedelta(days=30),
                                 settings=settings) == 1  # fmt: skip
    assert lake.table(lake.SOURCE_QUARANTINE, settings).to_arrow()["unit"].to_pylist() == ["new-1"]
    assert before <= parquet_on_disk(lake.SOURCE_QUARANTINE, settings)


def test_only_quarantine_tables_are_pruned(settings):
    lake.write_table("flights", pa.table({"k": [1]}), settings=settings)
    with pytest.raises(LakeError, match="'flights' is not a quarantine table"):
        lake.prune_quarantine("flights", timedelta(days=1), settings=settings)
    assert lake.table("flights", settings).rows() == 1
    assert lake.prune_quarantine("missing_quarantine", timedelta(days=1), settings=settings) == 0


# ------------------------------------------------------------------ a curated table's quarantine


def curated_rows(month: int, n: int, tag: str) -> pa.Table:
    rows = [{"year": 2013, "month": month, "source_file": f"{tag}.csv", "failed_check": "x:min",
             "record": f'{{"i": {i}, "tag": "{tag}"}}'} for i in range(n)]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)


def commit_curated(table: pa.Table, written_at: datetime, settings, mode="overwrite_partitions"):
    """As the flow's commit-curated task commits a quarantine, its files written at
    ``written_at`` (the time the Delta log records for each file)."""
    uri = lake.table_uri("flights_quarantine", settings)
    adds = lake.write_fragments(table, uri, QUARANTINE_PARTITION_BY, settings)
    for a in adds:
        a["modification_time"] = int(written_at.timestamp() * 1000)
    lake.commit(uri, adds, QUARANTINE_SCHEMA, partition_by=QUARANTINE_PARTITION_BY, mode=mode,
                settings=settings)  # fmt: skip


def test_a_curated_quarantine_loses_the_months_quarantined_before_the_cutoff(no_retention):
    settings = no_retention
    old_jan = curated_rows(1, 3, "jan")
    old_feb, new_feb = curated_rows(2, 2, "feb-old"), curated_rows(2, 1, "feb-new")
    new_mar = curated_rows(3, 2, "mar")
    commit_curated(pa.concat_tables([old_jan, old_feb]), NOW - 200 * DAY, settings)
    commit_curated(new_feb, NOW - DAY, settings, mode="append")  # a month with both ages
    commit_curated(new_mar, NOW - 10 * DAY, settings)
    jan_files = {f["path"] for f in lake.table("flights_quarantine", settings).files()
                 if f["partition_values"]["month"] == "1"}  # fmt: skip

    deleted = lake.prune_quarantine("flights_quarantine", timedelta(days=180), retention_hours=0,
                                    settings=settings)  # fmt: skip

    assert deleted == 3  # January; February keeps its old rows while it has a newer file
    kept = lake.table("flights_quarantine", settings).to_arrow().select(QUARANTINE_SCHEMA.names)
    expected = pa.concat_tables([old_feb, new_feb, new_mar])
    assert sort_rows(kept, "record") == sort_rows(expected, "record")  # value by value
    on_disk = parquet_on_disk("flights_quarantine", settings)
    assert on_disk == live_files("flights_quarantine", settings)
    assert jan_files and not jan_files & on_disk
    assert not list((table_dir("flights_quarantine", settings) / "year=2013" / "month=1")
                    .glob("*.parquet"))  # fmt: skip


# ------------------------------------------------------------------ the command


def test_the_command_prunes_every_declared_quarantine(no_retention):
    from riverlake.ops.cli import app

    settings = no_retention
    write_source_quarantine([("old-1", "a", 100), ("new-1", "b", 1)], settings)
    commit_curated(curated_rows(1, 4, "jan"), NOW - 100 * DAY, settings)
    commit_curated(curated_rows(2, 1, "feb"), NOW - DAY, settings)
    runner = CliRunner()
    res = runner.invoke(app, ["prune-quarantine", "--older-than-days", "30",
                              "--retention-hours", "0"])  # fmt: skip
    assert res.exit_code == 0, res.output
    # every declared curated table's quarantine (flights_quarantine exists; the others of
    # the declarations not yet), then source_quarantine
    assert res.stdout == "flights_quarantine: 4 rows deleted\nsource_quarantine: 1 rows deleted\n"
    assert re.search(r"pruning flights_quarantine: done in", res.stderr), res.stderr
    assert lake.table("flights_quarantine", settings).rows() == 1
    assert lake.table(lake.SOURCE_QUARANTINE, settings).rows() == 1
    # one table; a table that is no declared quarantine is refused with one line
    res = runner.invoke(app, ["prune-quarantine", "--older-than-days", "1", "--table",
                              "source_quarantine", "--retention-hours", "0"])  # fmt: skip
    assert res.exit_code == 0 and res.stdout == "source_quarantine: 1 rows deleted\n"
    res = runner.invoke(app, ["prune-quarantine", "--older-than-days", "1", "--table", "flights"])
    assert res.exit_code == 1
    assert res.stderr.startswith("riverlake: error: flights is not a declared quarantine table")
    assert lake.table("flights_quarantine", settings).rows() == 1
