"""The flights pipeline end to end on the real local stack: CLI -> Prefect -> Dask -> S3 -> gold."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pandas as pd
import pytest

from riverlake import lake
from riverlake.demo import data as demo_data
from riverlake.settings import get_settings
from tests.conftest import riverlake_cli

pytestmark = pytest.mark.integration

START, END = "2013-01-30", "2013-02-02"  # four days, two month partitions


def source_rows() -> pd.DataFrame:
    raw = demo_data.load("flights")
    d = pd.to_datetime(raw[["year", "month", "day"]].astype("int64"))
    return raw[(d >= START) & (d <= END)]


@pytest.fixture(scope="module")
def first_run(stack_env):
    res = riverlake_cli("run", "flights", "--json", "--start", START, "--end", END)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)  # the summary alone on stdout


def test_every_source_row_is_loaded(first_run):
    src = source_rows()
    assert first_run["rows_in"] == len(src) == 3436
    assert first_run["rows_loaded"] == first_run["rows_in"]
    assert first_run["months"] == ["2013-01", "2013-02"]
    curated = lake.read_pandas("flights")
    assert len(curated) == len(src)
    assert int(curated["cancelled"].sum()) == int(src["dep_time"].isna().sum()) > 0
    assert sorted(curated["flight_date"].dt.strftime("%Y-%m-%d").unique()) == [
        "2013-01-30", "2013-01-31", "2013-02-01", "2013-02-02"
    ]  # fmt: skip


def test_gold_matches_independent_pandas(first_run):
    src = source_rows()
    gold = lake.read_pandas("carrier_origin_daily")
    assert first_run["gold_rows"]["carrier_origin_daily"] == len(gold)
    # independent computation straight from the source rows
    src = src.assign(date=pd.to_datetime(src[["year", "month", "day"]].astype("int64")))
    g = src.groupby(["date", "carrier", "origin"])
    want = pd.DataFrame(
        {
            "flights": g.size(),
            "cancelled": g["dep_time"].apply(lambda s: int(s.isna().sum())),
            "mean_arr_delay": g["arr_delay"].mean().astype("float64"),
            "on_time_rate": g["arr_delay"].apply(
                lambda s: float((s.dropna() < 15).mean()) if s.notna().any() else np.nan
            ),
        }
    )
    got = gold.set_index(["flight_date", "carrier", "origin"]).sort_index()
    got.index = got.index.set_names(["date", "carrier", "origin"])
    assert len(got) == len(want)
    for key in [(pd.Timestamp("2013-01-30"), "UA", "EWR"), (pd.Timestamp("2013-02-02"), "DL", "JFK"),
                (pd.Timestamp("2013-01-31"), "B6", "JFK")]:  # fmt: skip
        assert got.loc[key, "flights"] == want.loc[key, "flights"]
        assert got.loc[key, "cancelled"] == want.loc[key, "cancelled"]
        assert got.loc[key, "mean_arr_delay"] == pytest.approx(want.loc[key, "mean_arr_delay"])
        assert got.loc[key, "on_time_rate"] == pytest.approx(want.loc[key, "on_time_rate"])
    assert got["flights"].sum() == len(src)


def test_rerun_is_a_noop(first_run):
    before = lake.table_version("flights", get_settings())
    res = riverlake_cli("run", "flights", "--json", "--start", START, "--end", END)
    assert res.returncode == 0, res.stderr[-3000:]
    again = json.loads(res.stdout)
    assert again["batch"] == first_run["batch"] and again["curated_skipped"] is True
    assert lake.table_version("flights", get_settings()) == before
    # gold learned from its tables' logs that it holds the batch: nothing read or written
    assert (f"(batches ['{again['batch']}']) and every gold table holds its batch: "
            "no data work, no cluster") in res.stderr  # fmt: skip
    assert set(again["gold_rows"].values()) == {0}
    assert len(lake.read_pandas("flights")) == first_run["rows_in"]


def test_a_narrower_window_with_nothing_new_reads_and_writes_nothing(first_run):
    """A daily schedule re-runs one day of a month an earlier, wider run committed: its
    month already holds exactly the landed files, so nothing is transformed (it re-read
    and rewrote the whole month before: a different batch id for the same files)."""
    versions = {t: lake.table_version(t, get_settings())
                for t in ("flights", "carrier_origin_daily", "flights_quarantine")}  # fmt: skip
    res = riverlake_cli("run", "flights", "--json", "--start", "2013-01-31", "--end", "2013-01-31")
    assert res.returncode == 0, res.stderr[-3000:]
    again = json.loads(res.stdout)
    assert again["landing"]["units"] == 0
    assert again["curated_skipped"] is True and again["rows_in"] == 0
    assert set(again["gold_rows"].values()) == {0}
    assert {t: lake.table_version(t, get_settings()) for t in versions} == versions
    assert "already hold exactly their landed files" in res.stderr
    assert len(lake.read_pandas("flights")) == first_run["rows_in"]
    # No data work, so no cluster: the run's one task is the check of the sources, in
    # the flow's process (the cluster starts with the first task submitted to it).
    (run,) = prefect_post("flow_runs/filter", {
        "flow_runs": {"name": {"any_": ["flights 2013-01-31"]}},
        "sort": "START_TIME_DESC", "limit": 1})  # fmt: skip
    assert run["state_type"] == "COMPLETED"
    tasks = prefect_post("task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
    assert [t["name"].rsplit("-", 1)[0] for t in tasks] == ["check-sources"], tasks
    assert again["dashboard"] is None
    assert set(again["sources"]) == {"weather", "planes", "airports", "airlines"}
    assert all(v == {"rows_in": 0, "rows_loaded": 0, "rows_quarantined": 0}
               for v in again["sources"].values())  # fmt: skip


def prefect_post(path: str, body: dict) -> list[dict]:
    req = urllib.request.Request(f"{get_settings().prefect_api_url}/{path}",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_a_person_sees_a_table_per_table_and_the_runs_url(first_run):
    res = riverlake_cli("run", "flights", "--start", START, "--end", END)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["TABLE", "IN", "LOADED", "QUARANTINED", "MERGED"]
    rows = {
        ln.split()[0]: ln.split()[1:] for ln in lines[1:] if not ln.startswith(("run:", "apps:"))
    }
    assert rows["flights"] == ["0", "0", "0", "0"]  # nothing new: the batch is already in
    assert set(rows) >= {"flight_drops", "weather", "planes", "airports", "airlines", "flights"}
    (run_line,) = [ln for ln in lines if ln.startswith("run:")]
    run_id = run_line.rsplit("/", 1)[1]
    api = get_settings().prefect_api_url
    with urllib.request.urlopen(f"{api}/flow_runs/{run_id}", timeout=10) as r:
        flow_run = json.loads(r.read())
    assert flow_run["name"] == f"flights {START}..{END}"  # named after what it does
    assert flow_run["state_type"] == "COMPLETED"
    assert "done in" in res.stderr and "{" not in res.stdout


def test_flow_run_is_in_prefect_with_its_tasks(first_run):
    api = get_settings().prefect_api_url
    body = json.dumps({"flows": {"name": {"any_": ["flights"]}}, "limit": 20}).encode()
    req = urllib.request.Request(f"{api}/flow_runs/filter", data=body,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    runs = json.loads(urllib.request.urlopen(req, timeout=10).read())
    completed = [r for r in runs if r["state_type"] == "COMPLETED"]
    assert completed, [r["state_type"] for r in runs]
    body = json.dumps({"flow_runs": {"id": {"any_": [r["id"] for r in completed]}}}).encode()
    req = urllib.request.Request(f"{api}/task_runs/filter", data=body,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    names = [t["name"] for t in json.loads(urllib.request.urlopen(req, timeout=10).read())]
    # templated names are kept as they are; the others get Prefect's suffix (-3f2)
    tasks = {*names, *(n.rsplit("-", 1)[0] for n in names)}
    # the generic flow's tasks, named after what they work on
    assert {
        "land-flight_drops",
        "transform-2013-01",
        "transform-2013-02",
        "commit-curated",
        "build-gold",
        "ingest-weather",
    } <= tasks, tasks


def test_tables_command_lists_the_catalog(first_run):
    res = riverlake_cli("tables")
    assert res.returncode == 0, res.stderr
    rows = {ln.split()[0]: ln.split() for ln in res.stdout.splitlines()[1:]}
    assert rows["flights"][1] == str(first_run["rows_in"])
    assert rows["flights"][4] == "2"  # partitions: 2013-01 and 2013-02
    assert rows["flights"][-1] == f"flights:{first_run['batch']}"
    catalog = {t["name"]: t for t in json.loads(riverlake_cli("tables", "--json").stdout)}
    assert catalog["flights"]["batches"] == [f"flights:{first_run['batch']}"]
    assert catalog["carrier_origin_daily"]["partition_by"] == ["year", "month"]
    assert "carrier_origin_daily" in rows


def test_notebook_runs_against_the_running_cluster(first_run, tmp_path):
    import nbformat
    from distributed import LocalCluster
    from nbclient import NotebookClient

    from tests.conftest import ROOT

    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as c:
        import os

        os.environ["RIVERLAKE_CLUSTER"] = c.scheduler_address
        try:
            nb = nbformat.read(ROOT / "notebooks" / "explore.ipynb", as_version=4)
            NotebookClient(nb, timeout=120, kernel_name="python3",
                           resources={"metadata": {"path": str(tmp_path)}}).execute()  # fmt: skip
        finally:
            os.environ.pop("RIVERLAKE_CLUSTER", None)
    out = "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []))
    assert f"{first_run['rows_in']} flights read on 1 workers" in out


def test_prefect_shows_the_quality_report_and_the_accounting_as_artifacts(first_run):
    """A table artifact with the run's quality report, a markdown one with its accounting
    and the Dask dashboard link, both on the flow run."""
    api = get_settings().prefect_api_url

    def artifacts(key: str) -> list[dict]:
        body = json.dumps({"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC"})
        req = urllib.request.Request(f"{api}/artifacts/filter", data=body.encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        return json.loads(urllib.request.urlopen(req, timeout=10).read())

    quality = artifacts("flights-quality")[0]
    rows = {r["check"]: r for r in json.loads(quality["data"])}
    assert rows["origin:isin(['EWR', 'JFK', 'LGA'])"]["rows_checked"] == first_run["rows_in"]
    assert sum(r["rows_failed"] for r in rows.values()) == 0
    # the same run's accounting (a later run with nothing new has no quality report)
    (accounting,) = [a for a in artifacts("flights-accounting")
                     if a["flow_run_id"] == quality["flow_run_id"]]  # fmt: skip
    md = accounting["data"]
    assert f"| flights | {first_run['rows_in']} | {first_run['rows_loaded']} | 0 | 0 |" in md
    assert "| carrier_origin_daily (gold) |" in md
    assert f"Dask dashboard: {first_run['dashboard']}" in md and first_run["dashboard"]


def test_the_runs_summary_is_persisted_on_the_lake_through_the_saved_block(first_run):
    """The CLI hands its flow the saved result-storage block (loading it by slug made
    Prefect import every installed collection first); the result is still written on
    the lake and recorded against that block."""
    from prefect.serializers import PickleSerializer

    from riverlake.flows.runner import result_storage_block

    (run,) = prefect_post("flow_runs/filter", {
        "flow_runs": {"name": {"any_": [f"flights {START}..{END}"]}},
        "sort": "START_TIME_ASC", "limit": 1})  # fmt: skip
    meta = run["state"]["data"]
    _, slug = result_storage_block()
    req = urllib.request.Request(
        f"{get_settings().prefect_api_url}/block_types/slug/{slug.split('/')[0]}"
        f"/block_documents/name/{slug.split('/')[1]}")  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as r:
        assert meta["storage_block_id"] == json.loads(r.read())["id"]
    settings = get_settings()
    fs = lake.filesystem(settings)
    path = f"{lake.strip_scheme(lake.lake_root(settings))}/_prefect/results/{meta['storage_key']}"
    assert meta["serializer"]["type"] == "pickle"
    summary = PickleSerializer(picklelib=meta["serializer"]["picklelib"]).loads(fs.cat(path))
    assert {k: summary[k] for k in ("batch", "rows_in", "rows_loaded", "gold_rows")} == {
        k: first_run[k] for k in ("batch", "rows_in", "rows_loaded", "gold_rows")
    }
