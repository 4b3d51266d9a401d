"""The SQL connector loses nothing: rows whose split column is NULL are read, and rows whose
merge key is NULL are quarantined with their reason instead of being inserted on every run.

Against SQLite and the machine's PostgreSQL (127.0.0.1:5432, trust auth, database
``test``): each test creates its own uniquely named table and drops it after. The lake
is a local folder under ``tmp_path``.
"""

from __future__ import annotations

import json
import uuid

import pytest
import sqlalchemy as sa

from riverlake import lake
from riverlake.settings import get_settings
from riverlake.sources import ingest, sql
from riverlake.sources.spec import parse_source
from tests.conftest import need

pytestmark = pytest.mark.integration

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """(url, engine, table): a fresh table name on SQLite or PostgreSQL, dropped after."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'source.sqlite'}"
    else:
        url = PG
        try:
            with sa.create_engine(url, poolclass=sa.pool.NullPool).connect():
                pass
        except sa.exc.OperationalError as e:
            need(False, f"PostgreSQL at 127.0.0.1:5432 is not reachable: {str(e.orig)[:80]}")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    name = f"rl_integrity_{uuid.uuid4().hex[:10]}"
    yield url, engine, name
    with engine.begin() as c:
        c.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
    engine.dispose()


def local(tmp_path):
    return get_settings(lake_url=str(tmp_path / "lake"), home=tmp_path / "home")


def lake_rows(settings, table: str) -> list[dict]:
    return lake.table(table, settings).to_arrow().to_pylist()


def quarantined(settings, source: str) -> list[dict]:
    t = lake.table(lake.SOURCE_QUARANTINE, settings)
    return [] if t is None else [r for r in t.to_arrow().to_pylist() if r["source"] == source]


# ------------------------------------------------------------------ 7: NULL split column


def _insert(engine, table: str, rows: list[tuple[int | None, str, str]]) -> None:
    with engine.begin() as c:
        c.execute(
            sa.text(f"INSERT INTO {table} (id, name, updated_at) VALUES (:id, :name, :u)"),
            [{"id": i, "name": n, "u": u} for i, n, u in rows],
        )


def test_rows_with_a_null_split_column_are_read_not_lost(db, tmp_path):
    url, engine, table = db
    with engine.begin() as c:
        c.execute(sa.text(f"CREATE TABLE {table} (id INTEGER NULL, name TEXT, updated_at TEXT)"))
    first = [(i, f"r{i}", "2024-01-01T00:00:00Z") for i in range(1, 21)]
    first += [(None, f"null{i}", "2024-01-01T00:00:00Z") for i in range(3)]
    _insert(engine, table, first)
    s = local(tmp_path)
    spec = parse_source({"name": "items", "kind": "sql", "url": url, "source_table": table,
                         "columns": ["id", "name", "updated_at"], "cursor_column": "updated_at",
                         "split_column": "id", "partitions": 4, "table": "items",
                         "schema": {"id": "int64", "name": "string", "updated_at": "string"}},
                        s)  # fmt: skip
    units = sql.plan(spec, None, s)
    read = sum(sql.read(spec, s, u).rows_in for u in units)
    assert read == 23, f"the plan's units read {read} of the 23 rows the source holds"
    r = ingest.ingest(spec, s)
    assert (r.rows_in, r.rows_loaded, r.rows_quarantined) == (23, 23, 0)
    got = sorted(row["name"] for row in lake_rows(s, "items"))
    assert got == sorted(n for _, n, _ in first)
    assert ingest.ingest(spec, s).skipped  # the cursor moved past all 23, none lost
    later = [(21, "r21", "2024-02-01T00:00:00Z"), (None, "null3", "2024-02-01T00:00:00Z"),
             (None, "null4", "2024-02-01T00:00:00Z")]  # fmt: skip
    _insert(engine, table, later)
    r = ingest.ingest(spec, s)
    assert (r.rows_in, r.rows_loaded) == (3, 3)
    names = [row["name"] for row in lake_rows(s, "items")]
    assert len(names) == 26 and sorted(names) == sorted(n for _, n, _ in first + later)


def test_a_source_whose_split_column_is_all_null_is_read_whole(db, tmp_path):
    url, engine, table = db
    with engine.begin() as c:
        c.execute(sa.text(f"CREATE TABLE {table} (id INTEGER NULL, name TEXT, updated_at TEXT)"))
    _insert(engine, table, [(None, f"n{i}", "2024-01-01") for i in range(4)])
    s = local(tmp_path)
    spec = parse_source({"name": "items", "kind": "sql", "url": url, "source_table": table,
                         "split_column": "id", "table": "items",
                         "schema": {"id": "int64", "name": "string", "updated_at": "string"}},
                        s)  # fmt: skip
    r = ingest.ingest(spec, s)
    assert (r.rows_in, r.rows_loaded) == (4, 4)
    assert sorted(row["name"] for row in lake_rows(s, "items")) == ["n0", "n1", "n2", "n3"]


# ------------------------------------------------------------------ 10: NULL merge key


def test_null_key_rows_are_quarantined_not_inserted_on_every_run(db, tmp_path):
    url, engine, table = db
    with engine.begin() as c:
        c.execute(sa.text(f"CREATE TABLE {table} (id INTEGER, code TEXT NULL, v INTEGER)"))
        c.execute(
            sa.text(f"INSERT INTO {table} (id, code, v) VALUES (:id, :code, :v)"),
            [{"id": i, "code": code, "v": i * 10}
             for i, code in enumerate(["a", "b", None, "c", "d", "e"], start=1)],
        )  # fmt: skip
    s = local(tmp_path)
    spec = parse_source({"name": "codes", "kind": "sql", "url": url, "source_table": table,
                         "split_column": "id", "partitions": 2, "table": "codes",
                         "key": ["code"],
                         "schema": {"id": "int64", "code": "string", "v": "int64"}},
                        s)  # fmt: skip
    for run in (1, 2):  # no cursor: every run re-reads the whole source and merges it
        r = ingest.ingest(spec, s)
        assert not r.skipped, f"run {run} was skipped"
        assert (r.rows_in, r.rows_loaded, r.rows_quarantined, r.rows_deduplicated) == (
            6, 5, 1, 0), f"run {run}: {r.summary()}"  # fmt: skip
    got = sorted((row["code"] or "<null>", row["id"]) for row in lake_rows(s, "codes"))
    assert got == [("a", 1), ("b", 2), ("c", 4), ("d", 5), ("e", 6)]
    (q,) = quarantined(s, "codes")
    assert q["reason"] == "null key column 'code'"
    assert json.loads(q["original"]) == {"id": 3, "code": None, "v": 30}
