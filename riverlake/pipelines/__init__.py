"""Pipeline declarations: what each pipeline reads, how big its workers are, how fresh
its tables must be. Data, not code.

The declarations ship as package data (``pipelines.yaml`` beside this module, found
through :mod:`importlib.resources`, so an installed Riverlake has them too); set
``RIVERLAKE_PIPELINES_FILE`` to use a file of your own instead.
"""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from riverlake.errors import RiverlakeError
from riverlake.settings import Settings
from riverlake.sources.spec import SourceSpec, parse_source

#: The freshness policy's default: a table whose last commit is older than this is stale.
DEFAULT_FRESHNESS = timedelta(days=1)


class Pipeline(BaseModel):
    """One declared pipeline (its sources stay raw until :func:`pipeline_sources` fills
    their placeholders from the settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    profile: Literal["small", "standard", "large"] | None = Field(
        None,
        description="Worker size of the pipeline's runs (cluster.WORKER_PROFILES); "
        "unset: RIVERLAKE_WORKER_PROFILE.",
    )
    freshness: timedelta = Field(
        DEFAULT_FRESHNESS,
        description="The freshness policy: a table of this pipeline whose last commit is "
        "older than this is stale (pipeline health, the metrics' alert).",
    )
    sources: list[dict[str, Any]] = Field(default_factory=list)

    def tables(self) -> set[str]:
        return {s["table"] for s in self.sources if "table" in s}


def default_file() -> Path:
    """The declarations that ship with Riverlake (package data)."""
    return Path(str(resources.files(__name__).joinpath("pipelines.yaml")))


def declarations_file(settings: Settings | None = None) -> Path:
    if settings is not None and settings.pipelines_file is not None:
        return Path(settings.pipelines_file)
    return default_file()


@lru_cache(maxsize=8)
def _load(path: Path, mtime: float) -> dict[str, Pipeline]:
    doc = yaml.safe_load(path.read_text()) or {}
    out = {}
    for name, body in doc.items():
        try:
            out[name] = Pipeline(name=name, **(body or {}))
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise RiverlakeError(f"pipeline {name!r} in {path}: {where}: {err['msg']}") from None
    return out


def pipelines(settings: Settings | None = None) -> dict[str, Pipeline]:
    """Every declared pipeline, by name."""
    path = declarations_file(settings)
    if not path.exists():
        raise RiverlakeError(f"pipeline declarations {path} do not exist")
    return _load(path, path.stat().st_mtime)


def pipeline(name: str, settings: Settings | None = None) -> Pipeline:
    found = pipelines(settings)
    if name not in found:
        path = declarations_file(settings)
        raise RiverlakeError(
            f"unknown pipeline {name!r}; declared in {path.name}: {', '.join(sorted(found))}"
        )
    return found[name]


def pipeline_sources(name: str, settings: Settings) -> list[SourceSpec]:
    """The sources declared for pipeline ``name``, placeholders filled from ``settings``."""
    return [parse_source(s, settings) for s in pipeline(name, settings).sources]


def source(pipeline_name: str, name: str, settings: Settings) -> SourceSpec:
    for s in pipeline_sources(pipeline_name, settings):
        if s.name == name:
            return s
    raise RiverlakeError(f"pipeline {pipeline_name!r} has no source {name!r}")


def expected_interval(table: str, settings: Settings | None = None) -> timedelta:
    """The freshness policy of ``table``: its pipeline's, else the default (a day)."""
    for p in pipelines(settings).values():
        if table in p.tables():
            return p.freshness
    return DEFAULT_FRESHNESS
