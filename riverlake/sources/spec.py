"""Source specs: each source is configured in the pipeline definition, not in code.

The pipeline declarations (:mod:`riverlake.pipelines`) list every pipeline's sources.
A spec is plain data (validated by pydantic); ``{placeholders}`` in strings are filled
from the settings (``{drops_url}``, ``{api_url}``, ``{sql_url}``, ``{nats_url}``) and
``${env:NAME}`` from the environment, so secrets never sit in the file.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from riverlake.analytics.types import TYPES as ARROW_TYPES
from riverlake.errors import RiverlakeError
from riverlake.settings import Settings

#: Column types a spec may name, as Arrow types.
TYPES = ARROW_TYPES

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


def _ident(value: str) -> str:
    if not _IDENT.match(value):
        raise ValueError(f"{value!r} is not a plain SQL identifier")
    return value


class _Source(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Source name; also names its state in the lake.")
    table: str = Field(description="Lake table the source loads into.")
    schema_: dict[str, str] | None = Field(
        None, alias="schema", description="Column -> type; rows that do not cast are quarantined."
    )
    key: list[str] = Field(
        default_factory=list, description="Natural key: rows merge on it (last one wins)."
    )
    partition_by: list[str] = Field(default_factory=list)

    @field_validator("schema_")
    @classmethod
    def _known_types(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for col, typ in (v or {}).items():
            if typ not in TYPES:
                raise ValueError(f"column {col!r}: unknown type {typ!r}; known: {sorted(TYPES)}")
        return v

    @model_validator(mode="after")
    def _schema_for_tables(self):
        if getattr(self, "sink", "table") == "table" and self.schema_ is None:
            raise ValueError("a source that loads a table needs a schema")
        return self

    def arrow_schema(self) -> pa.Schema | None:
        if self.schema_ is None:
            return None
        return pa.schema([(c, TYPES[t]) for c, t in self.schema_.items()])


class FileSource(_Source):
    """Files on a local path, S3 or HTTP; incremental by a manifest of ingested files."""

    kind: Literal["files"]
    url: str = Field(description="Glob of the files: /path/*.csv.gz, s3://b/p/*.jsonl, http://...")
    format: Literal["csv", "jsonl", "parquet"]
    compression: Literal["infer", "none", "gzip", "zstd"] = "infer"
    delimiter: str = ","
    columns: list[str] = Field(
        default_factory=list,
        description="Columns every file must have (a wrong delimiter shows up here).",
    )
    sink: Literal["table", "landing"] = Field(
        "table",
        description="table: rows go into the Delta table; landing: good files are landed as "
        "CSV under landing/<table>/year=/month=/ for a pipeline that transforms them.",
    )
    landing_time: str | None = Field(
        None,
        description="landing: the column whose date (YYYY-MM-...) gives a row's landing "
        "month (default: the year and month columns). Set from the curated table's "
        "event_time.",
    )

    landing_time_zone: str = Field(
        "UTC", description="landing: the zone of landing_time's naive times (the month is local)."
    )

    @model_validator(mode="after")
    def _landing_columns(self):
        # A landing source's schema is the curated table's typing: every file must have
        # its columns (a file without them is quarantined whole, when it lands).
        if self.sink == "landing" and self.schema_ and not self.columns:
            object.__setattr__(self, "columns", list(self.schema_))
        return self


class HttpSource(_Source):
    """A JSON API, paged; incremental by a cursor field of its records."""

    kind: Literal["http"]
    url: str
    records_path: str = "data"
    pagination: Literal["cursor", "offset", "page"] = "cursor"
    next_cursor_path: str = "next_cursor"
    cursor_param: str = "cursor"
    offset_param: str = "offset"
    page_param: str = "page"
    limit_param: str = "limit"
    page_size: int = Field(500, ge=1)
    total_path: str | None = Field(
        None, description="Offset/page APIs that report a total are read in parallel."
    )
    since_param: str = "since"
    cursor_field: str | None = Field(None, description="Record field that orders updates.")
    headers: dict[str, str] = Field(default_factory=dict)
    token_env: str | None = Field(
        None, description="Environment variable holding a bearer token (sent when set)."
    )
    max_retries: int = Field(5, ge=0)
    backoff_s: float = Field(0.5, gt=0)
    timeout_s: float = Field(30, gt=0)

    @model_validator(mode="after")
    def _cursor_needs_a_key(self):
        # After a page fails, the cursor stays before it and the next run reads the good
        # pages again: merged on the key they change nothing; appended they would double.
        if self.cursor_field and not self.key:
            raise ValueError(
                "an http source with a cursor_field needs a key (pages read "
                "again after a failed page are merged on it, never appended)"
            )
        return self


class SqlSource(_Source):
    """A SQL table (SQLite, PostgreSQL, ... through SQLAlchemy), read in key ranges."""

    kind: Literal["sql"]
    url: str
    source_table: str
    columns: list[str] = Field(default_factory=list)
    cursor_column: str | None = None
    split_column: str | None = Field(None, description="Integer column to split reads by.")
    partitions: int = Field(4, ge=1)

    @field_validator("source_table", "cursor_column", "split_column")
    @classmethod
    def _idents(cls, v: str | None) -> str | None:
        return v if v is None else _ident(v)

    @field_validator("columns")
    @classmethod
    def _cols(cls, v: list[str]) -> list[str]:
        return [_ident(c) for c in v]


class StreamSource(_Source):
    """A NATS JetStream stream, consumed in micro-batches by a durable pull consumer."""

    kind: Literal["stream"]
    url: str
    stream: str
    subjects: list[str]
    durable: str
    batch_size: int = Field(1000, ge=1)
    batch_wait_s: float = Field(0.5, gt=0)
    id_field: str = Field("event_id", description="Message id: duplicates within a batch drop.")
    time_field: str | None = Field(None, description="Event time field (a UTC timestamp).")
    max_age_s: int = Field(7 * 24 * 3600, description="How long the stream keeps messages.")
    max_bytes: int = Field(
        1 << 30, description="Most bytes the stream keeps (the oldest messages go first)."
    )


SourceSpec = Annotated[
    FileSource | HttpSource | SqlSource | StreamSource, Field(discriminator="kind")
]
_ADAPTER: TypeAdapter[SourceSpec] = TypeAdapter(SourceSpec)


_PLACEHOLDER = re.compile(r"(?<!\$)\{([a-z_]+)\}")


def _fill(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, str):

        def setting(m: re.Match) -> str:
            if m.group(1) not in values:
                raise RiverlakeError(
                    f"unknown placeholder {{{m.group(1)}}}; known: {sorted(values)}"
                )
            return values[m.group(1)]

        def env(m: re.Match) -> str:
            if m.group(1) not in os.environ:
                raise RiverlakeError(f"environment variable {m.group(1)} is not set")
            return os.environ[m.group(1)]

        return _ENV.sub(env, _PLACEHOLDER.sub(setting, value))
    if isinstance(value, list):
        return [_fill(v, values) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    return value


def placeholders(settings: Settings) -> dict[str, str]:
    return {
        "drops_url": str(settings.drops_url),
        "api_url": str(settings.api_url),
        "sql_url": str(settings.sql_url),
        "nats_url": str(settings.nats_url),
    }


def parse_source(raw: dict[str, Any], settings: Settings) -> SourceSpec:
    """One spec from its YAML mapping, placeholders filled; a bad spec names the source."""
    raw = {k: (_fill(v, placeholders(settings)) if k != "schema" else v) for k, v in raw.items()}
    # ${env:...} may appear in schema-free fields only; {..} in schema would be a typo anyway.
    try:
        return _ADAPTER.validate_python(raw)
    except ValueError as e:
        first = str(e).splitlines()
        detail = " ".join(line.strip() for line in first[1:3])
        raise RiverlakeError(f"source {raw.get('name', '?')!r} is misconfigured: {detail}") from e
