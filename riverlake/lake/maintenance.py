"""Maintenance: compaction and vacuum of a table's files; pruning old quarantine rows."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from riverlake.errors import LakeError
from riverlake.lake.names import QUARANTINE_SUFFIX, QUARANTINED_AT, SOURCE_QUARANTINE
from riverlake.lake.store import open_table, table_uri
from riverlake.lake.table import current_files, table_schema
from riverlake.settings import Settings, get_settings

log = logging.getLogger(__name__)


def optimize(name: str, target_size: int | None = None, settings: Settings | None = None):
    """Compact small files into larger ones (one commit; readers keep their snapshot)."""
    settings = settings or get_settings()
    dt = open_table(table_uri(name, settings), settings)
    if dt is None:
        raise LakeError(f"table {name!r} does not exist in {settings.lake_url}")
    return dt.optimize.compact(target_size=target_size)


def vacuum(
    name: str,
    retention_hours: int = 168,
    dry_run: bool = False,
    settings: Settings | None = None,
) -> list[str]:
    """Delete files no live version needs and that are older than the retention period.

    ``full`` mode also removes files no commit ever referenced: the orphans of a run
    that died between writing its files and committing them. Files that a running
    writer has written but not committed yet look the same, so a retention below the
    ``vacuum_min_retention_hours`` setting (1 hour by default) is refused.
    """
    settings = settings or get_settings()
    _check_retention(f"vacuum of table {name!r}", retention_hours, settings,
                     "files being written but not committed yet would be deleted")  # fmt: skip
    dt = open_table(table_uri(name, settings), settings)
    if dt is None:
        raise LakeError(f"table {name!r} does not exist in {settings.lake_url}")
    return dt.vacuum(
        retention_hours=retention_hours,
        dry_run=dry_run,
        enforce_retention_duration=False,
        full=True,
    )


def _check_retention(what: str, hours: int, settings: Settings, risk: str) -> None:
    """Refuse a retention below ``vacuum_min_retention_hours``, naming what it risks."""
    minimum = settings.vacuum_min_retention_hours
    if hours < minimum:
        raise LakeError(
            f"{what}: a retention of {hours} hours is below the minimum of {minimum} "
            f"(RIVERLAKE_VACUUM_MIN_RETENTION_HOURS): {risk}"
        )


def is_quarantine(name: str) -> bool:
    """True for the platform's quarantine tables: source_quarantine, <curated>_quarantine."""
    return name == SOURCE_QUARANTINE or name.endswith(QUARANTINE_SUFFIX)


def prune_quarantine(
    name: str,
    older_than: timedelta,
    *,
    retention_hours: int | None = None,
    settings: Settings | None = None,
) -> int:
    """Delete the rows of quarantine table ``name`` quarantined more than ``older_than``
    ago, through Delta (one delete commit), then vacuum the files the log has removed;
    the rows deleted (0: nothing old, no commit; no such table yet: 0).

    When a row was quarantined: ``source_quarantine`` stamps each row (``quarantined_at``).
    A curated table's quarantine has no such column: each run replaces the quarantine
    partitions (year, month) of the months it touches, whole, so a partition's rows were
    quarantined when its files were written, the time the Delta log records for each file.
    A partition goes when all its files are older than the cutoff (a compaction rewrites
    files, which only delays their pruning).

    The vacuum is Delta's lite one: it deletes only files the log has removed (the pruned
    ones and the earlier replaced ones), never a file a writer has written but not
    committed yet; of those, the ones removed at least ``retention_hours`` ago, so that a
    reader of an earlier version (the apps, a merge into source_quarantine) still finds
    its files. By default, and at least: ``vacuum_min_retention_hours``; the files this
    prune removes then go with a later prune's vacuum. The bucket is versioned: deleted
    objects stay as noncurrent versions until the bucket's lifecycle expires them.
    """
    settings = settings or get_settings()
    if not is_quarantine(name):
        raise LakeError(f"{name!r} is not a quarantine table: its rows are not pruned")
    if retention_hours is None:
        retention_hours = settings.vacuum_min_retention_hours
    _check_retention(f"pruning table {name!r}", retention_hours, settings,
                     "a reader of an earlier version would miss its files")  # fmt: skip
    dt = open_table(table_uri(name, settings), settings)
    if dt is None:
        return 0
    cutoff = datetime.now(UTC) - older_than
    predicate = _older_than(name, dt, cutoff)
    deleted = 0
    if predicate is not None:
        metrics = dt.delete(predicate)
        deleted = int(metrics.get("num_deleted_rows") or 0)
        log.info("table %s: %d rows quarantined before %s deleted (version %d)", name, deleted,
                 cutoff.isoformat(timespec="seconds"), dt.version())  # fmt: skip
    removed = dt.vacuum(retention_hours=retention_hours, dry_run=False,
                        enforce_retention_duration=False, full=False)  # fmt: skip
    if removed:
        log.info("table %s: vacuum deleted %d files", name, len(removed))
    return deleted


def _older_than(name: str, dt, cutoff: datetime) -> str | None:
    """The delete predicate of the rows quarantined before ``cutoff`` (None: no row is)."""
    schema = table_schema(dt)
    if QUARANTINED_AT in schema.names:
        stamps = dt.to_pyarrow_table(columns=[QUARANTINED_AT])[QUARANTINED_AT]
        if not any(t is not None and t < cutoff for t in stamps.to_pylist()):
            return None
        return f"{QUARANTINED_AT} < '{cutoff.isoformat()}'"
    part_cols = list(dt.metadata().partition_columns)
    if not part_cols:
        raise LakeError(
            f"table {name!r} has neither a {QUARANTINED_AT} column nor partitions: nothing "
            "tells when its rows were quarantined"
        )
    newest: dict[tuple, int] = {}
    for f in current_files(dt):
        key = tuple(f["partition_values"][c] for c in part_cols)
        newest[key] = max(newest.get(key, 0), f["modification_time"])
    limit = cutoff.timestamp() * 1000
    old = [key for key, ms in newest.items() if ms < limit]
    if not old:
        return None
    types = {c: schema.field(c).type for c in part_cols}
    each = [" AND ".join(_equals(c, v, types[c]) for c, v in zip(part_cols, key, strict=True))
            for key in sorted(old, key=str)]  # fmt: skip
    return " OR ".join(f"({e})" for e in each)


def _equals(column: str, value: str | None, typ: pa.DataType) -> str:
    """``column = value`` in Delta's SQL, for a partition value as the log holds it."""
    if value is None:
        return f'"{column}" IS NULL'
    if pa.types.is_integer(typ):
        return f'"{column}" = {int(value)}'
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        quoted = value.replace("'", "''")
        return f"\"{column}\" = '{quoted}'"
    raise LakeError(f"partition column {column!r} of type {typ} cannot be pruned by")
