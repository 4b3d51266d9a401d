"""Incremental gold, exact: after daily runs, each touching one day, every declared gold
table equals a full recomputation from the curated table, value by value.

The yearly tables (route_stats with exact quantiles, delay_by_hour) are kept as partial
states per curated month and combined; a run recomputes only the touched month's
partials. The test also proves that the runs did touch one month each (so the yearly
values did come from stored partials of the other month), and that the partials tables
hold exactly the months of the curated table."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from riverlake import lake, pipelines
from riverlake.analytics import declared
from riverlake.flows import pipeline as pipeline_module
from riverlake.settings import get_settings
from tests.conftest import riverlake_cli

pytestmark = pytest.mark.integration

LAKE = "s3://riverlake-test/incremental"
DAYS = ["2013-01-30", "2013-01-31", "2013-02-01", "2013-02-02"]


def run_day(lake_url: str, day: str, dask: bool = False) -> dict:
    """A one-day run; its log says how the gold step read the curated rows: a small
    month into pandas (the default), or, with ``dask``, a dask frame on the cluster."""
    env = {"RIVERLAKE_LAKE_URL": lake_url} | ({"RIVERLAKE_GOLD_IN_PANDAS_BYTES": "0"} if dask
                                              else {})  # fmt: skip
    res = riverlake_cli("run", "flights", "--json", "--start", day, "--end", day, env=env,
                        timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    how = re.findall(r"gold reads \d+ curated file\(s\), [\d.]+ MB, (into pandas|as a dask frame)",
                     res.stderr)  # fmt: skip
    assert how and set(how) == {"as a dask frame" if dask else "into pandas"}, how
    return json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1])


def partials(table: str, measure: str | None = None) -> str:
    gold = next(g for g in pipelines.pipeline("flights").gold if g.table == table)
    return pipelines.model.partials_table(gold, measure)


def partial_files(month: int) -> set[str]:
    t = lake.table(partials("route_stats"), get_settings(lake_url=LAKE))
    return {f["path"] for f in t.files() if f["partition_values"]["part_month"] == str(month)}


@pytest.fixture(scope="module")
def daily_runs(stack_env) -> list[dict]:
    runs = []
    for d in DAYS:
        runs.append(run_day(LAKE, d))
        runs[-1]["january_partials"] = partial_files(1)
    return runs


def test_each_daily_run_touched_one_month(daily_runs):
    assert [r["months"] for r in daily_runs] == [["2013-01"], ["2013-01"], ["2013-02"],
                                                 ["2013-02"]]  # fmt: skip
    assert all(r["rows_loaded"] > 0 for r in daily_runs)


def test_incremental_gold_equals_a_full_recomputation(daily_runs):
    settings = get_settings(lake_url=LAKE)
    assert len(lake.read_pandas("flights", settings=settings)) == 3436  # the four days
    assert gold_checked_against_recomputation(settings) == 3


def gold_checked_against_recomputation(settings) -> int:
    """Every declared (not function) gold table equals a full recomputation from the
    curated table, value by value; returns how many tables were checked."""
    p = pipelines.pipeline("flights")
    types = p.curated_types()
    curated = lake.read_pandas("flights", settings=settings)
    checked = 0
    for g in p.gold:
        if g.function is not None:
            continue
        stored = lake.read_pandas(g.table, settings=settings)
        full = declared.gold_table(declared.gold_frame(curated, g),
                                   declared.gold_schema(g, types)).to_pandas()  # fmt: skip
        keys = g.group_keys()
        stored = stored.sort_values(keys).reset_index(drop=True)[full.columns]
        full = full.sort_values(keys).reset_index(drop=True)
        assert len(stored) == len(full) > 0, g.table
        for col in full.columns:
            a, b = stored[col].to_numpy(), full[col].to_numpy()
            if a.dtype.kind == "f":
                np.testing.assert_allclose(a, b, rtol=1e-12, equal_nan=True,
                                           err_msg=f"{g.table}.{col}")  # fmt: skip
            elif a.dtype.kind == "M":  # dates: the lake's reader gives datetime64
                assert (pd.to_datetime(a) == pd.to_datetime(b)).all(), (g.table, col)
            else:
                assert a.astype(str).tolist() == b.astype(str).tolist(), (g.table, col)
        checked += 1
    return checked  # carrier_origin_daily, route_stats, delay_by_hour


def test_partials_hold_exactly_the_curated_months(daily_runs):
    settings = get_settings(lake_url=LAKE)
    for table in (partials("route_stats"), partials("route_stats", "arr_delay_p90"),
                  partials("delay_by_hour")):  # fmt: skip
        parts = lake.read_pandas(table, settings=settings)
        months = sorted(set(zip(parts["part_year"], parts["part_month"], strict=True)))
        assert months == [(2013, 1), (2013, 2)], table
    # the February runs left January's partials as they were: only the touched month's
    # partials are recomputed (January's were last written by the second run)
    jan = [r["january_partials"] for r in daily_runs]
    assert jan[0] != jan[1] and jan[1] == jan[2] == jan[3] and jan[3]


def test_a_month_missing_from_a_quantile_s_counts_is_recomputed(stack_env):
    """The partial tables of a gold table are committed one by one (at once, in threads):
    a run can fail after route_stats' partials took January and before the p90's value
    counts did, leaving that table without January. A later run touching only February
    must recompute January's counts too, or the yearly p90 would leave January out.
    These runs take the gold step's dask path (the other tests' small days read pandas)."""
    url = "s3://riverlake-test/incremental-lost-counts"
    settings = get_settings(lake_url=url)
    fs = lake.filesystem(settings)
    if fs.exists(lake.strip_scheme(url)):
        fs.rm(lake.strip_scheme(url), recursive=True)
    run_day(url, "2013-01-30", dask=True)
    counts = partials("route_stats", "arr_delay_p90")
    # The state such a failure leaves: the counts table was never created (its first
    # commit failed), the main partials hold January.
    fs.rm(lake.strip_scheme(lake.table_uri(counts, settings)), recursive=True)
    fs.invalidate_cache()
    assert lake.table(counts, settings) is None
    main = lake.read_pandas(partials("route_stats"), settings=settings)
    assert set(zip(main["part_year"], main["part_month"], strict=True)) == {(2013, 1)}

    assert run_day(url, "2013-02-01", dask=True)["months"] == ["2013-02"]
    got = lake.read_pandas(counts, settings=settings)
    assert sorted(set(zip(got["part_year"], got["part_month"], strict=True))) == [
        (2013, 1), (2013, 2)]  # fmt: skip
    assert gold_checked_against_recomputation(settings) == 3


def test_a_month_left_stale_in_one_partial_table_is_recomputed(stack_env):
    """A run that rewrites a month (January, again) and fails after route_stats'
    partials took the new January and before one counts table did leaves that table
    with the old January: every table still holds the month, but not the same rows.
    The next run (February) must notice the tables' last batches differ and recompute
    the whole scope, or the yearly p90 keeps the old January for good."""
    url = "s3://riverlake-test/incremental-stale-counts"
    settings = get_settings(lake_url=url)
    fs = lake.filesystem(settings)
    if fs.exists(lake.strip_scheme(url)):
        fs.rm(lake.strip_scheme(url), recursive=True)
    run_day(url, "2013-01-30")
    counts = partials("route_stats", "dep_delay_p90")
    before = lake.table(counts, settings).version
    run_day(url, "2013-01-31")  # January rewritten: the counts table took it at before + 1
    old = lake.read_pandas(counts, version=before, settings=settings)
    # The state the failure leaves: that table's January as it was before the rewrite
    # (committed here by another writer; the other tables hold the new January).
    pipeline_module._replace_months(counts, old, [(2013, 1)], f"{counts}:restore", settings)
    now = lake.read_pandas(counts, settings=settings)["__count"].sum()
    same_column = lake.read_pandas(partials("route_stats", "dep_delay_p50"), settings=settings)
    assert now == old["__count"].sum() < same_column["__count"].sum()  # one day against two
    run_day(url, "2013-02-01")
    assert gold_checked_against_recomputation(settings) == 3
