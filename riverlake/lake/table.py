"""A lake table's handle: what users of the lake need of a Delta table, and no more.

Code outside the lake never sees a ``DeltaTable``: it asks :func:`table` for a
:class:`Table` and reads its version, batches, history, files, state and rows here.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import pyarrow as pa

from riverlake.lake.names import BATCH_KEY, ROWS_KEY, STATE_PREFIX
from riverlake.lake.store import open_table, table_uri
from riverlake.settings import Settings, get_settings


def partition_value(v: Any) -> str | None:
    """A partition value as Delta's log stores it (a string, or None for null)."""
    return None if v is None else str(v)


def current_files(dt) -> list[dict[str, Any]]:
    """The table's live files: path, size, rows and partition values (as strings).

    ``path`` is the file's path under the table folder as the store names it: the log
    holds it URI-encoded (a partition folder ``p=x%20y`` is ``p=x%2520y`` there), and
    deltalake's add actions return it as logged, so it is decoded here.
    """
    acts = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
    part_cols = dt.metadata().partition_columns
    return [
        {
            "path": unquote(a["path"]),
            "size": a["size_bytes"],
            "rows": a.get("num_records"),
            "partition_values": {c: partition_value(a.get(f"partition.{c}")) for c in part_cols},
            "modification_time": a["modification_time"],
        }
        for a in acts
    ]


def table_schema(dt) -> pa.Schema:
    return pa.schema(dt.schema().to_arrow())


class Table:
    """One lake table at the version it was opened (or last refreshed) at."""

    def __init__(self, name: str, uri: str, dt) -> None:
        self.name, self.uri, self._dt = name, uri, dt

    @property
    def version(self) -> int:
        return self._dt.version()

    @property
    def schema(self) -> pa.Schema:
        return table_schema(self._dt)

    @property
    def partition_by(self) -> list[str]:
        return list(self._dt.metadata().partition_columns)

    def refresh(self) -> Table:
        """Catch up with commits made since this handle was opened."""
        self._dt.update_incremental()
        return self

    def batch_version(self, app_id: str) -> int | None:
        """The version at which batch ``app_id`` was committed (Delta's txn), or None."""
        return self._dt.transaction_version(app_id)

    def has_batch(self, app_id: str, version: int = 1) -> bool:
        got = self.batch_version(app_id)
        return got is not None and got >= version

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Commit infos, newest first (Delta's history, with our metadata keys)."""
        return self._dt.history(limit)

    def commits(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Commits, newest first: version, timestamp (ms), operation, and the batch and
        rows our own commits record (None on others: optimize, vacuum, other writers)."""
        return [
            {
                "version": h.get("version"),
                "timestamp": h.get("timestamp"),
                "operation": h.get("operation"),
                "batch": h.get(BATCH_KEY),
                "rows": int(h[ROWS_KEY]) if ROWS_KEY in h else None,
            }
            for h in self.history(limit)
        ]

    def files(self) -> list[dict[str, Any]]:
        return current_files(self._dt)

    def rows(self) -> int:
        return sum(f["rows"] or 0 for f in self.files())

    def state(self, source: str) -> Any:
        """The state that ``source`` committed last into this table (None: never).

        States ride in commit metadata; commits without one (optimize, other writers)
        are skipped over, newest first.
        """
        key = STATE_PREFIX + source
        for limit in (20, None):
            for h in self._dt.history(limit):
                if key in h:
                    return json.loads(h[key])
            if limit is not None and self._dt.version() < limit:
                break
        return None

    def to_arrow(self, columns: list[str] | None = None,
                 partition: dict[str, Any] | None = None) -> pa.Table:  # fmt: skip
        """The whole table, or one ``partition`` of it ({"year": 2013, "month": 1}), as
        Arrow (small tables: dimensions, quarantine, reports; a curated month)."""
        parts = [(c, "=", partition_value(v)) for c, v in (partition or {}).items()]
        return self._dt.to_pyarrow_table(partitions=parts or None, columns=columns)

    @property
    def delta(self):
        """The underlying ``deltalake.DeltaTable``, for the lake's own modules only."""
        return self._dt


def table(name: str, settings: Settings | None = None, version: int | None = None) -> Table | None:
    """The table ``name``, or None when it does not exist yet."""
    settings = settings or get_settings()
    uri = table_uri(name, settings)
    dt = open_table(uri, settings, version=version)
    return None if dt is None else Table(name, uri, dt)


def table_version(name: str, settings: Settings | None = None) -> int | None:
    """The current version of table ``name`` (None: no such table)."""
    t = table(name, settings)
    return None if t is None else t.version


def committed(name: str, app_id: str, settings: Settings | None = None) -> bool:
    """True when table ``name`` already holds the batch ``app_id``."""
    t = table(name, settings)
    return t is not None and t.batch_version(app_id) is not None


def read_state(name: str, source: str, settings: Settings | None = None) -> Any:
    """The state that ``source`` committed last into table ``name`` (None: never)."""
    t = table(name, settings)
    return None if t is None else t.state(source)
