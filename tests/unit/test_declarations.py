"""Pipeline declarations: what a mistake in one says (one line naming the pipeline and the
field, nothing written), and the declared data logic (typing, dedupe, joins, contracts,
gold measures as mergeable partials) checked against independent pandas."""

from __future__ import annotations

import copy
import itertools
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from riverlake import pipelines
from riverlake.analytics import declared
from riverlake.errors import RiverlakeError
from riverlake.pipelines.model import Gold
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

#: A user's declaration: daily weather records from a folder of CSVs.
WEATHER = {
    "description": "daily weather records",
    "sources": [
        {"name": "weather_files", "kind": "files", "url": "/data/*.csv", "format": "csv",
         "sink": "landing", "table": "daily_weather",
         "schema": {"date": "date", "station": "string", "temp_max": "float64",
                    "precipitation": "float64", "weather": "string"}},
    ],
    "curated": {
        "table": "daily_weather",
        "key": ["date", "station"],
        "event_time": {"column": "date", "time_zone": "America/Los_Angeles"},
        "contract": {"temp_max": {"min": -40, "max": 60},
                     "weather": {"nullable": False, "isin": ["sun", "rain", "fog"]}},
    },
    "gold": [
        {"table": "weather_monthly", "time_bin": {"column": "date", "every": "month",
                                                   "name": "month"},
         "by": ["weather"],
         "measures": {"days": "count", "mean_temp_max": {"mean": "temp_max"},
                      "p90_temp_max": {"quantile": "temp_max", "q": 0.9},
                      "rainy": {"rate": "weather == 'rain'"}},
         "chart": {"x": "month", "y": "mean_temp_max", "by": "weather"}},
    ],
}  # fmt: skip


def parse(body: dict, name: str = "weather") -> pipelines.Pipeline:
    found = pipelines.parse({name: body}, "pipelines/weather.yaml")
    pipelines.check_references(found, dict.fromkeys(found, "pipelines/weather.yaml"))
    return found[name]


def broken(edit) -> str:
    body = copy.deepcopy(WEATHER)
    edit(body)
    with pytest.raises(RiverlakeError) as e:
        parse(body)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("pipeline 'weather' in pipelines/weather.yaml: ")
    return msg.split(": ", 1)[1]


def test_a_user_declaration_parses_with_derived_partitions():
    p = parse(WEATHER)
    assert p.curated_types() == {
        "year": "int32",
        "month": "int32",
        **WEATHER["sources"][0]["schema"],
    }
    assert p.gold_partition_by(p.gold[0]) == []  # by month bin and weather: one table
    parts = pipelines.model.partials_table(p.gold[0])
    assert (
        parts.startswith("weather_monthly__partials_")
        and len(parts) == len("weather_monthly__partials_") + 8
    )
    assert p.tables() == {"daily_weather", "daily_weather_quarantine", "weather_monthly",
                          parts, f"{parts}__counts__p90_temp_max"}  # fmt: skip


def test_the_shipped_flights_declaration():
    p = pipelines.pipeline("flights")
    assert p.curated.key == [
        "year",
        "month",
        "day",
        "carrier",
        "flight",
        "origin",
        "sched_dep_time",
    ]
    assert [p.gold_partition_by(g) for g in p.gold] == [["year", "month"], ["year"], ["year"],
                                                        ["year"], ["year"]]  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda b: b["curated"].update(key=["date", "stations"]),
         "curated.key: 'stations' is not a column of the curated table"),
        (lambda b: b["curated"].update(steps=[{"join": "stations", "keys": {"station": "id"},
                                               "columns": ["name"]}]),
         "curated.steps.0.join: unknown table 'stations' (no declared pipeline writes it)"),
        (lambda b: b["curated"].update(steps=[{"function": "my_transforms:clean"}]),
         "curated.steps.0.function: 'my_transforms:clean' does not import: "
         "ModuleNotFoundError: No module named 'my_transforms'"),
        (lambda b: b["curated"].update(steps=[{"function": "riverlake.analytics.declared:nope"}]),
         "curated.steps.0.function: 'riverlake.analytics.declared:nope' does not import: "
         "riverlake.analytics.declared has no 'nope'"),
        (lambda b: b["gold"][0]["measures"].update(bad={"mean": "weather"}),
         "gold.0 (weather_monthly).measures.bad: mean of 'weather' needs a number, not string"),
        (lambda b: b["gold"][0]["measures"].update(bad={"sum": "wind"}),
         "gold.0 (weather_monthly).measures.bad: 'wind' is not a column of daily_weather"),
        (lambda b: b["curated"].update(partition_by=["station"]),
         "curated: partition_by must start with year, month (the landing months a run rebuilds)"),
        (lambda b: b["curated"]["contract"].update(station={"min": 1}),
         "curated.contract.station: a range needs a number, not string"),
        (lambda b: b["curated"].update(event_time={"column": "date", "time_zone": "Mars/Olympus"}),
         "curated.event_time.time_zone: unknown time zone 'Mars/Olympus'"),
        (lambda b: b["gold"][0]["measures"].update(bad={"quantile": "temp_max"}),
         "gold.0.measures.bad: a quantile measure needs q (0-1), and only it"),
        (lambda b: b["gold"][0]["measures"].update(bad={"rate": "temp_max >> 3"}),
         "gold.0 (weather_monthly).measures.bad: condition 'temp_max >> 3': '> 3' is not a value"),
        (lambda b: b["curated"].update(steps=[{"joins": "x"}]),
         "curated.steps.0: a step is a join (join: table) or a function"),
        (lambda b: b["gold"].append({"table": "wet", "function": "riverlake.analytics.flights:"
                                     "delay_by_weather", "columns": ["date", "rain"]}),
         "gold.1 (wet).columns: 'rain' is not a column of daily_weather"),
        (lambda b: b["gold"][0].update(columns=["date"]),
         "gold.0: columns names what a function reads (a table with measures reads its own)"),
    ],
)  # fmt: skip
def test_a_mistake_is_one_line_naming_the_pipeline_and_the_field(edit, expected):
    assert broken(edit).startswith(expected)


def test_an_invalid_declaration_writes_nothing(tmp_path):
    """`riverlake run` refuses a bad declaration before it starts anything: one line,
    exit 1, no lake folder, no stack."""
    body = copy.deepcopy(WEATHER)
    body["gold"][0]["measures"]["bad"] = {"sum": "weather"}
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "weather.yaml").write_text(yaml.safe_dump({"weather": body}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVERLAKE_")}
    env |= {"RIVERLAKE_LAKE_URL": str(tmp_path / "lake"), "RIVERLAKE_HOME": str(tmp_path / "home")}
    res = subprocess.run([sys.executable, "-m", "riverlake.ops.cli", "run", "weather"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.strip() == (
        "riverlake: error: pipeline 'weather' in pipelines/weather.yaml: "
        "gold.0 (weather_monthly).measures.bad: sum of 'weather' needs a number, not string"
    )
    assert not (tmp_path / "lake").exists() and not (tmp_path / "home").exists()


def test_two_pipelines_writing_one_table_are_refused():
    found = pipelines.parse({"a": WEATHER, "b": WEATHER}, "p.yaml")
    with pytest.raises(
        RiverlakeError,
        match=r"pipeline 'b' in p.yaml: table 'daily_weather' is already written by pipeline 'a'",
    ):
        pipelines.check_references(found, dict.fromkeys(found, "p.yaml"))


# --------------------------------------------------------------------------- the data logic

CSV = b"""date,station,temp_max,precipitation,weather
2012-01-01,S1,12.8,0.0,rain
2012-01-01,S2,oops,0.0,sun
2012-01-02,S1,10.6,10.9,rain
2012-13-40,S1,11.7,0.8,rain
2012-01-03,S1,,0.3,
"""


def test_typing_quarantines_a_bad_value_and_keeps_the_rest():
    types = WEATHER["sources"][0]["schema"]
    with pytest.raises(Exception):  # noqa: B017 - the fast path refuses the file
        declared.read_csv_typed(CSV, types)
    good, bad = declared.type_text(declared.read_csv_text(CSV), types)
    assert good.num_rows == 3 and len(bad) == 2
    assert bad["failed_check"].tolist() == ["temp_max:type", "date:type"]
    assert good["temp_max"].to_pylist() == [12.8, 10.6, None]
    assert [str(d) for d in good["date"].to_pylist()] == ["2012-01-01", "2012-01-02", "2012-01-03"]


def test_join_keeps_every_row_and_renames():
    left = pd.DataFrame({"station": pd.array(["S1", "S2", "S3"], dtype="string"), "v": [1, 2, 3]})
    right = pd.DataFrame({"id": ["S1", "S1", "S2"], "name": ["one", "uno", "two"], "v": [9, 9, 9]})
    out = declared.join(left, right, {"station": "id"}, {"name": "station_name", "v": "v"})
    assert out["station_name"].tolist()[:2] == ["one", "two"] and pd.isna(out["station_name"][2])
    assert out["v"].tolist()[:2] == [9, 9] and len(out) == 3  # brought v replaces the clash


def test_dedupe_keeps_the_last_landed_record():
    df = pd.DataFrame({"k": [1, 2, 1], "v": ["a", "b", "c"]})
    out, merged = declared.dedupe_last(df, ["k"])
    assert merged == 1 and out.sort_values("k")["v"].tolist() == ["c", "b"]


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "date": pd.to_datetime("2012-01-01") + pd.to_timedelta(rng.integers(0, 120, n), unit="D"),
        "weather": pd.array(rng.choice(["sun", "rain", "fog"], n), dtype="string"),
        "temp_max": np.where(rng.random(n) < 0.1, np.nan, rng.integers(-5, 30, n).astype(float)),
    })  # fmt: skip


def pandas_truth(df: pd.DataFrame) -> pd.DataFrame:
    """The weather_monthly gold table computed independently, with plain pandas."""
    month = df["date"].dt.to_period("M").dt.start_time
    g = df.assign(month=month).groupby(["month", "weather"], observed=True)
    return pd.DataFrame({
        "days": g.size(),
        "mean_temp_max": g["temp_max"].mean(),
        "p90_temp_max": g["temp_max"].quantile(0.9),
        "rainy": g["weather"].apply(lambda s: float((s == "rain").mean())),
    }).reset_index()  # fmt: skip


def test_gold_measures_match_pandas():
    gold = parse(WEATHER).gold[0]
    df = frame(500, 1)
    got = declared.gold_frame(df, gold)
    want = pandas_truth(df)
    assert got[["month", "weather"]].astype(str).values.tolist() == \
        want[["month", "weather"]].astype(str).values.tolist()  # fmt: skip
    for col in ("days", "mean_temp_max", "p90_temp_max", "rainy"):
        np.testing.assert_allclose(got[col].astype(float), want[col].astype(float), rtol=1e-12)


@hsettings(max_examples=30, deadline=None)
@given(st.integers(1, 300), st.lists(st.integers(1, 299), max_size=4), st.integers(0, 10**6))
def test_partials_of_any_split_combine_to_the_whole(n, cuts, seed):
    """The mergeable states: the gold of a frame equals the combination of the partials
    of any split of its rows (what a dask frame's partitions are)."""
    gold = parse(WEATHER).gold[0]
    df = frame(n, seed)
    bounds = sorted({0, n, *[c for c in cuts if c < n]})
    parts = [declared.partials(df.iloc[a:b], gold) for a, b in itertools.pairwise(bounds)]
    whole = declared.gold_frame(df, gold)
    split = declared.finish(declared.combine(parts, gold), gold)
    pd.testing.assert_frame_equal(whole, split, check_dtype=False, rtol=1e-12)


def test_gold_on_dask_equals_pandas():
    import dask.dataframe as dd

    gold = parse(WEATHER).gold[0]
    df = frame(400, 7)
    got = declared.gold_frame(dd.from_pandas(df, npartitions=4), gold)
    pd.testing.assert_frame_equal(got, declared.gold_frame(df, gold), rtol=1e-12)


def test_gold_on_dask_combines_a_few_partials_at_a_time(monkeypatch):
    """Many files: their partials are combined ``COMBINE_FAN_IN`` at a time, in a tree,
    never all at once (that held every file's value counts: 3 GB at 60M rows), and the
    table is the same as pandas' whole."""
    import dask.dataframe as dd

    gold = parse(WEATHER).gold[0]
    df = frame(900, 11)
    sizes = []
    real = declared.combine

    def spy(parts, g):
        sizes.append(len(parts))
        return real(parts, g)

    monkeypatch.setattr(declared, "combine", spy)
    got = declared.gold_frame(dd.from_pandas(df, npartitions=37), gold)
    monkeypatch.undo()
    pd.testing.assert_frame_equal(got, declared.gold_frame(df, gold), rtol=1e-12)
    assert max(sizes) == declared.COMBINE_FAN_IN and sum(sizes) == 37 + 5 and len(sizes) == 6


def test_gold_schema_types():
    p = parse(WEATHER)
    schema = declared.gold_schema(p.gold[0], p.curated_types())
    assert [(f.name, str(f.type)) for f in schema] == [
        ("month", "date32[day]"), ("weather", "string"), ("days", "int64"),
        ("mean_temp_max", "double"), ("p90_temp_max", "double"), ("rainy", "double")]  # fmt: skip


def test_time_bins():
    s = pd.Series(pd.to_datetime(["2012-03-07 13:45", "2012-03-11 00:10"]))
    assert declared.time_bin(s, "week").astype(str).tolist() == ["2012-03-05", "2012-03-05"]
    assert declared.time_bin(s, "month").astype(str).tolist() == ["2012-03-01", "2012-03-01"]
    assert declared.time_bin(s, "hour").astype(str).tolist() == ["2012-03-07 13:00:00",
                                                                 "2012-03-11 00:00:00"]  # fmt: skip


def test_the_gold_step_reads_only_the_columns_its_tables_use():
    """A gold function that names its columns is given only those (and the partition
    columns); one that does not is given every curated column."""
    from flows import pipeline as flow

    p = pipelines.pipeline("flights")
    types, parts = p.curated_types(), p.curated.partition_by
    need = flow._columns_needed(p.gold, types, parts)
    functions = [g for g in p.gold if g.function is not None]
    assert functions and all(g.columns for g in functions)
    assert {c for g in functions for c in g.columns} <= set(need)
    unread = {"tailnum", "manufacturer", "seats", "plane_year", "dest_name", "origin_name",
              "sched_arr_time", "air_time"}  # fmt: skip
    assert unread <= set(types) and not unread & set(need)
    assert need == [c for c in types if c in need]  # in the table's order
    undeclared = functions[0].model_copy(update={"columns": None})
    assert flow._columns_needed([undeclared], types, parts) == list(types)
    assert flow._columns_needed([functions[0]], types, parts) == [
        c for c in types if c in {*parts, *functions[0].columns}
    ]


def test_the_readme_declaration_is_valid():
    """Every declaration shown in the README parses."""
    text = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    docs = [yaml.safe_load(b) for b in blocks]
    declared_docs = [d for d in docs if isinstance(d, dict) and any(
        isinstance(v, dict) and "sources" in v for v in d.values())]  # fmt: skip
    for d in declared_docs:
        pipelines.parse(d, "README.md")
    assert isinstance(Gold, type)


def test_event_time_in_a_zone_is_stored_in_utc_and_partitioned_by_local_date():
    """A naive local time: 23:30 in Los Angeles on 31 January is 07:30 UTC on 1 February,
    stored in UTC, partitioned in January (the local date); DST gaps shift forward."""
    body = copy.deepcopy(WEATHER)
    body["sources"][0]["schema"]["date"] = "timestamp"
    c = parse(body).curated
    types = parse(body).curated_types()
    text = pd.DataFrame({"date": ["2013-01-31 23:30", "2013-03-10 02:30"], "station": ["S1"] * 2,
                         "temp_max": ["1", "2"], "precipitation": ["0", "0"],
                         "weather": ["sun", "sun"]})  # fmt: skip
    zones = {"date": c.event_time.time_zone}
    typed, bad = declared.type_text(text, dict(body["sources"][0]["schema"]), zones)
    assert len(bad) == 0
    rows, merged = declared.curate(c, typed, types, {}, {})
    assert merged == 0
    assert rows["date"].tolist() == [pd.Timestamp("2013-02-01 07:30", tz="UTC"),
                                     pd.Timestamp("2013-03-10 10:00", tz="UTC")]  # fmt: skip
    assert rows[["year", "month"]].values.tolist() == [[2013, 1], [2013, 3]]
