"""`riverlake new`: a declaration proposed from a sample file validates, and says what
it inferred: types, key, event time, contract, a monthly gold table."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from riverlake import pipelines as declared
from riverlake.errors import RiverlakeError
from riverlake.ops.cli import app
from riverlake.pipelines import infer
from riverlake.settings import get_settings

pytestmark = pytest.mark.unit

SEATTLE = Path(__file__).resolve().parents[2] / "examples/seattle_weather/seattle-weather.csv"


def _text(**cols: list[str]) -> pd.DataFrame:
    """A sample as `riverlake new` reads a CSV: every value text."""
    return pd.DataFrame(cols, dtype=object)


def _valid(name: str, body: dict) -> declared.Pipeline:
    return declared.parse({name: body}, "x")[name]


def test_types_are_what_the_text_parses_as():
    df = _text(
        n=["1", "-2", "30"],
        x=["1.5", "2", ""],
        ok=["true", "False", "TRUE"],
        day=["2012-01-01", "2012-01-02", "NA"],
        at=["2012-01-01T05:00:00Z", "2012-01-01 06:30", "2012-01-02T00:00:00+01:00"],
        zip=["02134", "10001", "94105"],  # a leading zero: a code, text
        slash=["2012/01/01", "2012/01/02", "2012/01/03"],  # not ISO: text
        word=["a", "b", "c"],
        empty=["", "", "null"],
    )
    assert infer.infer_types(df) == {
        "n": "int64", "x": "float64", "ok": "bool", "day": "date", "at": "timestamp",
        "zip": "string", "slash": "string", "word": "string", "empty": "string",
    }  # fmt: skip


def test_types_of_typed_frames_and_arrow_tables():
    df = pd.DataFrame({
        "i": pd.array([1, None, 3], dtype="Int64"), "f": [0.5, None, 2.0],
        "b": [True, False, True], "t": pd.to_datetime(["2020-01-01", "2020-01-02", None]),
        "s": ["x", None, "y"],
    })  # fmt: skip
    assert infer.infer_types(df) == {
        "i": "int64",
        "f": "float64",
        "b": "bool",
        "t": "timestamp",
        "s": "string",
    }
    table = pa.table({
        "d": pa.array([dt.date(2020, 1, 1), dt.date(2020, 1, 2)], pa.date32()),
        "ts": pa.array([dt.datetime(2020, 1, 1, 5), None], pa.timestamp("us", tz="UTC")),
        "n": pa.array([1, 2], pa.int32()),
    })  # fmt: skip
    assert infer.infer_types(table) == {"d": "date", "ts": "timestamp", "n": "int64"}
    # JSON lines read as objects: Python values
    objs = pd.DataFrame({"n": [1, 2], "x": [1, 2.5], "s": ["2020-01-01", "2020-02-01"]},
                        dtype=object)  # fmt: skip
    assert infer.infer_types(objs) == {"n": "int64", "x": "float64", "s": "date"}


def test_the_key_is_a_unique_time_column_first_then_an_id_then_a_pair():
    days = ["2020-01-01", "2020-01-02", "2020-01-03"]
    body = infer.propose("t", _text(name=["a", "b", "c"], day=days), "/d/*.csv", "csv")
    assert body["curated"]["key"] == ["day"]  # a time column before the first unique one
    df = _text(name=["a", "b", "c"], station_id=["1", "2", "3"], day=["2020-01-01"] * 3)
    assert infer.propose("t", df, "/d/*.csv", "csv")["curated"]["key"] == ["station_id"]
    # a reading per station and day: the pair
    df = _text(day=["2020-01-01", "2020-01-01", "2020-01-02", "2020-01-02"],
               station=["A", "B", "A", "B"], temp=["1.5", "2.5", "3.5", "4.5"])  # fmt: skip
    body = infer.propose("t", df, "/d/*.csv", "csv")
    assert body["curated"]["key"] == ["day", "station"]  # not the float column, unique alone
    assert "check" not in body["description"]
    _valid("t", body)


def test_without_a_unique_column_or_pair_the_key_is_every_column_to_check():
    df = _text(day=["2020-01-01"] * 4, a=["x", "x", "y", "y"], b=["1", "1", "1", "1"],
               c=["p", "q", "p", "q"])  # fmt: skip
    df = pd.concat([df, df.iloc[[0]]], ignore_index=True)  # a duplicate row
    body = infer.propose("t", df, "/d/*.csv", "csv")
    assert body["curated"]["key"] == ["day", "a", "b", "c"]
    assert "the key is every column, check it" in body["description"]
    _valid("t", body)


def test_the_contract_is_what_was_observed():
    df = _text(
        day=["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-04"],
        temp=["-1.5", "2.25", "30.1", ""],
        count=["3", "7", "7", "12"],
        kind=["rain", "sun", "sun", "fog"],  # a category: repeated, few values
        note=["a", "b", "c", "d"],  # free text: no repeat
        flag=["true", "false", "true", "true"],
    )
    body = infer.propose("t", df, "/d/*.csv", "csv")
    assert body["curated"]["contract"] == {
        "day": {"nullable": False},
        "temp": {"min": -2, "max": 31},  # rounded outward; it has a null
        "count": {"nullable": False, "min": 3, "max": 12},
        "kind": {"nullable": False, "isin": ["fog", "rain", "sun"]},
        "note": {"nullable": False},
        "flag": {"nullable": False},
    }
    many = _text(day=[f"2020-01-{d:02d}" for d in range(1, 15)],
                 v=[str(i % 13) for i in range(14)])  # fmt: skip
    v = infer.propose("t", many, "/d/*.csv", "csv")["curated"]["contract"]["v"]
    assert "isin" not in v  # an integer column gets a range, never a list
    words = many.assign(v=[f"w{i % 13}" for i in range(14)])
    assert "isin" not in infer.propose("t", words, "/d/*.csv", "csv")["curated"]["contract"]["v"]
    words = many.assign(v=[f"w{i % 12}" for i in range(14)])
    assert (
        len(infer.propose("t", words, "/d/*.csv", "csv")["curated"]["contract"]["v"]["isin"]) == 12
    )


def test_the_gold_table_bins_the_event_time_by_month():
    df = _text(
        at=["2020-01-01T00:00:00Z", "2020-01-02T00:00:00Z", "2020-02-01T00:00:00Z"],
        a=["1.0", "2.0", "3.0"], b=["1.0", "2.0", "3.0"], c=["1.0", "2.0", "3.5"],
        d=["1.0", "2.0", "3.0"], e=["1.0", "2.0", "3.0"],
        site=["x", "y", "x"], kind=["k", "k", "k"],
    )  # fmt: skip
    body = infer.propose("m", df, "/d/*.csv", "csv")
    assert body["curated"]["event_time"] == {"column": "at", "time_zone": "UTC"}
    assert body["curated"]["partition_by"] == ["year", "month"]
    assert body["gold"] == [{
        "table": "m_monthly",
        "time_bin": {"column": "at", "every": "month", "name": "month"},
        "by": ["kind"],  # the category with the fewest values
        "measures": {"rows": "count", "mean_a": {"mean": "a"}, "mean_b": {"mean": "b"},
                     "mean_c": {"mean": "c"}, "mean_d": {"mean": "d"}},
        "chart": {"x": "month", "y": "mean_a", "by": "kind"},
    }]  # fmt: skip
    assert (body["schedule"], body["profile"]) == ({"cron": "0 6 * * *"}, "small")
    src = body["sources"][0]
    assert {k: src[k] for k in ("name", "kind", "url", "format", "sink", "table")} == {
        "name": "m_files", "kind": "files", "url": "/d/*.csv", "format": "csv",
        "sink": "landing", "table": "m",
    }  # fmt: skip
    p = _valid("m", body)
    assert p.gold[0].group_keys() == ["month", "kind"]
    # no category, no float: rows by month
    body = infer.propose("m", _text(at=["2020-01-01", "2020-01-02"], n=["1", "2"]), "u", "csv")
    assert body["gold"][0]["measures"] == {"rows": "count"}
    assert body["gold"][0]["chart"] == {"x": "month", "y": "rows"}
    _valid("m", body)


def test_year_and_month_columns_land_without_an_event_time():
    df = _text(year=["2020", "2020"], month=["1", "2"], site=["a", "a"], v=["1.5", "2"])
    body = infer.propose("ym", df, "/d/*.jsonl", "jsonl")
    assert "event_time" not in body["curated"] and "gold" not in body
    assert body["curated"]["key"] == ["month"]
    assert _valid("ym", body).landing_source()["format"] == "jsonl"


def test_a_sample_without_time_or_year_and_month_is_refused_in_one_line():
    with pytest.raises(RiverlakeError, match="needs a time column") as e:
        infer.propose("t", _text(a=["1"], month=["2"]), "u", "csv")
    assert "\n" not in str(e.value)
    with pytest.raises(RiverlakeError, match="a pipeline name"):
        infer.propose("Bad-Name", _text(day=["2020-01-01"]), "u", "csv")


def test_the_rendered_file_says_what_to_check_and_loads_back():
    df = _text(day=["2020-01-01", "2020-01-02"], kind=["a", "a"], v=["1.5", "2"])
    body = infer.propose("r", df, "/d/*.csv", "csv")
    text = infer.render("r", body, "sample.csv", len(df))
    assert text.startswith("# Pipeline r, proposed by `riverlake new` from 2 rows of sample.csv")
    assert "# - curated.key: day" in text and "curated.contract" in text
    assert yaml.safe_load(text) == {"r": body}
    declared.parse(yaml.safe_load(text), "x")


@pytest.mark.skipif(not SEATTLE.exists(), reason="the Seattle weather sample is not shipped")
def test_the_seattle_weather_sample_proposes_its_date_as_key_and_event_time():
    df = pd.read_csv(SEATTLE, dtype=str, keep_default_na=False)
    assert len(df) == 1461
    body = infer.propose("seattle_weather", df, f"{SEATTLE.parent}/*.csv", "csv")
    c = body["curated"]
    assert c["key"] == ["date"]
    assert c["event_time"] == {"column": "date", "time_zone": "UTC"}
    assert c["contract"]["weather"] == {"nullable": False,
                                        "isin": ["drizzle", "fog", "rain", "snow", "sun"]}  # fmt: skip
    assert c["contract"]["temp_max"] == {"nullable": False, "min": -2, "max": 36}
    assert body["sources"][0]["schema"] == {
        "date": "date", "precipitation": "float64", "temp_max": "float64",
        "temp_min": "float64", "wind": "float64", "weather": "string",
    }  # fmt: skip
    assert body["gold"][0]["by"] == ["weather"]
    _valid("seattle_weather", body)


# --------------------------------------------------------------------------- the command


def _sample(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "day1.csv"
    path.write_text("day,site,temp\n2020-01-01,a,1.5\n2020-01-02,a,2.5\n2020-01-03,b,3\n")
    return path


def _one_error_line(res) -> str:
    assert res.exit_code == 1, res.output
    assert res.stdout == ""
    assert res.stderr.startswith("riverlake: error: ") and res.stderr.count("\n") == 1
    return res.stderr


def test_new_writes_a_declaration_that_riverlake_then_lists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sample = _sample(tmp_path / "drops")
    res = CliRunner().invoke(app, ["new", "temps", "--from", str(sample)])
    assert res.exit_code == 0, res.output
    written = Path("pipelines/temps.yaml")
    assert res.stdout == f"{written}\n"
    assert "riverlake pipelines" in res.stderr and "riverlake run temps" in res.stderr
    found = declared.pipelines(get_settings())
    assert {"flights", "temps"} <= set(found)
    p = found["temps"]
    assert p.sources[0]["url"] == f"{(tmp_path / 'drops').resolve().as_posix()}/*.csv"
    assert p.curated.key == ["day"] and p.gold[0].table == "temps_monthly"
    assert written.read_text().startswith("# Pipeline temps, proposed by `riverlake new`")
    # the command lists it too
    res = CliRunner().invoke(app, ["pipelines", "--json"])
    assert "temps" in [r["name"] for r in json.loads(res.stdout)]

    # once written, the file is not overwritten without --force
    assert "exists (--force overwrites it)" in _one_error_line(
        CliRunner().invoke(app, ["new", "temps", "--from", str(sample)])
    )
    res = CliRunner().invoke(app, ["new", "temps", "--from", str(sample), "--force"])
    assert res.exit_code == 0, res.output


def test_new_reads_jsonl_and_parquet_samples(tmp_path, monkeypatch):
    decl = tmp_path / "decl"
    monkeypatch.setenv("RIVERLAKE_PIPELINES_DIR", str(decl))
    rows = [{"id": i, "at": f"2021-03-0{i}T10:00:00Z", "v": i / 2} for i in range(1, 4)]
    (tmp_path / "j").mkdir()
    (tmp_path / "j/a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "p").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p/a.parquet")
    for name, sample in (("js", "j/a.jsonl"), ("pq", "p/a.parquet")):
        res = CliRunner().invoke(app, ["new", name, "--from", str(tmp_path / sample)])
        assert res.exit_code == 0, res.output
        assert res.stdout == f"{decl / name}.yaml\n"
    found = declared.pipelines(get_settings())
    for name, fmt in (("js", "jsonl"), ("pq", "parquet")):
        src = found[name].sources[0]
        assert (src["format"], src["schema"]) == (fmt, {"id": "int64", "at": "timestamp",
                                                        "v": "float64"})  # fmt: skip
        assert found[name].curated.key == ["at"]


def test_new_refuses_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sample = _sample(tmp_path / "drops")
    run = lambda *args: CliRunner().invoke(app, ["new", *args])  # noqa: E731
    assert "already declared in" in _one_error_line(run("flights", "--from", str(sample)))
    assert "already declared in" in _one_error_line(
        run("flights", "--from", str(sample), "--force")
    )
    assert "a pipeline name is lower case" in _one_error_line(run("My-Data", "--from", str(sample)))
    assert "no such file" in _one_error_line(run("t", "--from", "nothere.csv"))
    (tmp_path / "x.txt").write_text("a\n1\n")
    assert "not a sample" in _one_error_line(run("t", "--from", "x.txt"))
    (tmp_path / "x.csv").write_text("a,b\n1,x\n")
    assert "needs a time column" in _one_error_line(run("t", "--from", "x.csv"))
    (tmp_path / "bad.parquet").write_text("not parquet")
    assert "cannot be read as parquet" in _one_error_line(run("t", "--from", "bad.parquet"))
    # a table another pipeline writes: refused before anything is written
    assert "table 'weather' is already written by pipeline 'flights'" in _one_error_line(
        run("weather", "--from", str(sample))
    )
    assert not Path("pipelines").exists()
