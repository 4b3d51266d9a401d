"""Hostile review of the generic pipeline path (riverlake.analytics.declared and the
declaration model): each test names a defect and asserts the correct value. Pure
functions only, no Prefect, no lake."""

from __future__ import annotations

import copy
from types import SimpleNamespace as NS

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from riverlake.analytics import declared
from riverlake.analytics.contracts import split
from riverlake.errors import RiverlakeError
from riverlake.pipelines.model import Gold, Rule
from tests.unit.test_declarations import WEATHER, parse

pytestmark = pytest.mark.unit


def careful(csv: bytes, types: dict[str, str]):
    return declared.type_text(declared.read_csv_text(csv), types)


# --------------------------------------------------------------------------- typing


def test_int32_overflow_is_quarantined_not_wrapped():
    good, bad = careful(b"a\n3000000000\n1\n", {"a": "int32"})
    # got: good a == [-2147483648, 1], nothing quarantined
    assert good["a"].to_pylist() == [1]
    assert bad["failed_check"].tolist() == ["a:type"]


def test_int64_above_2_pow_53_keeps_its_exact_value():
    # the careful path (taken when any value of the file fails typing) goes through float
    csv = b"id,n\n1234567890123456789,1\n9007199254740993,oops\n"
    good, bad = careful(csv, {"id": "int64", "n": "int32"})
    assert len(bad) == 1
    assert good["id"].to_pylist() == [1234567890123456789]  # got 1234567890123456768


def test_string_na_text_is_the_same_on_the_fast_and_the_careful_path():
    """A string column's "NA" / "" is kept as text by the fast path but becomes null on
    the careful path, i.e. a value depends on whether another row of its file was bad."""
    types = {"a": "int32", "s": "string"}
    fast = declared.read_csv_typed(b"a,s\n1,NA\n2,\n", types)
    slow, bad = careful(b"a,s\n1,NA\n2,\n3,x\nbad,y\n", types)
    assert len(bad) == 1
    assert slow["s"].to_pylist()[:2] == fast["s"].to_pylist()  # got [None, None] vs ['NA', '']


def _weather_with_timestamps():
    body = copy.deepcopy(WEATHER)
    body["sources"][0]["schema"]["date"] = "timestamp"
    p = parse(body)
    return p.curated, p.curated_types(), dict(body["sources"][0]["schema"])


def test_a_timestamp_with_an_explicit_offset_is_not_shifted_by_the_event_time_zone():
    c, types, raw = _weather_with_timestamps()  # event_time zone America/Los_Angeles
    text = pd.DataFrame({"date": ["2013-01-31T23:30:00Z", "2013-01-31T23:30:00-08:00"],
                         "station": ["S1", "S2"], "temp_max": ["1", "2"],
                         "precipitation": ["0", "0"], "weather": ["sun", "sun"]})  # fmt: skip
    typed, _bad = declared.type_text(text, raw, {"date": c.event_time.time_zone})
    rows, _ = declared.curate(c, typed, types, {}, {})
    # got 2013-02-01 07:30Z and 2013-02-01 15:30Z: the zone is applied to absolute times
    assert rows["date"].tolist() == [pd.Timestamp("2013-01-31 23:30", tz="UTC"),
                                     pd.Timestamp("2013-02-01 07:30", tz="UTC")]  # fmt: skip


# --------------------------------------------------------------------------- dedupe


def test_dedupe_does_not_merge_distinct_rows_whose_key_has_nulls():
    df = pd.DataFrame({"k1": [1, 1, 2], "k2": pd.array([None, None, "a"], dtype="string"),
                       "v": [1, 2, 3]})  # fmt: skip
    out, merged = declared.dedupe_last(df, ["k1", "k2"])
    assert merged == 0 and len(out) == 3  # got merged == 1: a row lost as "merged"


def test_dedupe_uses_key_columns_made_by_a_step():
    """curate() dedupes only on the key columns present before the steps; a key column a
    function adds (accepted by the model) is silently dropped from the key."""
    curated = NS(event_time=None, partition_by=["year", "month"], key=["station", "reading"],
                 steps=[NS(function="f")])  # fmt: skip
    typed = pa.table({"year": pa.array([2013, 2013], pa.int32()),
                      "month": pa.array([1, 1], pa.int32()),
                      "station": ["S1", "S1"], "seq": [1, 2]})  # fmt: skip
    types = {"year": "int32", "month": "int32", "station": "string", "seq": "int64",
             "reading": "int64"}  # fmt: skip
    rows, merged = declared.curate(curated, typed, types, {},
                                   {"f": lambda df: df.assign(reading=df["seq"] * 10)})  # fmt: skip
    assert merged == 0 and sorted(rows["reading"].tolist()) == [10, 20]  # got one row, merged 1


# --------------------------------------------------------------------------- join


def test_join_text_key_matches_an_integer_key_of_the_other_table():
    left = pd.DataFrame({"code": pd.Series(["1", "2"], dtype=object)})  # to_frame's strings
    right = pd.DataFrame({"id": [1, 2], "name": ["a", "b"]})
    out = declared.join(left, right, {"code": "id"}, {"name": "name"})
    assert out["name"].tolist() == ["a", "b"]  # got [nan, nan]: no match, silently


def test_join_null_key_matches_nothing():
    left = pd.DataFrame({"code": pd.Series(["A", None], dtype=object), "v": [1, 2]})
    right = pd.DataFrame({"id": ["A", None], "name": ["a", "null-keyed row"]})
    out = declared.join(left, right, {"code": "id"}, {"name": "name"})
    assert out["name"].iloc[0] == "a" and pd.isna(out["name"].iloc[1])  # got 'null-keyed row'


def test_join_an_uncastable_key_of_the_other_table_does_not_fail_the_month():
    left = pd.DataFrame({"code": pd.array([1, 2], dtype="Int32")})
    right = pd.DataFrame({"id": ["1", "x"], "name": ["a", "b"]})
    out = declared.join(left, right, {"code": "id"}, {"name": "name"})  # got ArrowInvalid
    assert out["name"].iloc[0] == "a" and pd.isna(out["name"].iloc[1])


# --------------------------------------------------------------------------- conform


def _not_silently(fn, wrong):
    try:
        out = fn()
    except (TypeError, ValueError):
        return  # refusing is fine; changing the value is not
    assert out != wrong


def test_conform_does_not_truncate_a_non_integer_float_to_an_int_column():
    df = pd.DataFrame({"a": [1.5, 2.0]})
    _not_silently(lambda: declared.conform(df, {"a": "int32"})["a"].tolist(), [1, 2])


def test_conform_does_not_wrap_an_int64_into_int32():
    df = pd.DataFrame({"a": pd.array([3_000_000_000, 1], dtype="Int64")})
    _not_silently(lambda: declared.conform(df, {"a": "int32"})["a"].tolist(), [-1294967296, 1])


def test_conform_text_false_is_not_true():
    df = pd.DataFrame({"a": pd.Series(["false", "true"], dtype=object)})
    _not_silently(lambda: declared.conform(df, {"a": "bool"})["a"].tolist(), [True, True])


# --------------------------------------------------------------------------- contract


def _bool_rows(nullable: bool):
    raw = {"k": "int64", "b": "bool"}
    good, _ = careful(b"k,b\n1,true\n2,\n3,false\n", raw)
    curated = NS(event_time=None, partition_by=["year", "month"], key=["k"], steps=[])
    rows, _ = declared.curate(curated, good, raw, {}, {})
    return split(rows, declared.contract({"b": Rule(nullable=nullable)}, raw, ["k"], "t"))


def test_a_null_in_a_not_null_bool_quarantines_only_its_row():
    s = _bool_rows(nullable=False)
    assert len(s.good) == 2 and len(s.bad) == 1  # got 0 good: every row 'b:dtype'


def test_a_null_in_a_nullable_bool_passes_the_contract():
    s = _bool_rows(nullable=True)
    assert len(s.good) == 3 and len(s.bad) == 0  # got every row quarantined as 'b:dtype'


def test_isin_of_yaml_text_like_no_keeps_the_text():
    """``isin: [NO, SE]`` (country codes) is YAML for [False, 'SE']: the declaration is
    accepted and every 'NO' row is quarantined. Refuse it, or check it as text."""
    body = copy.deepcopy(WEATHER)
    body["curated"]["contract"]["weather"] = yaml.safe_load("{isin: [NO, sun, rain, fog]}")
    try:
        p = parse(body)
    except RiverlakeError:
        return
    types = p.curated_types()
    rule = p.curated.contract["weather"]
    df = pd.DataFrame({"weather": pd.array(["NO", "sun"], dtype="string")})
    s = split(df, declared.contract({"weather": rule}, types, [], "t"))
    assert len(s.good) == 2  # got 1: the 'NO' row is quarantined


# --------------------------------------------------------------------------- conditions


def test_a_null_never_satisfies_not_equal_or_not_in():
    df = pd.DataFrame({"x": [1.0, np.nan], "s": pd.array(["AA", None], dtype="string")})
    assert declared.condition(df, "x != 1").tolist() == [False, False]  # got [False, True]
    assert declared.condition(df, "s not in ['AA']").tolist() == [False, False]  # [False, True]
    assert declared.condition(df, "x not in [1]").tolist() == [False, False]  # got [False, True]


def test_condition_number_with_exponent_is_a_number():
    # YAML 1.1 reads 1e3 as text: accepted at load, TypeError when the gold is built
    assert declared.parse_condition("x < 1e3") == ("x", "<", 1000.0)


def test_condition_unquoted_no_is_not_false():
    try:
        _col, _op, value = declared.parse_condition("country == NO")
    except ValueError:
        return  # refusing unquoted text is fine
    assert value == "NO"  # got False


# --------------------------------------------------------------------------- gold


def test_quantile_without_keys_of_an_all_null_column_is_nan():
    gold = Gold(table="g", measures={"p": {"quantile": "x", "q": 0.5}})
    out = declared.gold_frame(pd.DataFrame({"x": [np.nan, np.nan]}), gold)  # got IndexError
    assert len(out) == 1 and np.isnan(out["p"].iloc[0])


def test_quantile_without_keys_of_an_empty_frame_is_nan():
    gold = Gold(table="g", measures={"p": {"quantile": "x", "q": 0.5}})
    out = declared.gold_frame(pd.DataFrame({"x": pd.Series([], dtype="float64")}), gold)
    assert len(out) == 1 and np.isnan(out["p"].iloc[0])  # got IndexError


def test_a_measure_named_like_a_key_is_refused_or_computed():
    body = copy.deepcopy(WEATHER)
    body["gold"][0]["measures"]["weather"] = {"count": "temp_max"}
    try:
        g = parse(body).gold[0]
    except RiverlakeError:
        return
    df = pd.DataFrame({"date": pd.to_datetime(["2012-01-01"]),
                       "weather": pd.array(["sun"], dtype="string"), "temp_max": [1.0]})  # fmt: skip
    declared.gold_frame(df, g)  # got ValueError: cannot insert weather, already exists


def test_a_month_bin_of_a_zoned_event_time_is_its_local_month():
    """The curated rows are partitioned by local date, but gold time bins are UTC: a
    23:30 Los Angeles event of 31 January (year=2013, month=1) is binned in February."""
    c, types, raw = _weather_with_timestamps()
    text = pd.DataFrame({"date": ["2013-01-31 23:30"], "station": ["S1"], "temp_max": ["1"],
                         "precipitation": ["0"], "weather": ["sun"]})  # fmt: skip
    typed, _ = declared.type_text(text, raw, {"date": c.event_time.time_zone})
    rows, _ = declared.curate(c, typed, types, {}, {})
    gold = Gold(table="g", by=["year", "month"], time_bin={"column": "date", "every": "month",
                                                            "name": "bin"},
                measures={"n": "count"})  # fmt: skip
    out = declared.gold_frame(rows, gold, c.event_time.time_zone)
    assert out["month"].iloc[0] == 1
    # got 2013-02-01 00:00 UTC (2013-01-31 16:00 local): a February bin in January's partition
    assert out["bin"].iloc[0].tz_convert("America/Los_Angeles") == pd.Timestamp(
        "2013-01-01", tz="America/Los_Angeles"
    )


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from([1, 2, 3, None]),
            st.sampled_from(["a", "b", None]),
            st.one_of(
                st.none(), st.integers(-5, 5).map(float), st.floats(-1e6, 1e6, allow_nan=False)
            ),
        ),
        max_size=60,
    ),
    q=st.sampled_from([0.0, 0.1, 0.5, 0.9, 0.99, 1.0]),
    parts=st.integers(1, 4),
)
def test_exact_quantiles_equal_pandas_for_any_groups_and_any_split(rows, q, parts):
    """A gold quantile per group (null keys a group of their own, values with ties and
    nulls) equals pandas' linear quantile of the group, whatever the split of the rows
    into partials."""
    df = pd.DataFrame(rows, columns=["k", "s", "x"]).astype(
        {"k": "Int64", "s": "string", "x": "float64"})  # fmt: skip
    gold = Gold(table="g", by=["k", "s"], measures={"p": {"quantile": "x", "q": q}})
    chunks = [df.iloc[i::parts] for i in range(parts)]
    got = declared.finish(declared.combine([declared.partials(c, gold) for c in chunks],
                                           gold), gold)  # fmt: skip
    want = df.groupby(["k", "s"], dropna=False)["x"].quantile(q).reset_index(name="p")
    assert len(got) == len(want)
    key = lambda f: [(str(a), str(b)) for a, b in zip(f["k"], f["s"], strict=True)]  # noqa: E731
    got_by = dict(zip(key(got), got["p"], strict=True))
    want_by = dict(zip(key(want), want["p"], strict=True))
    assert got_by.keys() == want_by.keys()
    for k, v in want_by.items():
        assert (np.isnan(v) and np.isnan(got_by[k])) or got_by[k] == pytest.approx(
            v, rel=1e-12, abs=1e-9
        ), k
