"""Names the lake owns, defined once: its folders, the commit metadata keys, the
platform's own tables.

Everything that writes or reads commit metadata, or names a platform table, imports
these; no other module spells them.
"""

from __future__ import annotations

#: Folder of the Delta tables under the lake root.
TABLES = "tables"
#: Folder of the landed raw batches under the lake root.
LANDING = "landing"

#: Commit metadata: the rows a commit wrote.
ROWS_KEY = "riverlake.rows"
#: Commit metadata: the batch (Delta application transaction id) a commit carries.
BATCH_KEY = "riverlake.batch"
#: Commit metadata key prefix of a source's state (cursor, manifest, stream sequence).
STATE_PREFIX = "riverlake.state."

#: Rows (files, pages, records, messages) a source could not read, with the reason.
SOURCE_QUARANTINE = "source_quarantine"
#: Its column of when each row was quarantined (what pruning old rows goes by).
QUARANTINED_AT = "quarantined_at"
#: A curated table's quarantine is named after it with this suffix.
QUARANTINE_SUFFIX = "_quarantine"
#: Rows checked, passed and failed per batch, partition and contract check.
QUALITY_REPORT = "quality_report"

#: How many of a table's latest commits the catalog lists batch ids from.
CATALOG_HISTORY = 100
#: How often a commit that lost a race re-reads the log and tries again.
COMMIT_RETRIES = 5
