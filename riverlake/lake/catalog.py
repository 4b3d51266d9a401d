"""The catalog: every table of the lake with its size, partitions, version and batches."""

from __future__ import annotations

import posixpath
from datetime import datetime
from typing import Any

from riverlake.lake.names import BATCH_KEY, CATALOG_HISTORY, TABLES
from riverlake.lake.store import filesystem, lake_root, open_table, strip_scheme, table_uri
from riverlake.lake.table import current_files
from riverlake.settings import Settings, get_settings


def list_tables(settings: Settings | None = None, batches: bool = True) -> list[dict[str, Any]]:
    """Every table in the lake with rows, files, size, partitions, version and last commit;
    with ``batches``, the batch ids of its latest commits too (more of its log to read)."""
    settings = settings or get_settings()
    fs = filesystem(settings)
    root = strip_scheme(f"{lake_root(settings)}/{TABLES}")
    fs.invalidate_cache()  # fsspec caches listings; the catalog must see new tables
    try:
        names = sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        dt = open_table(table_uri(name, settings), settings)
        if dt is None:
            continue
        files = current_files(dt)
        last = dt.history(1)[0]
        parts = dt.metadata().partition_columns
        out.append(
            {
                "name": name,
                "version": dt.version(),
                "rows": sum(f["rows"] or 0 for f in files),
                "files": len(files),
                "size_bytes": sum(f["size"] for f in files),
                "partitions": len({tuple(f["partition_values"].items()) for f in files})
                if parts
                else 0,
                "partition_by": parts,
                "last_commit": datetime.fromtimestamp(last["timestamp"] / 1000).isoformat(
                    timespec="seconds"
                ),
                "last_batch": (last.get(BATCH_KEY) or ""),
            }
        )
        if batches:  # the latest commits' batch ids, newest first (a stream has thousands)
            out[-1]["batches"] = [
                h[BATCH_KEY] for h in dt.history(CATALOG_HISTORY)
                if h.get(BATCH_KEY)
            ]  # fmt: skip
    return out
