"""The lake: Delta tables of partitioned Parquet on S3 (or a local path).

The only package that opens a Delta table. Everything else reads tables, versions,
history, files and commit info through this API:

- :mod:`~riverlake.lake.store`: where the lake lives (root, filesystem, locations);
- :mod:`~riverlake.lake.table`: a table's handle (:func:`table`, :class:`Table`);
- :mod:`~riverlake.lake.write`: parallel file writes, then one atomic commit;
- :mod:`~riverlake.lake.read`: a table as a dask DataFrame, pruned by partition;
- :mod:`~riverlake.lake.catalog`: every table with its size and batches;
- :mod:`~riverlake.lake.maintenance`: compaction, vacuum, pruning old quarantine rows;
- :mod:`~riverlake.lake.names`: the folders, commit metadata keys and platform tables.

Layout under ``settings.lake_url``::

    landing/<source>/...        raw batches, immutable
    tables/<name>/_delta_log    curated and gold Delta tables
"""

from riverlake.lake.catalog import list_tables
from riverlake.lake.maintenance import is_quarantine, optimize, prune_quarantine, vacuum
from riverlake.lake.names import (
    BATCH_KEY,
    LANDING,
    QUALITY_REPORT,
    QUARANTINE_SUFFIX,
    QUARANTINED_AT,
    ROWS_KEY,
    SOURCE_QUARANTINE,
    STATE_PREFIX,
    TABLES,
)
from riverlake.lake.read import read_files, read_fragment, read_pandas, read_table, table_files
from riverlake.lake.store import (
    check_store,
    filesystem,
    fs_options,
    lake_root,
    landing_uri,
    s3_client_options,
    storage_options,
    strip_scheme,
    table_uri,
)
from riverlake.lake.table import Table, committed, read_state, table, table_version
from riverlake.lake.write import (
    Batch,
    CommitConflict,
    CommitResult,
    WriteMode,
    commit,
    last_per_key,
    merge_table,
    null_key_rows,
    schema_changes,
    write_fragments,
    write_table,
)

__all__ = [
    "BATCH_KEY", "LANDING", "QUALITY_REPORT", "QUARANTINED_AT", "QUARANTINE_SUFFIX", "ROWS_KEY",
    "SOURCE_QUARANTINE", "STATE_PREFIX", "TABLES", "Batch", "CommitConflict", "CommitResult",
    "Table", "WriteMode", "check_store", "commit", "committed", "filesystem", "fs_options",
    "is_quarantine", "lake_root", "landing_uri", "last_per_key", "list_tables", "merge_table",
    "null_key_rows", "optimize", "prune_quarantine", "read_files", "read_fragment", "read_pandas",
    "read_state",
    "read_table", "s3_client_options", "schema_changes", "storage_options", "strip_scheme",
    "table", "table_files",
    "table_uri", "table_version", "vacuum", "write_fragments", "write_table",
]  # fmt: skip
