"""What the apps share: reading lake tables and noticing new commits."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pyarrow as pa

from riverlake import lake
from riverlake.errors import LakeError
from riverlake.settings import get_settings

#: Tables already read, per (lake, table, version, read options): every session of a
#: server process shares them, so only the first session after a commit reads the lake.
#: Frames in here are never modified in place (the apps derive new frames from them).
_CACHE: dict[tuple, tuple[int, pd.DataFrame]] = {}
_CACHE_LOCK = threading.Lock()


def _empty(schema: pa.Schema | None) -> pd.DataFrame:
    return (
        pd.DataFrame() if schema is None else schema.empty_table().to_pandas(date_as_object=False)
    )


def load_table(name: str, schema: pa.Schema | None = None, **kwargs) -> pd.DataFrame:
    """A (small) lake table as pandas; empty, with ``schema``'s columns, when it does not exist.

    The current version is read once per server process and shared by its sessions.
    """
    settings = get_settings()
    version = table_version(name)
    if version is None:
        return _empty(schema)
    key = (settings.lake_url, name, repr(sorted(kwargs.items())))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None and hit[0] == version:
        return hit[1]
    try:
        frame = lake.read_pandas(name, version=version, settings=settings, **kwargs)
    except LakeError:
        return _empty(schema)
    with _CACHE_LOCK:
        _CACHE[key] = (version, frame)  # the older version of this table is dropped
    return frame


#: How long a table's version, once read, is trusted by every session of the process.
VERSION_TTL_S = 5.0
_VERSIONS: dict[tuple[str, str], tuple[float, int | None]] = {}


def table_version(name: str) -> int | None:
    """The table's current version, read at most once per VERSION_TTL_S per process (every
    session's periodic check would otherwise open the table's log)."""
    settings = get_settings()
    key = (settings.lake_url, name)
    now = time.monotonic()
    with _CACHE_LOCK:
        hit = _VERSIONS.get(key)
    if hit is not None and now - hit[0] < VERSION_TTL_S:
        return hit[1]
    dt = lake.open_table(lake.table_uri(name, settings), settings)
    version = None if dt is None else dt.version()
    with _CACHE_LOCK:
        _VERSIONS[key] = (now, version)
    return version


class TableWatcher:
    """Remembers the versions of some tables; :meth:`changed` names those that moved."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.versions: dict[str, int | None] = {}

    def all(self) -> set[str]:
        self.versions = {n: table_version(n) for n in self.names}
        return set(self.names)

    def changed(self) -> set[str]:
        now = {n: table_version(n) for n in self.names}
        moved = {n for n in self.names if now[n] != self.versions.get(n)}
        self.versions = now
        return moved


NAV = [("flights_dashboard", "Flights"), ("big_data", "Every flight"),
       ("table_explorer", "Tables"), ("pipeline_health", "Pipeline health")]  # fmt: skip


def page(title: str, body):
    """An app page: a header with the apps' navigation, then ``body``.

    No Panel template: templates pull web fonts from the internet, which a closed
    network (and a strict browser test) refuses; everything here is served locally.
    """
    import panel as pn

    links = " · ".join(f'<a href="./{app}" style="color:white">{label}</a>' for app, label in NAV)
    header = pn.pane.HTML(
        f'<div style="display:flex;justify-content:space-between;align-items:center">'
        f'<span style="font-size:1.4em;font-weight:600">{title}</span><span>{links}</span></div>',
        styles={"background": "#0b5394", "color": "white", "padding": "10px 16px"},
        sizing_mode="stretch_width",
    )
    return pn.Column(header, body, sizing_mode="stretch_width")
