"""The pipeline declaration: what a pipeline reads, the curated table it builds, its
contract, its transforms, its gold tables and its schedule. Data, validated here.

Every check that can be made without running anything is made when the declarations
load, so a mistake is one line naming the pipeline and the field, before anything is
written: an unknown column, a key or partition column the table does not have, a
measure on a column that is not numeric, a transform path that does not import, a join
with a table no pipeline writes (the last two in :func:`check_references`, which sees
every declaration).
"""

from __future__ import annotations

import importlib
import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from riverlake.sources.spec import TYPES

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NUMERIC = {"int32", "int64", "float64", "bool"}
#: Columns a curated table may derive from its event time.
TIME_PARTS = ("year", "month", "day")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _column(value: str) -> str:
    if not _COLUMN.match(value):
        raise ValueError(f"{value!r} is not a column name (letters, digits, _)")
    return value


def import_path(path: str) -> Any:
    """The object at ``package.module:name`` (or ``package.module.name``)."""
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module or not attr:
        raise ValueError(f"{path!r} is not a dotted path (package.module:function)")
    try:
        obj = importlib.import_module(module)
    except Exception as e:
        raise ValueError(f"{path!r} does not import: {type(e).__name__}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{path!r} does not import: {module} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{path!r} is not a function")
    return obj


class Rule(_Model):
    """A column's contract: nullability, range, allowed values, pattern."""

    nullable: bool = True
    min: int | float | None = None
    max: int | float | None = None
    isin: list[Any] | None = Field(None, description="The allowed values.")
    pattern: str | None = Field(None, description="A regular expression the text must match.")

    @field_validator("pattern")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"pattern {v!r} is not a regular expression: {e}") from None
        return v


class Join(_Model):
    """An enrichment join with another table of the lake (a left join: no row is lost).

    ``keys`` maps this frame's columns to the other table's; ``columns`` lists the other
    table's columns to bring (a mapping renames them). The other table is read once per
    task and deduplicated on its join keys (the first row wins), so it must be small.
    """

    join: str = Field(description="The lake table to join with.")
    keys: dict[str, str] = Field(description="This frame's column -> the other table's.")
    columns: list[str] | dict[str, str]

    @field_validator("keys")
    @classmethod
    def _some_keys(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("a join needs at least one key column")
        for a, b in v.items():
            _column(a), _column(b)
        return v

    def renames(self) -> dict[str, str]:
        return self.columns if isinstance(self.columns, dict) else {c: c for c in self.columns}


class Function(_Model):
    """A user's pure function, a pandas frame in and a frame out, run per partition on the
    Dask workers (``package.module:function``).

    ``row_wise: true`` promises that each output row depends on its input row alone (no
    look across the month: no rolling window, rank or group) and that the key is left as
    it is: then a month that gets new landed files curates only their rows and merges
    them into the rows it holds, and a large month is curated in parts by its key. Without
    the promise a touched month is rebuilt whole, in one part.
    """

    function: str
    row_wise: bool = Field(
        False, description="Each row's output depends on that row alone (see the class)."
    )

    @field_validator("function")
    @classmethod
    def _imports(cls, v: str) -> str:
        import_path(v)
        return v


def _step_kind(v: Any) -> str | None:
    if isinstance(v, dict):
        return "join" if "join" in v else "function" if "function" in v else None
    return "join" if isinstance(v, Join) else "function" if isinstance(v, Function) else None


#: A curated table's step: a join (``join: table``) or a function (``function: path``).
Step = Annotated[
    Annotated[Join, Tag("join")] | Annotated[Function, Tag("function")],
    Discriminator(_step_kind, custom_error_type="step",
                  custom_error_message="a step is a join (join: table) or a function "
                  "(function: package.module:function)"),
]  # fmt: skip


class EventTime(_Model):
    column: str
    time_zone: str = Field(
        "UTC", description="The zone of local (naive) times; stored in UTC, partitioned local."
    )

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class Curated(_Model):
    """The curated table a landing source becomes: typed, deduplicated, transformed,
    checked by its contract; partitioned by landing month so a run replaces exactly the
    months it touched."""

    table: str
    source: str | None = Field(
        None, description="The landing source it is built from (default: the only one)."
    )
    key: list[str] = Field(description="The natural key: one row per key (last landed wins).")
    event_time: EventTime | None = None
    partition_by: list[str] = Field(
        default_factory=lambda: ["year", "month"],
        description="Starts with year and month (the landing months a run rebuilds); "
        "year, month and day derive from event_time when the source has no such column.",
    )
    dedupe: Literal["last"] = Field("last", description="Last landed record of a key wins.")
    columns: dict[str, str] | None = Field(
        None,
        description="Column -> type of the curated table, in order (default: the partition "
        "columns, then the source's schema, then what the joins bring).",
    )
    steps: list[Step] = Field(default_factory=list)
    contract: dict[str, Rule] = Field(default_factory=dict)

    @property
    def row_wise(self) -> bool:
        """Every step maps a row on its own (joins do; functions promise it): new landed
        rows can be curated apart from the month's and merged into it on the key."""
        return all(getattr(s, "row_wise", True) for s in self.steps)

    @model_validator(mode="after")
    def _shape(self):
        if self.partition_by[:2] != ["year", "month"]:
            raise ValueError(
                "partition_by must start with year, month (the landing months a run rebuilds)"
            )
        for col, typ in (self.columns or {}).items():
            _column(col)
            if typ not in TYPES:
                raise ValueError(f"columns.{col}: unknown type {typ!r}; known: {sorted(TYPES)}")
        if not self.key:
            raise ValueError("key: a curated table needs a natural key")
        return self


class Measure(_Model):
    """One measure of a gold table. Exactly one of the aggregate fields is set."""

    count: str | None = Field(None, description="'*' for rows, or a column's non-null values.")
    sum: str | None = None
    mean: str | None = None
    min: str | None = None
    max: str | None = None
    quantile: str | None = None
    q: float | None = Field(None, ge=0, le=1, description="The quantile (exact).")
    rate: str | None = Field(None, description="A condition: 'arr_delay < 15'.")
    of: str | None = Field(
        None, description="rate: over rows where this column is not null (default: all)."
    )
    count_where: str | None = Field(None, description="Rows where a condition holds.")

    @model_validator(mode="before")
    @classmethod
    def _short(cls, v: Any) -> Any:
        return {"count": "*"} if v == "count" else v

    @model_validator(mode="after")
    def _one(self):
        set_ = [f for f in AGGREGATES if getattr(self, f) is not None]
        if len(set_) != 1:
            raise ValueError(f"a measure sets exactly one of {', '.join(AGGREGATES)}")
        if (self.quantile is None) != (self.q is None):
            raise ValueError("a quantile measure needs q (0-1), and only it")
        return self

    @property
    def how(self) -> str:
        return next(f for f in AGGREGATES if getattr(self, f) is not None)

    @property
    def column(self) -> str | None:
        """The column the measure reads (None for a count of rows or a condition)."""
        v = getattr(self, self.how)
        if self.how in ("rate", "count_where") or v == "*":
            return None
        return v


AGGREGATES = ("count", "sum", "mean", "min", "max", "quantile", "rate", "count_where")


class TimeBin(_Model):
    column: str
    every: Literal["hour", "day", "week", "month", "year"]
    name: str | None = Field(None, description="The bin's column (default: the time column).")

    @property
    def output(self) -> str:
        return self.name or self.column


class Chart(_Model):
    """The default chart of a gold table on the generic dashboard."""

    y: str = Field(description="The measure to plot.")
    x: str = Field(description="A time column (a line) or a key (bars).")
    by: str | None = Field(None, description="A key column: one line or bar group per value.")


class Gold(_Model):
    """A gold table: group-by keys, an optional time bin and measures, or a function
    (``package.module:function``, the curated frame in, a pandas frame out). The frame
    is pandas when the touched files are small (``gold_in_pandas_bytes``, a daily run)
    and dask otherwise: a function takes either (``analytics.analysis.is_dask``)."""

    table: str
    by: list[str] = Field(default_factory=list)
    time_bin: TimeBin | None = None
    measures: dict[str, Measure] = Field(default_factory=dict)
    function: str | None = None
    columns: list[str] | None = Field(
        None,
        description="The curated columns a function reads (default: every one): the gold "
        "step reads only these and the partition columns.",
    )
    partition_by: list[str] | None = Field(
        None,
        description="Of the curated partition columns, those the table keeps: a run "
        "recomputes the touched ones (default: those among its keys).",
    )
    chart: Chart | None = None

    @model_validator(mode="after")
    def _either(self):
        if (self.function is None) == (not self.measures):
            raise ValueError("a gold table has measures or a function, not both or neither")
        if self.columns is not None and self.function is None:
            raise ValueError(
                "columns names what a function reads (a table with measures reads its own)"
            )
        if self.function is not None:
            import_path(self.function)
        return self

    def group_keys(self) -> list[str]:
        return [*([self.time_bin.output] if self.time_bin else []), *self.by]


class Schedule(_Model):
    cron: str | None = None
    interval: int | None = Field(None, ge=1, description="Seconds between runs.")
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _one(self):
        if (self.cron is None) == (self.interval is None):
            raise ValueError("a schedule has a cron or an interval")
        return self


class Pipeline(_Model):
    """One declared pipeline (its sources stay raw until :func:`pipeline_sources` fills
    their placeholders from the settings)."""

    name: str
    description: str = ""
    profile: Literal["small", "standard", "large"] | None = Field(
        None,
        description="Worker size of the pipeline's runs (cluster.WORKER_PROFILES); "
        "unset: RIVERLAKE_WORKER_PROFILE.",
    )
    freshness: timedelta = Field(
        timedelta(days=1),
        description="The freshness policy: a table of this pipeline whose last commit is "
        "older than this is stale (pipeline health, the metrics' alert).",
    )
    schedule: Schedule | None = None
    retries: int = Field(1, ge=0, le=10)
    concurrency: Literal["enqueue", "cancel_new"] = Field(
        "enqueue", description="A run due while one runs waits (enqueue) or is dropped."
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Parameters of its scheduled runs."
    )
    flow: str | None = Field(
        None, description="A flow of its own (package.module:flow) instead of the generic one."
    )
    sources: list[dict[str, Any]] = Field(default_factory=list)
    curated: Curated | None = None
    gold: list[Gold] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r}: a pipeline name is lower case letters, digits and _")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.flow is not None and ":" not in self.flow:  # imported when run (it imports
            raise ValueError(f"flow: {self.flow!r} is not package.module:flow")  # Prefect)
        if self.curated is not None:
            self._check_curated(self.curated)
        for i, g in enumerate(self.gold):
            if self.curated is None:
                raise ValueError(f"gold.{i}: gold tables need a curated table")
            self._check_gold(i, g)
        return self

    def landing_source(self) -> dict[str, Any] | None:
        if self.curated is None:
            return None
        landing = [s for s in self.sources if s.get("sink") == "landing"]
        if self.curated.source is not None:
            landing = [s for s in landing if s.get("name") == self.curated.source]
        return landing[0] if len(landing) == 1 else None

    def _check_curated(self, c: Curated) -> None:
        src = self.landing_source()
        if src is None:
            raise ValueError(
                "curated.source: a curated table is built from exactly one source with "
                "sink: landing" + (f" named {c.source!r}" if c.source else "")
            )
        if src.get("table") != c.table:
            raise ValueError(f"curated.table: {c.table!r} is not the landing source's table "
                             f"{src.get('table')!r}")  # fmt: skip
        raw = dict(src.get("schema") or {})
        if not raw:
            raise ValueError(f"sources.{src.get('name')}: the landing source needs a schema "
                             "(its columns' types)")  # fmt: skip
        if c.event_time is not None and c.event_time.column not in raw:
            raise ValueError(f"curated.event_time.column: {c.event_time.column!r} is not a "
                             "column of the source's schema")  # fmt: skip
        for p in c.partition_by:
            if p not in raw and not (p in TIME_PARTS and c.event_time is not None):
                raise ValueError(f"curated.partition_by: {p!r} is not a column of the source "
                                 "(declare event_time to derive year, month, day)")  # fmt: skip
        available = self.curated_types(assume_functions=False)
        if any(isinstance(s, Function) for s in c.steps):
            available = None  # a function may add or drop any column
        for name, rule in c.contract.items():
            if available is not None and name not in available:
                raise ValueError(f"curated.contract.{name}: no such column")
            typ = (available or c.columns or {}).get(name)
            words = [v for v in rule.isin or [] if isinstance(v, bool) or v is None]
            if typ == "string" and words:
                raise ValueError(
                    f"curated.contract.{name}.isin: {words[0]!r} is not text (YAML reads "
                    "NO, yes, off... as booleans): quote it, e.g. 'NO'"
                )
            if (rule.min is not None or rule.max is not None) and typ not in (None, *NUMERIC):
                raise ValueError(f"curated.contract.{name}: a range needs a number, not {typ}")
        typed = self.curated_types(assume_functions=True)
        for k in c.key:
            if k not in typed:
                raise ValueError(f"curated.key: {k!r} is not a column of the curated table")
        for i, step in enumerate(c.steps):
            if isinstance(step, Join):
                missing = [a for a in step.keys if a not in raw and a not in typed
                           and available is not None]  # fmt: skip
                if missing:
                    raise ValueError(f"curated.steps.{i}.keys: no column {missing[0]!r} to join on")

    def curated_types(self, assume_functions: bool = True) -> dict[str, str]:
        """The curated table's columns and types: declared, or derived from the source's
        schema, the partition columns and the joins (whose types the lake knows only at
        run time: recorded as ``None`` here... as string)."""
        c = self.curated
        assert c is not None
        if c.columns is not None and assume_functions:
            return dict(c.columns)
        src = self.landing_source() or {}
        raw = dict(src.get("schema") or {})
        out = {p: "int32" for p in c.partition_by if p not in raw}
        out |= raw
        for step in c.steps:
            if isinstance(step, Join):
                out |= {new: "?" for new in step.renames().values()}
        if c.columns is not None:
            out |= c.columns
        return out

    def _check_gold(self, i: int, g: Gold) -> None:
        c = self.curated
        assert c is not None
        types = self.curated_types()
        where = f"gold.{i} ({g.table})"
        clash = [m for m in g.measures if m in g.group_keys()]
        if clash:
            raise ValueError(f"{where}.measures.{clash[0]}: a measure named like a key")
        for k in g.by:
            if k not in types:
                raise ValueError(f"{where}.by: {k!r} is not a column of {c.table}")
        for k in g.columns or ():
            if k not in types:
                raise ValueError(f"{where}.columns: {k!r} is not a column of {c.table}")
        if g.time_bin is not None and g.time_bin.column not in types:
            raise ValueError(f"{where}.time_bin.column: {g.time_bin.column!r} is not a column")
        for name, m in g.measures.items():
            col = m.column
            if col is not None and col not in types:
                raise ValueError(f"{where}.measures.{name}: {col!r} is not a column of {c.table}")
            numeric_only = m.how in ("sum", "mean", "quantile")
            if col is not None and numeric_only and types[col] not in (*NUMERIC, "?"):
                raise ValueError(
                    f"{where}.measures.{name}: {m.how} of {col!r} needs a number, not {types[col]}"
                )
            for cond in (m.rate, m.count_where):
                if cond is not None:
                    from riverlake.analytics.declared import parse_condition

                    try:
                        col_c = parse_condition(cond)[0]
                    except ValueError as e:
                        raise ValueError(f"{where}.measures.{name}: {e}") from None
                    if col_c not in types:
                        raise ValueError(f"{where}.measures.{name}: {col_c!r} is not a column")
            if m.of is not None and m.of not in types:
                raise ValueError(f"{where}.measures.{name}.of: {m.of!r} is not a column")
        for p in g.partition_by or []:
            if p not in c.partition_by or (g.function is None and p not in g.group_keys()):
                raise ValueError(f"{where}.partition_by: {p!r} must be a key of the table "
                                 f"and a partition column of {c.table}")  # fmt: skip
        if g.chart is not None:
            cols = {*g.group_keys(), *g.measures}
            for f in ("x", "y", "by"):
                v = getattr(g.chart, f)
                if v is not None and g.function is None and v not in cols:
                    raise ValueError(f"{where}.chart.{f}: {v!r} is not a key or measure")

    def gold_partition_by(self, g: Gold) -> list[str]:
        assert self.curated is not None
        if g.partition_by is not None:
            return list(g.partition_by)
        keys = g.group_keys()
        out = []
        for p in self.curated.partition_by:  # a prefix of the curated partitioning
            if p not in keys:
                break
            out.append(p)
        return out

    def incremental(self, g: Gold) -> bool:
        """A declared aggregate over more than a month (a year, all time) is kept as
        mergeable partial states per curated month, so a run recomputes only the touched
        months' partials and combines the stored ones."""
        return g.function is None and self.gold_partition_by(g)[:2] != ["year", "month"]

    def partial_tables(self, g: Gold) -> list[str]:
        if not self.incremental(g):
            return []
        quantiles = [n for n, m in g.measures.items() if m.how == "quantile"]
        return [partials_table(g), *(partials_table(g, n) for n in quantiles)]

    def tables(self) -> set[str]:
        out = {s["table"] for s in self.sources if "table" in s}
        if self.curated is not None:
            out |= {self.curated.table, quarantine_table(self.curated.table)}
        return out | {t for g in self.gold for t in (g.table, *self.partial_tables(g))}


def quarantine_table(table: str) -> str:
    """The quarantine table of a curated table."""
    return f"{table}_quarantine"


def partials_table(gold: Gold, measure: str | None = None) -> str:
    """Where a gold table keeps its partial states per curated month (a quantile
    measure's value counts in a table of their own). The name carries a fingerprint of
    the gold's declaration (keys, time bin, measures): a changed declaration starts new
    partials, recomputed for every month, never combined with states of another shape."""
    import hashlib

    shape = gold.model_dump_json(include={"by", "time_bin", "measures"})
    tag = hashlib.sha256(shape.encode()).hexdigest()[:8]
    base = f"{gold.table}__partials_{tag}"
    return base if measure is None else f"{base}__counts__{measure}"
