"""What every benchmark writes: its result, with the commit, the machine and the date, as
``benchmarks/results/<name>.json`` (also printed), and the spread of repeated timings.

One writer, so every result says where it was measured and results stay comparable.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def spread(values: list[float]) -> dict[str, Any]:
    """The median of repeated timings, their range and every value, in the order run."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "all": list(values)}  # fmt: skip


def provenance() -> dict[str, Any]:
    """The commit measured ("-dirty" when the work tree had changes), the date, the machine."""

    def git(*args: str) -> str:
        res = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)
        return res.stdout.strip() if res.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    return {
        "commit": commit,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "python": platform.python_version(),
            "system": f"{platform.system()} {platform.machine()}",
            "python_loop_s": calibration(),
        },
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def calibration(n: int = 5_000_000) -> float:
    """The machine's speed at plain Python, to compare results measured on different
    machines of the same size: the median of 3 timings of a loop of ``n`` additions
    (machines of the same kind differed by 2 times)."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        total = 0
        for i in range(n):
            total += i
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 3)


def write(name: str, result: dict[str, Any], results: Path = RESULTS) -> Path:
    """Write ``result`` with its provenance to ``results/<name>.json`` and print it."""
    out = {"benchmark": name, **provenance(), **result}
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    text = json.dumps(out, indent=2, default=str)
    path.write_text(text + "\n")
    print(text, flush=True)
    return path
