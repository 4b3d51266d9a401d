"""The demo is a resource of the local stack, never of the product: with the stack's demo
off, `riverlake run flights` writes no demo data, and a run over an empty drop folder
commits nothing and writes nothing."""

from __future__ import annotations

import json

import pytest

from riverlake import lake
from riverlake.analytics.flights import CURATED_TABLE, DAILY_TABLE, QUARANTINE_TABLE, YEARLY_TABLES
from riverlake.ops import stack
from riverlake.settings import get_settings
from tests.conftest import riverlake_cli

pytestmark = pytest.mark.integration

LAKE = "s3://riverlake-test/nodemo"  # its own lake
DAY = "2013-03-01"


@pytest.fixture
def demo_off(stack_env):
    settings = get_settings()
    assert stack.demo_enabled(settings)  # the test stack serves the demo ...
    stack.set_demo(settings, False)  # ... and is switched off for this test only
    yield
    stack.set_demo(settings, True)


def lake_objects(settings) -> dict[str, int]:
    """Every object of the lake with its size, but Prefect's own result store."""
    fs = lake.filesystem(settings)
    fs.invalidate_cache()
    root = lake.strip_scheme(lake.lake_root(settings))
    found = fs.find(root, detail=True) if fs.exists(root) else {}
    return {p: int(i["size"]) for p, i in found.items() if "/_prefect/" not in p}


def test_without_the_demo_an_empty_drop_folder_loads_nothing(demo_off, tmp_path):
    drops = tmp_path / "drops"
    drops.mkdir()
    env = {"RIVERLAKE_LAKE_URL": LAKE, "RIVERLAKE_DROPS_URL": str(drops)}
    first = riverlake_cli("run", "flights", "--json", "--start", DAY, "--end", DAY, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "demo upstream" not in first.stderr
    assert list(drops.iterdir()) == []  # nobody wrote demo drops
    summary = json.loads(first.stdout)
    assert (summary["rows_in"], summary["landing"]["units"], summary["gold_rows"]) == (0, 0, {})
    settings = get_settings(lake_url=LAKE)
    tables = {t["name"] for t in lake.list_tables(settings)}
    flights_tables = {CURATED_TABLE, QUARANTINE_TABLE, DAILY_TABLE, lake.QUALITY_REPORT,
                      *YEARLY_TABLES}  # fmt: skip
    assert tables  # the dimension sources did load (their upstreams are real sources)
    assert not tables & flights_tables, tables
    before = {t["name"]: t["version"] for t in lake.list_tables(settings)}
    objects = lake_objects(settings)
    again = riverlake_cli("run", "flights", "--start", DAY, "--end", DAY, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {t["name"]: t["version"] for t in lake.list_tables(settings)} == before
    assert lake_objects(settings) == objects  # nothing committed, nothing written
