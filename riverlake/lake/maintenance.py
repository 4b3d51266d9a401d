"""Maintenance: compaction and vacuum of a table's files."""

from __future__ import annotations

from riverlake.errors import LakeError
from riverlake.lake.store import open_table, table_uri
from riverlake.settings import Settings, get_settings


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
    minimum = settings.vacuum_min_retention_hours
    if retention_hours < minimum:
        raise LakeError(
            f"vacuum of table {name!r}: a retention of {retention_hours} hours is below the "
            f"minimum of {minimum} (RIVERLAKE_VACUUM_MIN_RETENTION_HOURS): files being "
            "written but not committed yet would be deleted"
        )
    dt = open_table(table_uri(name, settings), settings)
    if dt is None:
        raise LakeError(f"table {name!r} does not exist in {settings.lake_url}")
    return dt.vacuum(
        retention_hours=retention_hours,
        dry_run=dry_run,
        enforce_retention_duration=False,
        full=True,
    )
