"""What the apps share: reading lake tables and noticing new commits.

Reads are shared by every session of a server process through Panel's own cache
(``pn.cache``): only the first session after a commit reads the lake.
"""

from __future__ import annotations

import pandas as pd
import panel as pn
import pyarrow as pa

from riverlake import lake
from riverlake.apps.formats import tabulator_formatters
from riverlake.errors import LakeError, RiverlakeError
from riverlake.settings import get_settings

#: How long a table's version, once read, is trusted by every session of the process
#: (every session's periodic check would otherwise open the table's log); 0: never.
VERSION_TTL_S = 5.0


def _empty(schema: pa.Schema | None) -> pd.DataFrame:
    return (
        pd.DataFrame() if schema is None else schema.empty_table().to_pandas(date_as_object=False)
    )


@pn.cache(max_items=64)
def _read(lake_url: str, name: str, version: int, options: tuple) -> pd.DataFrame | None:
    """One version of a table, read once per process; frames in here are never modified
    in place (the apps derive new frames from them)."""
    try:
        return lake.read_pandas(name, version=version, settings=get_settings(), **dict(options))
    except LakeError:
        return None


def load_table(name: str, schema: pa.Schema | None = None, **kwargs) -> pd.DataFrame:
    """A (small) lake table as pandas; empty, with ``schema``'s columns, when it does not exist.

    The current version is read once per server process and shared by its sessions.
    """
    version = table_version(name)
    if version is None:
        return _empty(schema)
    options = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))
    frame = _read(get_settings().lake_url, name, version, options)
    return _empty(schema) if frame is None else frame


@pn.cache(ttl=VERSION_TTL_S)
def _cached_version(lake_url: str, name: str) -> int | None:
    return lake.table_version(name, get_settings())


def table_version(name: str) -> int | None:
    """The table's current version, read at most once per VERSION_TTL_S per process."""
    if VERSION_TTL_S <= 0:
        return lake.table_version(name, get_settings())
    return _cached_version(get_settings().lake_url, name)


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


def declarations() -> tuple[dict, str | None]:
    """The declared pipelines (name -> Pipeline) and None; or nothing and the one-line
    error of a declaration that does not load (an app says so instead of failing)."""
    from riverlake import pipelines

    try:
        return pipelines.pipelines(get_settings()), None
    except RiverlakeError as e:
        return {}, str(e)


def table_widget(frame: pd.DataFrame, **kwargs) -> pn.widgets.Tabulator:
    """A read-only table whose numbers are shown by what they mean (``formats.py``):
    years and ids as written, delays with one decimal, rates as percentages."""
    return pn.widgets.Tabulator(
        frame, disabled=True, show_index=False, formatters=tabulator_formatters(frame), **kwargs
    )


NAV = [("flights_dashboard", "Flights"), ("gold_dashboard", "Dashboards"),
       ("big_data", "Every flight"), ("table_explorer", "Tables"),
       ("pipeline_health", "Pipeline health")]  # fmt: skip


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
