"""Table explorer: any lake table's schema, size, versions and sample rows; a quick
group-by chart; the filtered rows as a CSV download."""

from __future__ import annotations

import io

import hvplot.pandas  # noqa: F401
import pandas as pd
import panel as pn
import param
from bokeh.models import NumeralTickFormatter

from riverlake import lake, pipelines
from riverlake.apps.common import declarations, page, table_widget
from riverlake.apps.formats import axis_format, explorer_defaults
from riverlake.errors import RiverlakeError
from riverlake.settings import get_settings

SAMPLE_ROWS = 200
DOWNLOAD_LIMIT = 1_000_000


def declared_keys(table: str) -> list[str]:
    """The key columns the pipeline declarations give ``table`` (``key``, ``id_field``)."""
    try:
        declared = pipelines.pipelines(get_settings()).values()
    except RiverlakeError:
        return []
    return [
        k
        for p in declared
        for s in p.sources
        if s.get("table") == table
        for k in [*(s.get("key") or []), *([s["id_field"]] if s.get("id_field") else [])]
    ]


def default_table(names: list[str], declared: dict) -> str | None:
    """The table shown first: the first declared curated table in the lake, else the
    first table (pure)."""
    curated = [p.curated.table for p in declared.values() if p.curated is not None]
    return next((t for t in curated if t in names), names[0] if names else None)


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


class TableExplorer(pn.viewable.Viewer):
    """Pick a table from the catalog, look at it, group it, download it."""

    table = param.Selector(default=None, objects=[], doc="The table shown.")
    group_by = param.Selector(default=None, objects=[], doc="Column to group by.")
    metric = param.Selector(default=None, objects=[], doc="Numeric column to average.")
    where_column = param.Selector(default=None, objects=[], doc="Filter column (equality).")
    where_value = param.String(default="", doc="Filter value; empty: no filter.")
    catalog = param.List(default=[], doc="lake.list_tables() rows.")

    def __init__(self, **params):
        super().__init__(**params)
        self.load_catalog()

    def load_catalog(self) -> None:
        self.catalog = lake.list_tables(get_settings())
        names = [t["name"] for t in self.catalog]
        self.param.table.objects = names
        if names and self.table not in names:
            self.table = default_table(names, declarations()[0])

    def info(self) -> dict:
        return next((t for t in self.catalog if t["name"] == self.table), {})

    @param.depends("table", watch=True, on_init=True)
    def _columns(self) -> None:
        if not self.table:
            return
        schema = self.schema()
        names = list(schema["column"])
        numeric = [
            r.column for r in schema.itertuples() if r.type.startswith(("int", "double", "float"))
        ]
        groupable = [
            r.column
            for r in schema.itertuples()
            if r.type in ("string", "large_string", "bool") or r.type.startswith("int")
        ]
        # The first chart: a few repeated text values against a measure (formats.py),
        # judged on the sample the Rows tab shows anyway.
        sample = self.sample()
        keys = [*schema.loc[schema["partition"], "column"], *declared_keys(self.table)]
        group, metric = explorer_defaults(
            list(zip(schema["column"], schema["type"], strict=True)),
            distinct={c: int(sample[c].nunique()) for c in sample.columns if c in groupable},
            rows=len(sample),
            keys=keys,
        )
        self.param.group_by.objects = groupable
        self.param.metric.objects = numeric
        self.param.where_column.objects = [None, *names]
        self.param.update(group_by=group, metric=metric)

    def schema(self) -> pd.DataFrame:
        s, parts, _ = lake.table_files(self.table, settings=get_settings())
        return pd.DataFrame(
            {
                "column": s.names,
                "type": [str(t) for t in s.types],
                "partition": [n in parts for n in s.names],
            }
        )

    def history(self) -> pd.DataFrame:
        t = lake.table(self.table, get_settings())
        rows = [] if t is None else t.commits(20)
        frame = pd.DataFrame(rows, columns=["version", "timestamp", "operation", "batch", "rows"])
        frame["time"] = pd.to_datetime(frame.pop("timestamp"), unit="ms")
        return frame[["version", "operation", "time", "batch", "rows"]]

    def filters(self) -> list[tuple]:
        if not self.where_column or self.where_value == "":
            return []
        schema = self.schema().set_index("column")["type"]
        typ = schema[self.where_column]
        value: object = self.where_value
        if typ.startswith("int"):
            value = int(self.where_value)
        elif typ.startswith(("double", "float")):
            value = float(self.where_value)
        elif typ == "bool":
            value = self.where_value.lower() in ("true", "1", "yes")
        return [(self.where_column, "=", value)]

    def rows(self, limit: int = SAMPLE_ROWS) -> pd.DataFrame:
        filters = self.filters()
        if not filters and limit == SAMPLE_ROWS:
            return self.sample()
        ddf = lake.read_table(self.table, filters=filters, settings=get_settings())
        return ddf.head(limit, npartitions=-1, compute=True)

    def sample(self) -> pd.DataFrame:
        """The table's first SAMPLE_ROWS rows, unfiltered; read once per table and version."""
        key = (self.table, self.info().get("version"))
        if getattr(self, "_sample_key", None) != key:
            ddf = lake.read_table(self.table, settings=get_settings())
            self._sample_key = key
            self._sample = ddf.head(SAMPLE_ROWS, npartitions=-1, compute=True)
        return self._sample

    def grouped(self) -> pd.DataFrame:
        cols = [self.group_by] + (
            [self.metric] if self.metric and self.metric != self.group_by else []
        )
        ddf = lake.read_table(
            self.table, columns=cols, filters=self.filters(), settings=get_settings()
        )
        g = ddf.groupby(self.group_by)
        out = g.size().to_frame("rows")
        if self.metric and self.metric != self.group_by:
            out[f"mean_{self.metric}"] = g[self.metric].mean()
        return out.compute().reset_index().sort_values("rows", ascending=False).head(40)

    def csv(self) -> io.BytesIO:
        data = self.rows(DOWNLOAD_LIMIT).to_csv(index=False).encode()
        return io.BytesIO(data)

    @param.depends("table", "catalog")
    def _summary(self):
        i = self.info()
        if not i:
            return pn.pane.Markdown("No tables in the lake yet.")
        return pn.pane.Markdown(
            f"**{i['name']}**: {_count(i['rows'], 'row')}, {_count(i['files'], 'file')}, "
            f"{_count(i['size_bytes'], 'byte')}, {_count(i['partitions'], 'partition')} "
            f"(by {', '.join(i['partition_by']) or 'none'}), "
            f"version {i['version']}, last commit {i['last_commit']}",
            css_classes=["table-summary"],
        )

    @param.depends("table")
    def _schema(self):
        return table_widget(self.schema(), height=300)

    @param.depends("table")
    def _history(self):
        return table_widget(self.history(), height=300)

    @param.depends("table", "where_column", "where_value")
    def _rows(self):
        return table_widget(self.rows(), pagination="remote", page_size=20, css_classes=["rows"])

    @param.depends("table", "group_by", "metric", "where_column", "where_value")
    def _chart(self):
        if not self.group_by:
            return pn.pane.Markdown("Nothing to group by.")
        g = self.grouped()
        y = f"mean_{self.metric}" if f"mean_{self.metric}" in g else "rows"
        # a code (hour, year) is a category: its bars are labelled as written
        g[self.group_by] = g[self.group_by].astype("string")
        return g.hvplot.bar(
            x=self.group_by,
            y=y,
            rot=45,
            height=300,
            responsive=True,
            title=f"{y} by {self.group_by}",
            yformatter=NumeralTickFormatter(format=axis_format(y, g[y].dtype)),
        )

    def __panel__(self):
        download = pn.widgets.FileDownload(
            callback=self.csv, filename="rows.csv", label="Download filtered rows (CSV)"
        )
        controls = pn.Column(
            pn.widgets.Select.from_param(self.param.table, label="Table"),
            pn.widgets.Select.from_param(self.param.where_column, label="Filter column"),
            pn.widgets.TextInput.from_param(self.param.where_value, label="equals"),
            pn.widgets.Select.from_param(self.param.group_by, label="Group by"),
            pn.widgets.Select.from_param(self.param.metric, label="Mean of"),
            download,
            width=300,
        )
        return pn.Row(
            controls,
            pn.Column(
                self._summary,
                pn.Tabs(
                    ("Rows", self._rows),
                    ("Schema", self._schema),
                    ("Versions", self._history),
                    ("Group by", self._chart),
                    dynamic=True,
                ),
                sizing_mode="stretch_width",
            ),
            sizing_mode="stretch_width",
        )


if pn.state.served:
    pn.extension("tabulator", sizing_mode="stretch_width")

    page("Riverlake: table explorer", TableExplorer()).servable(title="Riverlake: table explorer")
