"""The README's benchmark figures are the results' (benchmarks/readme.py), never typed."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import readme  # noqa: E402

pytestmark = pytest.mark.unit


def test_the_readme_table_is_the_one_the_results_give():
    """Fails when a result changed and the table was not regenerated, or when someone
    typed into the table: run `python benchmarks/readme.py`."""
    assert readme.in_readme(readme.README.read_text()) == readme.render(readme.load())


def test_every_result_has_its_row_and_every_row_its_result():
    results = readme.load()
    assert set(results) == set(readme.ROWS)
    table = readme.render(results)
    for name, (script, _) in readme.ROWS.items():
        assert f"| `{script}` |" in table, name


def test_a_changed_figure_changes_the_table():
    results = readme.load()
    before = readme.render(results)
    changed = copy.deepcopy(results)
    changed["incremental"]["noop_command_wall_s"]["1y"]["median"] += 1.0
    after = readme.render(changed)
    assert after != before
    old = results["incremental"]["noop_command_wall_s"]["1y"]["median"]
    assert readme._s(old + 1.0) in after and readme._s(old + 1.0) not in before


def test_a_missed_target_reads_not_met():
    results = copy.deepcopy(readme.load())
    for size in results["incremental"]["noop_command_wall_s"].values():
        size["median"] = results["incremental"]["noop_target_s"] + 0.5
    row = next(line for line in readme.render(results).splitlines() if "incremental.py" in line)
    assert "**not met**" in row


def test_spread_and_seconds_read_as_written():
    assert readme._spread({"median": 3.3631, "min": 3.1106, "max": 4.6528}) == (
        "3.36 s (3.11-4.65)"
    )
    assert readme._s(14.716) == "14.7 s"
    assert readme._mb(353988608) == "338 MB"
