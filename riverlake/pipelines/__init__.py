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
from typing import Any

import yaml
from pydantic import ValidationError

from riverlake.errors import RiverlakeError
from riverlake.pipelines.model import Join, Pipeline, quarantine_table
from riverlake.settings import Settings
from riverlake.sources.spec import SourceSpec, parse_source

__all__ = ["DEFAULT_FRESHNESS", "Pipeline", "pipeline", "pipeline_sources", "pipelines",
           "quarantine_table", "source"]  # fmt: skip

#: The freshness policy's default: a table whose last commit is older than this is stale.
DEFAULT_FRESHNESS = timedelta(days=1)


def default_file() -> Path:
    """The declarations that ship with Riverlake (package data)."""
    return Path(str(resources.files(__name__).joinpath("pipelines.yaml")))


def declarations_file(settings: Settings | None = None) -> Path:
    if settings is not None and settings.pipelines_file is not None:
        return Path(settings.pipelines_file)
    return default_file()


def declaration_files(settings: Settings | None = None) -> list[Path]:
    """The shipped declarations (or RIVERLAKE_PIPELINES_FILE), then every ``*.yaml`` of
    the pipelines folder (RIVERLAKE_PIPELINES_DIR, default ``./pipelines``): where
    ``riverlake new`` writes a user's own."""
    if settings is None:
        from riverlake.settings import get_settings

        settings = get_settings()
    files = [declarations_file(settings)]
    folder = settings.pipelines_dir
    if folder is not None and Path(folder).is_dir():
        files += sorted(Path(folder).glob("*.yaml"))
    return files


def _one_line(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = list(err["loc"])
    # a step's union tag (steps.0.join.keys) is not a field: steps.0.keys
    loc = [p for i, p in enumerate(loc)
           if not (i >= 2 and loc[i - 2] == "steps" and p in ("join", "function"))]  # fmt: skip
    where = ".".join(str(p) for p in loc)
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def parse(doc: dict[str, Any], path: Path | str) -> dict[str, Pipeline]:
    """Declarations from a YAML document (name -> body); the first mistake is one line
    naming the file, the pipeline and the field."""
    out = {}
    if not isinstance(doc, dict):
        raise RiverlakeError(f"{path}: not a mapping of pipeline names to declarations")
    for name, body in doc.items():
        if not isinstance(body, dict | None):
            raise RiverlakeError(f"pipeline {name!r} in {path}: not a mapping")
        try:
            out[name] = Pipeline(name=name, **(body or {}))
        except ValidationError as e:
            raise RiverlakeError(f"pipeline {name!r} in {path}: {_one_line(e)}") from None
    return out


def check_references(found: dict[str, Pipeline], where: dict[str, Path]) -> None:
    """What one declaration cannot check alone: tables written twice, joins with a
    table no pipeline writes."""
    owner: dict[str, str] = {}
    for p in found.values():
        for t in sorted(p.tables()):
            if t in owner and owner[t] != p.name:
                raise RiverlakeError(f"pipeline {p.name!r} in {where[p.name]}: table {t!r} is "
                                     f"already written by pipeline {owner[t]!r}")  # fmt: skip
            owner[t] = p.name
    for p in found.values():
        for i, step in enumerate(p.curated.steps if p.curated else []):
            if isinstance(step, Join) and step.join not in owner:
                raise RiverlakeError(
                    f"pipeline {p.name!r} in {where[p.name]}: curated.steps.{i}.join: unknown "
                    f"table {step.join!r} (no declared pipeline writes it)"
                )


@lru_cache(maxsize=8)
def _load(paths: tuple[tuple[Path, float], ...]) -> dict[str, Pipeline]:
    out: dict[str, Pipeline] = {}
    where: dict[str, Path] = {}
    for path, _ in paths:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise RiverlakeError(f"{path}: not YAML: {str(e).splitlines()[0]}") from None
        for name, p in parse(doc, path).items():
            if name in out:
                raise RiverlakeError(f"pipeline {name!r} in {path} is already declared in "
                                     f"{where[name]}")  # fmt: skip
            out[name], where[name] = p, path
    check_references(out, where)
    return out


def pipelines(settings: Settings | None = None) -> dict[str, Pipeline]:
    """Every declared pipeline, by name."""
    files = declaration_files(settings)
    if not files[0].exists():
        raise RiverlakeError(f"pipeline declarations {files[0]} do not exist")
    return _load(tuple((f, f.stat().st_mtime) for f in files))


def pipeline(name: str, settings: Settings | None = None) -> Pipeline:
    found = pipelines(settings)
    if name not in found:
        places = ", ".join(str(f) for f in declaration_files(settings))
        raise RiverlakeError(
            f"unknown pipeline {name!r}; known pipelines: {', '.join(sorted(found))} "
            f"(declared in {places})"
        )
    return found[name]


def _raw_source(p: Pipeline, raw: dict[str, Any]) -> dict[str, Any]:
    """A landing source learns its landing month from the curated table's event time."""
    c = p.curated
    if (
        c is not None
        and raw.get("sink") == "landing"
        and c.event_time is not None
        and "landing_time" not in raw
        and not {"year", "month"} <= set(raw.get("schema") or {})
    ):
        return {**raw, "landing_time": c.event_time.column,
                "landing_time_zone": c.event_time.time_zone}  # fmt: skip
    return raw


def pipeline_sources(name: str, settings: Settings) -> list[SourceSpec]:
    """The sources declared for pipeline ``name``, placeholders filled from ``settings``."""
    p = pipeline(name, settings)
    return [parse_source(_raw_source(p, s), settings) for s in p.sources]


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
