"""The README's "Add your own pipeline", walked as a user would, on the real local stack:
a public dataset that is not flights (Seattle's daily weather, 2012-2015) from a sample
file to a declaration (`riverlake new`), a run, bad rows quarantined with their check, a
late update winning, gold values checked against an independent pandas computation, a
run with nothing new that changes nothing, and the table opened in Polars and DuckDB."""

from __future__ import annotations

import io
import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from riverlake import lake
from riverlake.settings import get_settings
from tests.conftest import ROOT, riverlake_cli

pytestmark = pytest.mark.integration

SAMPLE = ROOT / "examples" / "seattle_weather" / "seattle-weather.csv"
NAME = "seattle_weather"
#: A later delivery: one new day, a late correction of an old one, and four bad rows.
LATE = """date,precipitation,temp_max,temp_min,wind,weather
2016-01-01,0.0,7.2,1.1,2.0,sun
2015-12-31,1.5,9.9,0.6,2.2,rain
2016-01-02,0.3,hot,2.2,3.1,rain
2016-01-03,0.0,8.1,1.0,2.5,hailstorm
2016-01-04,-5.0,8.0,1.0,2.5,rain
2016-13-45,0.0,8.0,1.0,2.5,sun
"""


@pytest.fixture(scope="module")
def walk(stack_env, tmp_path_factory):
    """The README's commands, in order, in a user's own folder."""
    work = tmp_path_factory.mktemp("own")
    (work / "data").mkdir()
    shutil.copy(SAMPLE, work / "data" / "seattle-weather.csv")
    t0 = time.monotonic()
    steps = {}
    steps["new"] = riverlake_cli("new", NAME, "--from", "data/seattle-weather.csv", cwd=work)
    steps["pipelines"] = riverlake_cli("pipelines", "--json", cwd=work)
    steps["run1"] = riverlake_cli("run", NAME, "--json", cwd=work)
    to_gold = time.monotonic() - t0  # the sample file to its gold table: new, pipelines, run
    # files of a month are read in name order and the last record of a key wins
    (work / "data" / "seattle-weather.update-1.csv").write_text(LATE)
    steps["run2"] = riverlake_cli("run", NAME, "--json", cwd=work)
    versions = {t["name"]: t["version"] for t in lake.list_tables(get_settings(), batches=False)}
    steps["run3"] = riverlake_cli("run", NAME, "--json", cwd=work)
    steps["deploy"] = riverlake_cli("deploy", "--no-worker", cwd=work)
    took = time.monotonic() - t0
    for name, res in steps.items():
        assert res.returncode == 0, (name, res.stderr[-3000:])
    print(
        f"sample file to gold table (new, pipelines, run): {to_gold:.1f}s; "
        f"the whole walk (three runs, deploy): {took:.1f}s"
    )  # the closing note's figures
    return work, steps, versions


def truth() -> pd.DataFrame:
    """Every good row the lake must hold, computed with pandas from the files alone."""
    base = pd.read_csv(SAMPLE)
    late = pd.read_csv(io.StringIO(LATE)).iloc[:2]  # the two good rows
    late = late.astype({"temp_max": "float64"})
    rows = pd.concat([base, late], ignore_index=True).drop_duplicates("date", keep="last")
    return rows.assign(date=pd.to_datetime(rows["date"])).sort_values("date")


def test_new_writes_a_declaration_the_user_can_read_and_run(walk):
    work, steps, _ = walk
    path = work / "pipelines" / f"{NAME}.yaml"
    assert str(path.relative_to(work)) in steps["new"].stdout + steps["new"].stderr
    body = yaml.safe_load(path.read_text())[NAME]
    assert body["curated"]["key"] == ["date"]
    assert body["curated"]["event_time"]["column"] == "date"
    assert sorted(body["curated"]["contract"]["weather"]["isin"]) == [
        "drizzle", "fog", "rain", "snow", "sun"]  # fmt: skip
    listed = {p["name"]: p for p in json.loads(steps["pipelines"].stdout)}
    assert listed[NAME]["curated"] == NAME and listed[NAME]["gold"] == f"{NAME}_monthly"
    assert "flights" in listed  # the shipped pipelines stay


def test_first_run_loads_every_row_of_the_sample(walk):
    first = json.loads(walk[1]["run1"].stdout)
    assert first["rows_in"] == first["rows_loaded"] == 1461
    assert first["rows_quarantined"] == first["rows_merged"] == 0
    assert len(first["months"]) == 48


def test_bad_rows_are_quarantined_with_their_check_and_a_late_update_wins(walk):
    second = json.loads(walk[1]["run2"].stdout)
    # the landing refused the impossible date (no month to land in); the rest was read
    assert second["landing"]["rows_in"] == 6 and second["landing"]["rows_quarantined"] == 1
    assert second["months"] == ["2015-12", "2016-01"]
    # 2015-12 reads only its new file (the correction), merged into the 31 days it holds
    # (the held 2015-12-31 replaced); 2016-01 is new, built whole from its 4 rows
    assert second["months_merged"] == ["2015-12"]
    assert second["rows_in"] == 1 + 4
    assert (second["rows_loaded"], second["rows_quarantined"], second["rows_merged"]) == (2, 3, 0)
    assert second["rows_replaced"] == 1
    assert second["quarantine_checks"] == {
        "temp_max:type": 1, "weather:isin(['drizzle', 'fog', 'rain', 'snow', 'sun'])": 1,
        "precipitation:in_range(0, 56)": 1}  # fmt: skip
    q = lake.read_pandas(f"{NAME}_quarantine")
    bad = q.set_index("failed_check")["record"].map(json.loads)
    assert bad["temp_max:type"]["temp_max"] == "hot"  # the original value, as it came
    assert bad["weather:isin(['drizzle', 'fog', 'rain', 'snow', 'sun'])"]["weather"] == "hailstorm"
    sq = lake.read_pandas(lake.SOURCE_QUARANTINE)
    (reason,) = sq[sq["source"] == f"{NAME}_files"]["reason"]
    assert reason.startswith("date '2016-13-45' is not a date")
    curated = lake.read_pandas(NAME).sort_values("date")
    want = truth()
    assert len(curated) == len(want) == 1462
    fixed = curated[curated["date"] == "2015-12-31"].iloc[0]
    assert (fixed["temp_max"], fixed["weather"]) == (9.9, "rain")  # the late record won
    np.testing.assert_allclose(curated["temp_max"].to_numpy(), want["temp_max"].to_numpy())


def test_gold_matches_an_independent_pandas_computation(walk):
    gold = lake.read_pandas(f"{NAME}_monthly")
    want = truth()
    month = want["date"].dt.to_period("M").dt.start_time
    by = ["month", "weather"] if "weather" in gold.columns else ["month"]
    g = want.assign(month=month).groupby(by)
    exp = pd.DataFrame({"rows": g.size()}).reset_index()
    for col in [c for c in gold.columns if c.startswith("mean_")]:
        exp[col] = g[col.removeprefix("mean_")].mean().to_numpy()
    got = gold.assign(month=pd.to_datetime(gold["month"])).sort_values(by).reset_index(drop=True)
    exp = exp.sort_values(by).reset_index(drop=True)
    assert got[by].astype(str).values.tolist() == exp[by].astype(str).values.tolist()
    assert got["rows"].tolist() == exp["rows"].tolist()
    for col in exp.columns.difference([*by, "rows"]):
        np.testing.assert_allclose(got[col].to_numpy(float), exp[col].to_numpy(float), rtol=1e-9)


def test_a_run_with_nothing_new_changes_nothing(walk):
    _, steps, versions = walk
    third = json.loads(steps["run3"].stdout)
    assert third["months"] == [] and third["rows_in"] == 0 and third["curated_skipped"]
    after = {t["name"]: t["version"] for t in lake.list_tables(get_settings(), batches=False)}
    assert {t: after[t] for t in versions} == versions


def test_the_table_opens_in_polars_and_duckdb(walk):
    import duckdb
    import polars as pl
    from deltalake import DeltaTable

    settings = get_settings()
    uri, opts = lake.table_uri(NAME, settings), lake.storage_options(settings)
    ours = lake.read_pandas(NAME).sort_values("date").reset_index(drop=True)
    pl_rows = pl.read_delta(uri, storage_options=opts).sort("date").to_pandas()
    ds = DeltaTable(uri, storage_options=opts).to_pyarrow_dataset()  # noqa: F841 - for duckdb
    dk = duckdb.sql("select * from ds order by date").df()
    for other in (pl_rows, dk):
        assert len(other) == len(ours) == 1462
        np.testing.assert_allclose(
            other["temp_max"].to_numpy(float), ours["temp_max"].to_numpy(float)
        )
        assert other["weather"].tolist() == ours["weather"].tolist()


def test_deploy_registers_the_users_pipeline_with_its_schedule(walk):
    """`riverlake deploy` from the user's folder: a deployment of every declared pipeline,
    the user's included, scheduled as declared."""
    from tests.integration.test_deployments import api

    _, steps, _ = walk
    assert f"deployed {NAME}/{NAME}-local to work pool riverlake-local (0 6 * * *)" in (
        steps["deploy"].stderr
    )
    (dep,) = api("/deployments/filter", {"deployments": {"name": {"any_": [f"{NAME}-local"]}}})
    assert dep["entrypoint"] == f"riverlake.flows.pipeline:{NAME}"
    assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 6 * * *"]
    assert dep["job_variables"]["env"]["RIVERLAKE_PIPELINES_DIR"].endswith("/pipelines")
    (flow,) = api("/flows/filter", {"flows": {"id": {"any_": [dep["flow_id"]]}}})
    assert flow["name"] == NAME


def test_the_dashboards_page_charts_the_users_gold_table(walk):
    """The declared chart appears on the Dashboards page with its filters, drawn from the
    lake's rows (the page's own functions, on the real lake)."""
    from riverlake import pipelines
    from riverlake.apps import gold_dashboard as dash

    work, _, _ = walk
    settings = get_settings(pipelines_dir=work / "pipelines")
    charts = dash.charted(pipelines.pipelines(settings))
    p, gold = charts[dash.label(NAME, f"{NAME}_monthly")]
    assert p.name == NAME
    frame = lake.read_pandas(gold.table)
    assert len(frame) > 48 and gold.chart.x == "month"
    filters = {f.column: f.kind for f in dash.key_filters(frame, gold.group_keys())}
    assert filters == {"month": "time", "weather": "choice"}
    sun = dash.filter_frame(frame, {"weather": ["sun"]})
    assert set(sun["weather"]) == {"sun"} and 0 < len(sun) < len(frame)


def test_a_pipeline_of_table_sources_only_runs_on_the_generic_flow(stack_env, tmp_path):
    """No landing, no curated table: the generic flow ingests each declared source into
    its table, cursor and rows in one commit; a second run finds nothing new."""
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "carriers.yaml").write_text(yaml.safe_dump({"carriers": {
        "description": "the airlines, copied from the dimensions database",
        "sources": [{"name": "carriers_sql", "kind": "sql", "url": "{sql_url}",
                     "source_table": "airlines", "cursor_column": "updated_at",
                     "table": "carriers", "key": ["id"],
                     "schema": {"id": "int64", "carrier": "string", "name": "string",
                                "updated_at": "string"}}],
    }}))  # fmt: skip
    first = riverlake_cli("run", "carriers", "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert summary["sources"]["carriers_sql"] == {"rows_in": 16, "rows_loaded": 16,
                                                  "rows_quarantined": 0}  # fmt: skip
    assert "curated_table" not in summary
    carriers = lake.read_pandas("carriers")
    assert len(carriers) == 16 and carriers["id"].is_unique
    second = riverlake_cli("run", "carriers", "--json", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout)["sources"]["carriers_sql"]["rows_in"] == 0
    assert len(lake.read_pandas("carriers")) == 16
