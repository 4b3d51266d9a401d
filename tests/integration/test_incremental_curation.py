"""Incremental curation, exact: a month that gets new landed files curates only their rows
and merges them on the natural key into the rows it holds, and the result equals a whole
rebuild of the same landed files, value by value.

Lake INCR is built by daily runs and two late files (updates of held flights, one that
fails the contract, one that fails typing, then a correction of the one that failed);
lake WHOLE gets the same landed files at once and curates the month in one run, whole.
Their curated tables, quarantine records and gold tables must be equal; the runs after
the first must have read only their new files (rows in) and merged January.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from riverlake import lake, pipelines
from riverlake.demo import data as demo_data
from riverlake.settings import get_settings
from tests.integration.test_transform_pipeline import run

pytestmark = pytest.mark.integration

INCR = "s3://riverlake-test/curation-incremental"
WHOLE = "s3://riverlake-test/curation-whole"
KEY = ["year", "month", "day", "carrier", "flight", "origin", "sched_dep_time"]
MONTH = "year=2013/month=01"


def late_files() -> dict[str, pd.DataFrame]:
    """Two late files for 2013-01-30, named to land after the day files."""
    src = demo_data.load("flights")
    day = src[(src["month"] == 1) & (src["day"] == 30)].head(8).astype("string")
    updates = day.head(3).assign(arr_delay="500")  # three held flights, updated
    refused = day.iloc[[3]].assign(dep_delay="5000")  # fails the contract: its key leaves
    untyped = day.iloc[[4]].assign(dep_delay="abc")  # fails typing: no key, the held stays
    first = pd.concat([updates, refused, untyped])
    second = day.iloc[[3]].assign(dep_delay="10")  # the refused flight, corrected
    return {"flights-2013-01-31.update-1.csv": first, "flights-2013-01-31.update-2.csv": second}


def corrected(frame: pd.DataFrame) -> pd.DataFrame:
    """The same row with its departure delay 10 -> 20: a file of the same size."""
    out = frame.assign(dep_delay="20")
    assert len(out.to_csv(index=False)) == len(frame.to_csv(index=False))
    return out


def put(lake_url: str, files: dict[str, pd.DataFrame]) -> None:
    settings = get_settings(lake_url=lake_url)
    fs = lake.filesystem(settings)
    root = lake.strip_scheme(lake.landing_uri("flights", settings))
    fs.pipe({f"{root}/{MONTH}/{n}": f.to_csv(index=False).encode() for n, f in files.items()})


def clear(lake_url: str) -> None:
    settings = get_settings(lake_url=lake_url)
    fs = lake.filesystem(settings)
    root = lake.strip_scheme(lake_url)
    if fs.exists(root):
        fs.rm(root, recursive=True)
    fs.invalidate_cache()


@pytest.fixture(scope="module")
def lakes(stack_env) -> dict:
    clear(INCR), clear(WHOLE)
    late = late_files()
    runs = [run(INCR, "--start", d, "--end", d) for d in ("2013-01-30", "2013-01-31")]
    for name, frame in late.items():  # each late file is its own run
        put(INCR, {name: frame})
        runs.append(run(INCR, "--start", "2013-01-31", "--end", "2013-01-31"))
    # a window over January (nothing new: kept, not even read) and a new day of February
    runs.append(run(INCR, "--start", "2013-01-31", "--end", "2013-02-01"))
    # the correction is corrected again, to a file of the same size under the same name
    fixed = {"flights-2013-01-31.update-2.csv": corrected(late["flights-2013-01-31.update-2.csv"])}
    put(INCR, fixed)
    runs.append(run(INCR, "--start", "2013-01-31", "--end", "2013-01-31"))
    # WHOLE: the same three days delivered, the same late files already landed
    put(WHOLE, {**late, **fixed})
    whole = run(WHOLE, "--start", "2013-01-30", "--end", "2013-02-01")
    return {"runs": runs, "whole": whole, "late": late}


def test_later_runs_read_only_their_new_files_and_merge(lakes):
    runs, whole = lakes["runs"], lakes["whole"]
    assert runs[0].get("months_merged") == []  # never built: whole
    assert [r["months_merged"] for r in runs[1:4]] == [["2013-01"]] * 3
    assert whole["months_merged"] == [] and whole["months_kept"] == []
    last = runs[4]  # January kept as it is; February new, built whole
    assert (last["months"], last["months_merged"], last["months_kept"]) == (
        ["2013-01", "2013-02"], [], ["2013-01"])  # fmt: skip
    src = demo_data.load("flights")
    assert last["rows_in"] == int(((src["month"] == 2) & (src["day"] == 1)).sum())
    # a built file changed (same size, other content): January rebuilt whole, not kept
    again = runs[5]
    assert again["months_merged"] == [] and again["months_kept"] == []
    assert again["rows_in"] > 1000  # every landed file of January read again
    days = {d: runs[i]["rows_in"] for i, d in enumerate(("2013-01-30", "2013-01-31"))}
    assert days["2013-01-31"] > 800  # the second run read its day, not the month so far
    # the late files: rows in, loaded, quarantined, merged (within the file), replaced
    first, second = runs[2], runs[3]
    assert (first["rows_in"], first["rows_loaded"], first["rows_quarantined"],
            first["rows_merged"], first["rows_replaced"]) == (5, 3, 2, 0, 4)  # fmt: skip
    assert first["quarantine_checks"] == {"dep_delay:in_range(-120, 1800)": 1,
                                          "dep_delay:type": 1}  # fmt: skip
    assert (second["rows_in"], second["rows_loaded"], second["rows_quarantined"],
            second["rows_replaced"]) == (1, 1, 0, 0)  # fmt: skip
    for r in runs:
        assert r["rows_in"] == r["rows_loaded"] + r["rows_quarantined"] + r["rows_merged"]


def _sorted(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return frame.sort_values(by).reset_index(drop=True)


def assert_frames_equal(a: pd.DataFrame, b: pd.DataFrame, what: str) -> None:
    assert list(a.columns) == list(b.columns), what
    assert len(a) == len(b) > 0, (what, len(a), len(b))
    for col in a.columns:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(x, y, err_msg=f"{what}.{col}")
        else:
            assert a[col].astype(str).tolist() == b[col].astype(str).tolist(), (what, col)


def test_the_merged_month_equals_a_whole_rebuild(lakes):
    incr = lake.read_pandas("flights", settings=get_settings(lake_url=INCR))
    whole = lake.read_pandas("flights", settings=get_settings(lake_url=WHOLE))
    assert_frames_equal(_sorted(incr, KEY), _sorted(whole, KEY), "flights")
    assert not incr.duplicated(KEY).any()
    # the updates won, the refused flight came back corrected, the untyped one stayed held
    late = lakes["late"]["flights-2013-01-31.update-1.csv"]
    day = incr[incr["day"] == 30].set_index(["carrier", "flight", "sched_dep_time"])
    got = day.loc[[(c, int(f), int(t)) for c, f, t in
                   late[["carrier", "flight", "sched_dep_time"]].itertuples(index=False)]]  # fmt: skip
    assert got["arr_delay"].iloc[:3].tolist() == [500.0] * 3
    assert got["dep_delay"].iloc[3] == 20.0  # corrected twice, the last one won
    assert got["dep_delay"].iloc[4] != "abc" and np.isfinite(got["dep_delay"].iloc[4])


def test_quarantine_and_gold_equal_a_whole_rebuild(lakes):
    def quarantine(url: str) -> pd.DataFrame:
        q = lake.read_pandas("flights_quarantine", settings=get_settings(lake_url=url))
        q["source_file"] = q["source_file"].str.rsplit("/", n=1).str[-1]
        return _sorted(q.astype(str), list(q.columns))

    qi, qw = quarantine(INCR), quarantine(WHOLE)
    # the refused record was replaced by the correction (a whole rebuild dedupes it away
    # before the contract); the untyped record stays
    assert qi["failed_check"].tolist() == ["dep_delay:type"]
    assert json.loads(qi["record"].iloc[0])["dep_delay"] == "abc"
    assert_frames_equal(qi, qw, "quarantine")
    p = pipelines.pipeline("flights")
    for g in p.gold:
        a = lake.read_pandas(g.table, settings=get_settings(lake_url=INCR))
        b = lake.read_pandas(g.table, settings=get_settings(lake_url=WHOLE))
        keys = [c for c in a.columns if a[c].dtype.kind not in "f"]
        assert_frames_equal(_sorted(a, keys), _sorted(b[a.columns], keys), g.table)


# ------------------------------------------- a merging run that dies between its commits

FAULT = "s3://riverlake-test/curation-fault"


def test_a_merge_that_died_between_its_commits_is_rebuilt_whole_on_rerun(stack_env):
    """The quarantine commit of a merging run lands, its curated commit never does (the
    quality report between them fails: a table of that name with another schema). The
    next run must not merge again into the quarantine that already holds the dead run's
    records: its quarantine is out of step with the curated month, so it is rebuilt
    whole, and every record is there once."""
    from tests.conftest import riverlake_cli

    clear(FAULT)
    settings = get_settings(lake_url=FAULT)
    first = run(FAULT, "--start", "2013-01-30", "--end", "2013-01-30")
    held = first["rows_loaded"]
    late = late_files()["flights-2013-01-31.update-1.csv"]  # 3 updates, 1 refused, 1 untyped
    put(FAULT, {"flights-2013-01-31.update-1.csv": late})
    # the fault: quality_report replaced by a table whose rows_checked is text
    fs = lake.filesystem(settings)
    fs.rm(lake.strip_scheme(lake.table_uri(lake.QUALITY_REPORT, settings)), recursive=True)
    lake.write_table(lake.QUALITY_REPORT, pd.DataFrame({"batch": ["x"], "rows_checked": ["n"]}),
                     settings=settings)  # fmt: skip
    curated_before = lake.table("flights", settings).version
    died = riverlake_cli("run", "flights", "--json", "--start", "2013-01-31", "--end",
                         "2013-01-31", env={"RIVERLAKE_LAKE_URL": FAULT}, timeout=600)  # fmt: skip
    assert died.returncode == 1, died.stderr[-2000:]
    assert "2013-01: 2 new file(s) merged into its rows" in died.stderr  # day 31, the late
    assert "quality_report" in died.stderr.strip().splitlines()[-1]
    # where the fault landed: the quarantine holds the dead run's two records, the curated
    # table never got its commit
    assert lake.table("flights", settings).version == curated_before
    q = lake.read_pandas("flights_quarantine", settings=settings)
    assert sorted(q["failed_check"]) == ["dep_delay:in_range(-120, 1800)", "dep_delay:type"]
    # mended; the correction lands meanwhile (so the next run is another batch, whose
    # quarantine commit is not skipped as the dead run's); the run again: rebuilt whole
    # (the quarantine is out of step), every record once
    fs.rm(lake.strip_scheme(lake.table_uri(lake.QUALITY_REPORT, settings)), recursive=True)
    put(FAULT, {"flights-2013-01-31.update-2.csv": late_files()["flights-2013-01-31.update-2.csv"]})
    again = riverlake_cli("run", "flights", "--json", "--start", "2013-01-31", "--end",
                          "2013-01-31", env={"RIVERLAKE_LAKE_URL": FAULT}, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    q = lake.read_pandas("flights_quarantine", settings=settings)
    assert q["failed_check"].tolist() == ["dep_delay:type"]  # the refused one was corrected
    summary = json.loads([ln for ln in again.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["months_merged"] == []
    assert "curated whole (its quarantine holds other files than its curated rows" in again.stderr
    src = demo_data.load("flights")
    n30, n31 = (int(((src["month"] == 1) & (src["day"] == d)).sum()) for d in (30, 31))
    assert held == n30
    # the month read whole: both days and the late files; 5 older records replaced
    assert (summary["rows_in"], summary["rows_loaded"], summary["rows_quarantined"],
            summary["rows_merged"]) == (n30 + n31 + 6, n30 + n31, 1, 5)  # fmt: skip
    curated = lake.read_pandas("flights", settings=settings)
    assert len(curated) == n30 + n31 and not curated.duplicated(KEY).any()
    updated = curated[(curated["day"] == 30) & (curated["arr_delay"] == 500)]
    assert len(updated) == 3


# ------------------------------------------- another writer commits while a month merges

CONFLICT = "s3://riverlake-test/curation-conflict"

#: A run of flights in its own process whose curated commit meets another writer's
#: commit: just before the run's commit task, a real commit (another batch, no rows) lands
#: on the curated table, so the version the merge read is gone.
RACING_RUN = r"""
import json
from datetime import date

from riverlake import lake
from riverlake.flows import pipeline as fp
from riverlake.flows.runner import ensure_result_storage, export_storage_credentials
from riverlake.ops import stack
from riverlake.settings import get_settings

settings = get_settings()
day = date(2013, 1, 31)
stack.deliver_demo_data(settings, "flights", day, day)
real, calls = fp.commit_curated, []


def racing(*args, **kwargs):
    calls.append(len(calls))
    if len(calls) == 1:
        t = lake.table("flights", settings)
        lake.commit(t.uri, [], t.schema, batch=lake.Batch("another-writer"), settings=settings)
    return real(*args, **kwargs)


fp.commit_curated = racing
export_storage_credentials()
storage, _ = ensure_result_storage()
flow = fp.declared_flow("flights").with_options(retries=0, result_storage=storage)
summary = flow(start=day, end=day)
print(json.dumps({"summary": summary, "commit_calls": len(calls)}, default=str))
"""


def test_a_merge_that_meets_another_writers_commit_rebuilds_its_month_whole(stack_env):
    import os
    import subprocess
    import sys

    clear(CONFLICT)
    settings = get_settings(lake_url=CONFLICT)
    first = run(CONFLICT, "--start", "2013-01-30", "--end", "2013-01-30")
    late = late_files()["flights-2013-01-31.update-1.csv"]  # 3 updates, 1 refused, 1 untyped
    put(CONFLICT, {"flights-2013-01-31.update-1.csv": late})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"RIVERLAKE_LAKE_URL": CONFLICT, "PREFECT_API_URL": str(settings.prefect_api_url)}
    res = subprocess.run([sys.executable, "-c", RACING_RUN], capture_output=True, text=True,
                         env=env, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    summary = out["summary"]
    # the conflict happened: the merge's commit was refused, the months were rebuilt whole
    assert out["commit_calls"] == 2
    assert "moved past version" in res.stderr or "is at version" in res.stderr
    assert "another writer committed while it merged" in res.stderr
    assert summary["months_merged"] == [] and summary["curated_skipped"] is False
    batches = [c["batch"] for c in lake.table("flights", settings).commits()]
    assert batches.index(f"flights:{summary['batch']}") < batches.index("another-writer")
    # exactly once: both days, the updates, the refused flight gone; two quarantine records
    src = demo_data.load("flights")
    n30, n31 = (int(((src["month"] == 1) & (src["day"] == d)).sum()) for d in (30, 31))
    assert first["rows_loaded"] == n30
    curated = lake.read_pandas("flights", settings=settings)
    assert len(curated) == n30 + n31 - 1 and not curated.duplicated(KEY).any()
    assert int(((curated["day"] == 30) & (curated["arr_delay"] == 500)).sum()) == 3
    q = lake.read_pandas("flights_quarantine", settings=settings)
    assert sorted(q["failed_check"]) == ["dep_delay:in_range(-120, 1800)", "dep_delay:type"]


# ----------------------------- a composite key with a null part: the month's uniqueness

NULLKEY = "s3://riverlake-test/curation-null-key"
PAIRS = """pairs:
  description: a composite key whose parts may be null
  sources:
  - name: pairs_files
    kind: files
    url: {data}/*.csv
    format: csv
    sink: landing
    table: pairs
    schema: {{id: int64, k: string, day: date, v: int64}}
  curated:
    table: pairs
    key: [id, k]
    event_time: {{column: day, time_zone: UTC}}
    partition_by: [year, month]
"""


def test_a_new_row_whose_composite_key_has_a_null_part_rebuilds_its_month(stack_env, tmp_path):
    """The contract's uniqueness of (id, k) looks across the whole month: a new (null, a)
    next to a held (null, a) fails both, as a whole rebuild finds; merging only the new
    rows would keep all three."""
    from tests.conftest import riverlake_cli

    clear(NULLKEY)
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "pipelines" / "pairs.yaml").write_text(PAIRS.format(data=tmp_path / "data"))
    (tmp_path / "data" / "pairs-1.csv").write_text(
        "id,k,day,v\n1,a,2024-01-01,5\n,a,2024-01-02,6\n"
    )
    env = {"RIVERLAKE_LAKE_URL": NULLKEY}

    def go() -> dict:
        res = riverlake_cli("run", "pairs", "--json", cwd=tmp_path, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        return json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1])

    first = go()
    assert (first["rows_loaded"], first["rows_quarantined"]) == (2, 0)
    (tmp_path / "data" / "pairs-2.csv").write_text("id,k,day,v\n,a,2024-01-03,7\n")
    second = go()
    assert second["months_merged"] == []  # rebuilt whole: a new key with a null part
    settings = get_settings(lake_url=NULLKEY)
    curated = lake.read_pandas("pairs", settings=settings)
    q = lake.read_pandas("pairs_quarantine", settings=settings)
    assert curated["v"].tolist() == [5]  # the two (null, a) rows fail uniqueness together
    assert sorted(json.loads(r)["v"] for r in q["record"]) == ["6", "7"]
    assert set(q["failed_check"]) == {"id+k:unique"}
