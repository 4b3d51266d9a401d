"""A written file's Delta statistics come from what the Parquet writer recorded
(lake.write._file_stats): the same figures as a pass over the rows (pyarrow's min_max and
null counts, the oracle here), and no bounds where the file has none for a column."""

from __future__ import annotations

import io
import json
import math
from datetime import UTC, date, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from riverlake import lake
from riverlake.lake.write import _file_stats, _has_min_max, _stat_value

pytestmark = pytest.mark.unit


def oracle(table: pa.Table) -> dict:
    """The statistics a pass over the rows gives (the former computation)."""
    mins, maxs = {}, {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        if _has_min_max(col.type) and col.null_count < len(col):
            mm = pc.min_max(col).as_py()
            if not (isinstance(mm["min"], float) and math.isnan(mm["min"])):
                mins[name], maxs[name] = _stat_value(mm["min"]), _stat_value(mm["max"])
    return {"numRecords": table.num_rows, "minValues": mins, "maxValues": maxs,
            "nullCount": {n: c.null_count for n, c in zip(table.column_names, table.columns,
                                                          strict=True)}}  # fmt: skip


def written_stats(table: pa.Table, row_group_size: int | None = None) -> dict:
    collected: list = []
    pq.write_table(table, io.BytesIO(), row_group_size=row_group_size,
                   metadata_collector=collected)  # fmt: skip
    return json.loads(_file_stats(table, collected[0]))


def test_every_type_as_a_pass_over_the_rows_gives_it():
    t = pa.table({
        "i": pa.array([3, None, -7, 12], pa.int32()),
        "f": pa.array([1.5, float("nan"), None, -2.25]),
        "s": pa.array(["b", "", None, "a"]),
        "d": pa.array([date(2013, 1, 2), None, date(2012, 5, 1), date(2013, 12, 31)]),
        "ts": pa.array([datetime(2013, 1, 1, 5, tzinfo=UTC), None,
                        datetime(2014, 1, 1, tzinfo=UTC), None], pa.timestamp("us", "UTC")),
        "b": pa.array([True, None, False, True]),
        "none": pa.array([None] * 4, pa.int64()),
    })  # fmt: skip
    for groups in (None, 1, 3):  # one row group, or the bounds combined across several
        assert written_stats(t, groups) == oracle(t), groups


def test_a_column_of_nan_only_gets_no_bounds_not_nan():
    t = pa.table({"g": pa.array([float("nan"), None, float("nan")])})
    stats = written_stats(t)
    assert stats["minValues"] == {} and stats["maxValues"] == {}
    assert stats["nullCount"] == {"g": 1}


def test_text_too_long_to_bound_leaves_its_column_unbounded():
    # the writer keeps no bounds of a row group holding a 5,000-character value: the
    # bounds of the other row group ('b'-'c') would hide the 'a', so the column gets none
    t = pa.table({"s": pa.array(["a", "x" * 5000, "b", "c"]), "i": pa.array([4, 3, 2, 1])})
    for groups in (None, 2):
        stats = written_stats(t, groups)
        assert "s" not in stats["minValues"] and "s" not in stats["maxValues"]
        assert (stats["minValues"]["i"], stats["maxValues"]["i"]) == (1, 4)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(-(2**40), 2**40)),
            st.one_of(st.none(), st.floats(allow_nan=False, width=64)),
            st.one_of(st.none(), st.text(max_size=12)),
            st.one_of(st.none(), st.dates()),
        ),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([None, 1, 7]),
)
def test_any_rows_as_a_pass_over_the_rows_gives_them(rows, groups):
    t = pa.table({
        "i": pa.array([r[0] for r in rows], pa.int64()),
        "f": pa.array([r[1] for r in rows], pa.float64()),
        "s": pa.array([r[2] for r in rows], pa.string()),
        "d": pa.array([r[3] for r in rows], pa.date32()),
    })  # fmt: skip
    assert written_stats(t, groups) == oracle(t)


def test_write_fragments_records_the_statistics_of_each_partition(settings_local):
    t = pa.table({"month": pa.array([1, 1, 2], pa.int32()), "x": pa.array([5, None, 9])})
    adds = lake.write_fragments(t, lake.table_uri("s", settings_local), ["month"],
                                settings_local)  # fmt: skip
    got = {a["partition_values"]["month"]: json.loads(a["stats"]) for a in adds}
    assert got["1"] == {"numRecords": 2, "minValues": {"x": 5}, "maxValues": {"x": 5},
                        "nullCount": {"x": 1}}  # fmt: skip
    assert got["2"] == {"numRecords": 1, "minValues": {"x": 9}, "maxValues": {"x": 9},
                        "nullCount": {"x": 0}}  # fmt: skip


@pytest.fixture
def settings_local(tmp_path, monkeypatch):
    from riverlake.settings import get_settings

    monkeypatch.setenv("RIVERLAKE_LAKE_URL", str(tmp_path / "lake"))
    return get_settings()


def test_a_column_named_like_a_struct_field_gets_its_own_bounds():
    # "s.x" and field x of struct s share the Parquet path "s.x": the column's bounds
    # must be its own (100-200), not the field's (1-2), or readers would skip its file
    t = pa.table({"s.x": [100, 200], "s": pa.array([{"x": 1}, {"x": 2}])})
    stats = written_stats(t)
    assert (stats["minValues"]["s.x"], stats["maxValues"]["s.x"]) == (100, 200)
    assert "s" not in stats["minValues"] and stats["nullCount"] == {"s.x": 0, "s": 0}


def test_every_row_lands_in_exactly_one_partition_file(settings_local):
    """Rows went to each partition whose key compared equal: -0.0 and 0.0 (equal, two
    keys) were each written twice, and NaN (equal to nothing) was lost."""
    nan = float("nan")
    t = pa.table({"p": pa.array([0.0, -0.0, nan, 1.0, nan, None]), "x": [1, 2, 3, 4, 5, 6]})
    adds = lake.write_fragments(t, lake.table_uri("f", settings_local), ["p"], settings_local)
    assert sorted(a["rows"] for a in adds) == [1, 1, 1, 1, 2]
    assert sum(a["rows"] for a in adds) == t.num_rows
    written = pa.concat_tables(
        pq.read_table(f"{lake.table_uri('f', settings_local)}/{a['path']}") for a in adds
    )
    assert sorted(written["x"].to_pylist()) == [1, 2, 3, 4, 5, 6]
