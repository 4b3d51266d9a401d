"""SQL connector (SQLAlchemy): SQLite by default, PostgreSQL or any SQLAlchemy URL.

Incremental by a cursor column: a run reads rows with ``since < cursor <= upto``, where
``upto`` is the column's maximum when the run was planned, so rows written during the
read wait for the next run instead of being half-seen. Parallel by ranges of an
integer split column: each range is one unit, read by its own connection on a Dask
worker; the rows whose split column is NULL (no range holds them) are one more unit.
Identifiers come from the validated spec; values are always bound parameters.

The usual caveat of cursor extraction holds: a row committed later with a cursor value
at or below one already read is not seen (use a database-assigned updated_at).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from riverlake.settings import Settings
from riverlake.sources.base import SourceError, UnitOut, one_line
from riverlake.sources.spec import SqlSource


def engine(spec: SqlSource) -> sa.Engine:
    return sa.create_engine(spec.url, poolclass=sa.pool.NullPool)


def safe_url(spec: SqlSource) -> str:
    return sa.make_url(spec.url).render_as_string(hide_password=True)


def _where(spec: SqlSource, state: dict | None, upto: Any) -> tuple[list[str], dict[str, Any]]:
    clauses, params = [], {}
    if spec.cursor_column:
        since = (state or {}).get("cursor")
        if since is not None:
            clauses.append(f"{spec.cursor_column} > :since")
            params["since"] = since
        clauses.append(f"{spec.cursor_column} <= :upto")
        params["upto"] = upto
    return clauses, params


def _cursor_value(v: Any) -> Any:
    return v.isoformat() if hasattr(v, "isoformat") else v


def plan(spec: SqlSource, state: dict | None, settings: Settings) -> list[dict[str, Any]]:
    try:
        with engine(spec).connect() as conn:
            upto = None
            if spec.cursor_column:
                upto = conn.execute(
                    sa.text(f"SELECT max({spec.cursor_column}) FROM {spec.source_table}")
                ).scalar()
                if upto is None:
                    return []
                upto = _cursor_value(upto)
            clauses, params = _where(spec, state, upto)
            where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
            if spec.split_column:
                col = spec.split_column
                lo, hi, n, n_split = conn.execute(
                    sa.text(
                        f"SELECT min({col}), max({col}), count(*), count({col}) "
                        f"FROM {spec.source_table}{where}"
                    ),
                    params,
                ).one()
            else:
                n = n_split = conn.execute(
                    sa.text(f"SELECT count(*) FROM {spec.source_table}{where}"), params
                ).scalar()
                lo = hi = None
    except sa.exc.SQLAlchemyError as e:
        raise SourceError(
            f"source {spec.name!r}: cannot read {spec.source_table} at {safe_url(spec)}: "
            f"{one_line(getattr(e, 'orig', None) or e)}"
        ) from e
    if not n:
        return []
    base = {"since": (state or {}).get("cursor"), "upto": upto}
    if lo is None:  # no split column, or every row's is NULL: one unit reads them all
        return [{**base, "name": spec.source_table, "lo": None, "hi": None}]
    step = max(1, -(-(int(hi) - int(lo) + 1) // spec.partitions))
    units = [
        {**base, "name": f"{spec.source_table}[{a}:{min(a + step, int(hi) + 1)})", "lo": a,
         "hi": min(a + step, int(hi) + 1)}
        for a in range(int(lo), int(hi) + 1, step)
    ]  # fmt: skip
    if n > n_split:  # rows whose split column is NULL fall in no range
        name = f"{spec.source_table}[{spec.split_column} IS NULL]"
        units.append({**base, "name": name, "lo": None, "hi": None, "split_null": True})
    return units


def read(spec: SqlSource, settings: Settings, unit: dict[str, Any]) -> UnitOut:
    cols = ", ".join(spec.columns) if spec.columns else "*"
    clauses, params = _where(spec, {"cursor": unit["since"]}, unit["upto"])
    if unit.get("split_null"):
        clauses.append(f"{spec.split_column} IS NULL")
    elif unit["lo"] is not None:
        clauses += [f"{spec.split_column} >= :lo", f"{spec.split_column} < :hi"]
        params |= {"lo": unit["lo"], "hi": unit["hi"]}
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    try:
        with engine(spec).connect() as conn:
            result = conn.execute(sa.text(f"SELECT {cols} FROM {spec.source_table}{where}"), params)
            names = list(result.keys())
            rows = result.fetchall()
    except sa.exc.SQLAlchemyError as e:
        raise SourceError(
            f"source {spec.name!r}: cannot read {unit['name']} at {safe_url(spec)}: "
            f"{one_line(getattr(e, 'orig', None) or e)}"
        ) from e
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    table = pa.table({n: pa.array(list(c)) for n, c in zip(names, columns, strict=True)})
    return UnitOut(table=table, rows_in=len(rows))


def next_state(spec: SqlSource, state, units, outs) -> dict[str, Any]:
    if not spec.cursor_column:
        return {"cursor": None, "rows": sum(o.rows_in for o in outs)}
    return {"cursor": units[0]["upto"]}
