"""A table Riverlake writes is plain Delta Lake: Polars and DuckDB read it, value by
value the rows Riverlake reads."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from riverlake import lake

pytestmark = pytest.mark.unit

polars = pytest.importorskip("polars")
duckdb = pytest.importorskip("duckdb")
deltalake = pytest.importorskip("deltalake")

COLUMNS = ["year", "month", "id", "name", "amount", "ok", "day", "at"]


def _frame(n: int = 40) -> pd.DataFrame:
    return pd.DataFrame({
        "year": pd.array([2020 + i % 2 for i in range(n)], dtype="int32"),
        "month": pd.array([1 + i % 3 for i in range(n)], dtype="int32"),
        "id": pd.array(range(n), dtype="int64"),
        "name": [None if i % 7 == 0 else f"n{i}" for i in range(n)],
        "amount": [None if i % 5 == 0 else i * 1.25 for i in range(n)],
        "ok": [i % 2 == 0 for i in range(n)],
        "day": [dt.date(2020, 1, 1) + dt.timedelta(days=i) for i in range(n)],
        "at": pd.to_datetime([f"2020-01-01T{i % 24:02d}:30:00Z" for i in range(n)]),
    })  # fmt: skip


def _plain(column: str, v: object) -> object:
    """A value as plain Python, the same whichever reader produced it."""
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and v != v):
        return None
    if isinstance(v, pd.Timestamp):
        v = v.to_pydatetime()
    if column == "day" and isinstance(v, dt.datetime):  # a date that pandas shows as midnight
        assert v.time() == dt.time(0) and v.tzinfo is None, v
        return v.date()
    if isinstance(v, dt.datetime):  # one instant, whichever zone the reader shows
        assert v.tzinfo is not None, f"{column}: a UTC timestamp read as naive: {v}"
        return v.astimezone(dt.UTC)
    return v.item() if hasattr(v, "item") else v  # numpy scalars


def _rows(records: list[dict]) -> list[tuple]:
    """Rows as plain Python values in COLUMNS' order, by id: one comparison for all."""
    rows = [tuple(_plain(c, r[c]) for c in COLUMNS) for r in records]
    return sorted(rows, key=lambda r: r[COLUMNS.index("id")])


def _pandas_rows(df: pd.DataFrame) -> list[tuple]:
    return _rows(df.astype(object).to_dict("records"))


@pytest.fixture
def written(settings):
    lake.write_table("interop", _frame(), partition_by=["year", "month"], settings=settings)
    expected = _pandas_rows(lake.read_pandas("interop", settings=settings))
    assert len(expected) == 40
    assert expected[1][3:] == ("n1", 1.25, False, dt.date(2020, 1, 2),
                               dt.datetime(2020, 1, 1, 1, 30, tzinfo=dt.UTC))  # fmt: skip
    return lake.table_uri("interop", settings), expected


def test_polars_reads_a_riverlake_table(written):
    uri, expected = written
    df = polars.read_delta(uri)
    assert dict(df.schema) == {
        "year": polars.Int32, "month": polars.Int32, "id": polars.Int64,
        "name": polars.String, "amount": polars.Float64, "ok": polars.Boolean,
        "day": polars.Date, "at": polars.Datetime("us", "UTC"),
    }  # fmt: skip
    assert _rows(df.to_dicts()) == expected  # Polars' own Python values
    # and its own filter on a partition column
    jan = polars.read_delta(uri).filter((polars.col("year") == 2020) & (polars.col("month") == 1))
    assert sorted(jan["id"].to_list()) == [r[2] for r in expected if r[:2] == (2020, 1)]


def test_duckdb_reads_a_riverlake_table_through_its_arrow_dataset(written):
    uri, expected = written
    ds = deltalake.DeltaTable(uri).to_pyarrow_dataset()
    con = duckdb.connect()
    con.register("interop", ds)
    cols = ", ".join(f'"{c}"' for c in COLUMNS)  # "at" is a keyword of DuckDB's SQL
    got = con.sql(f"select {cols} from interop order by id")
    assert [str(t) for t in got.types] == ["INTEGER", "INTEGER", "BIGINT", "VARCHAR",
                                           "DOUBLE", "BOOLEAN", "DATE",
                                           "TIMESTAMP WITH TIME ZONE"]  # fmt: skip
    assert _rows([dict(zip(COLUMNS, r, strict=True)) for r in got.fetchall()]) == expected
    by_year = con.sql(
        "select year, count(*) as n, sum(amount) as total from interop group by year order by year"
    ).fetchall()
    for year, n, total in by_year:
        rows = [r for r in expected if r[0] == year]
        assert n == len(rows)
        assert total == pytest.approx(sum(r[4] for r in rows if r[4] is not None))
