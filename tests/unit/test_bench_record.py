"""Every benchmark result says where and when it was measured (benchmarks/record.py)."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime

from benchmarks import record
from tests.conftest import ROOT


def test_a_result_carries_its_commit_machine_and_date(tmp_path):
    path = record.write("demo", {"wall_s": record.spread([3.0, 1.0, 2.0])}, results=tmp_path)
    got = json.loads(path.read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=ROOT, check=True).stdout.strip()  # fmt: skip
    assert path == tmp_path / "demo.json" and got["benchmark"] == "demo"
    assert got["commit"] in (head, f"{head}-dirty")
    assert got["machine"]["cpus"] == os.cpu_count()
    assert got["machine"]["cpu_model"] and 0 < got["machine"]["python_loop_s"] < 60
    age = datetime.now(UTC) - datetime.fromisoformat(got["date"])
    assert 0 <= age.total_seconds() < 60
    assert got["wall_s"] == {"median": 2.0, "min": 1.0, "max": 3.0, "all": [3.0, 1.0, 2.0]}


def test_make_bench_runs_every_benchmark_script():
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")} - {"__init__.py", "record.py"}
    make = (ROOT / "Makefile").read_text()
    recipe = make.split("\nbench:", 1)[1].split("\n\n", 1)[0]
    assert {s for s in scripts if f"benchmarks/{s}" in recipe} == scripts


def test_the_calibration_times_the_loop_it_names():
    # a loop 4 times as long takes longer (a machine's speed, not a constant)
    assert record.calibration(4_000_000) > record.calibration(1_000_000) > 0
