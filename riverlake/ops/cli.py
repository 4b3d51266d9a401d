"""The ``riverlake`` command.

A user mistake prints one line, ``riverlake: error: ...``, and exits 1: no traceback.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
import yaml

from riverlake import __version__, runs
from riverlake.errors import RiverlakeError
from riverlake.ops import progress
from riverlake.settings import LIBRARY_LOGGER, Settings, get_settings

#: `run --watch`: consecutive source errors of the stream consumer (the broker away, a lost
#: lease) it retries, 5 s apart, before the watch stops with the error.
WATCH_STREAM_RETRIES = 5

app = typer.Typer(
    help="Riverlake: Prefect flows on ephemeral Dask clusters, Delta tables on S3, Panel apps. "
    "Machine output (tables, JSON) goes to stdout; messages go to stderr.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"riverlake {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Riverlake: Prefect flows on ephemeral Dask clusters, Delta tables on S3, Panel apps."""


def _fail(message: str) -> None:
    typer.echo(f"riverlake: error: {message}", err=True)
    raise typer.Exit(1)


def _say(message: str) -> None:
    """A message for the person at the terminal: stderr, never mixed with machine output."""
    typer.echo(message, err=True)


def _settings() -> Settings:
    try:
        return get_settings()
    except ValueError as exc:  # pydantic's ValidationError: name the bad variable only
        first = str(exc).splitlines()
        _fail(f"invalid settings: {' '.join(first[1:3]) if len(first) > 2 else first[0]}")
        raise  # unreachable


def _print_rows(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    typer.echo("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        typer.echo("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def prefect_env(settings: Settings, environ) -> dict[str, str]:
    """The Prefect settings a command sets from ``settings`` over ``environ`` (pure): the
    stack's API URL always, the rest unless ``environ`` has them already."""
    defaults = {
        "PREFECT_LOGGING_LEVEL": settings.log_level,
        "PREFECT_LOGGING_EXTRA_LOGGERS": LIBRARY_LOGGER,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    return {
        "PREFECT_API_URL": str(settings.prefect_api_url),
        **{k: v for k, v in defaults.items() if k not in environ},
    }


def run_env(settings: Settings, environ) -> dict[str, str]:
    """What ``riverlake run`` sets before Prefect is imported (pure; the warm runner
    imports Prefect under the same): the run's log lines reach the API, and the
    display, sooner."""
    batch = {} if "PREFECT_LOGGING_TO_API_BATCH_INTERVAL" in environ else {
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5"}  # fmt: skip
    return {**prefect_env(settings, environ), **batch}


def _prefect_env(settings: Settings) -> None:
    """Point this process's Prefect client at the stack's server before prefect is imported."""
    os.environ.update(prefect_env(settings, os.environ))


def _quiet_prefect_console() -> None:
    """Prefect's console handlers at WARNING in this process (a live display shows the
    run): what ``PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL`` does where it is set before
    Prefect is imported, which a warm runner's command is not."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in
               list(logging.root.manager.loggerDict))]  # fmt: skip
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.WARNING)


def _require_prefect(settings: Settings) -> None:
    """Point this process at the settings' Prefect API (before Prefect is first imported:
    it reads its settings once), then refuse to go on if it does not answer."""
    _prefect_env(settings)
    if not runs.healthy(settings):
        _fail(f"Prefect API {settings.prefect_api_url} is unreachable; run `riverlake up` first")


@app.command()
def up(
    demo: Annotated[
        bool,
        typer.Option(
            help="Serve the demo upstreams (flight drops, weather API, SQL dimensions, event "
            "replayer). --no-demo: an empty stack for your own pipelines."
        ),
    ] = True,
) -> None:
    """Start the local stack (Prefect server, SeaweedFS S3) and wait until it is healthy.

    Shows each service's health check as it goes (waiting, healthy, failed) on stderr;
    ends with the services' table on stdout."""
    from riverlake.ops import stack

    settings = _settings()
    screen = progress.Screen()
    board = progress.ServiceBoard(say=None if screen.live else screen.say,
                                  ascii_only=screen.ascii_only)  # fmt: skip
    t0 = time.monotonic()
    with screen.live_view(board.renderable):
        rows = stack.up(settings, demo=demo, report=board.report)
    _print_rows(rows, ["service", "state", "pid", "url"])
    _say(f"stack up in {time.monotonic() - t0:.1f}s; state in {settings.home.resolve()}")
    _say(f"Prefect UI: {runs.ui_url(settings)}")


@app.command()
def down() -> None:
    """Stop the processes that `riverlake up` started (and nothing else)."""
    from riverlake.ops import stack

    stopped = stack.down(_settings())
    _say(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="The services as JSON.")] = False,
) -> None:
    """Show the local stack's services."""
    from riverlake.ops import stack

    rows = stack.status(_settings())
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    _print_rows(rows, ["service", "state", "pid", "url", "log"])


@app.command()
def pipelines(
    as_json: Annotated[bool, typer.Option("--json", help="The declarations as JSON.")] = False,
) -> None:
    """List the declared pipelines: schedule, worker profile, freshness, sources, the
    curated table and the gold tables."""
    from riverlake import pipelines as declared

    settings = _settings()
    rows = []
    for p in declared.pipelines(settings).values():
        when = p.schedule
        rows.append({
            "name": p.name,
            "schedule": "" if when is None else when.cron or f"every {when.interval}s",
            "profile": p.profile or settings.worker_profile,
            "freshness": str(p.freshness),
            "sources": ",".join(s["name"] for s in p.sources),
            "curated": p.curated.table if p.curated else "",
            "gold": ",".join(g.table for g in p.gold),
            "tables": ",".join(sorted(p.tables())),
        })  # fmt: skip
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    _print_rows(rows, ["name", "schedule", "profile", "freshness", "sources", "curated", "gold"])
    files = ", ".join(str(f) for f in declared.declaration_files(settings))
    _say(f"declared in {files}")


@app.command()
def run(
    pipeline: Annotated[str, typer.Argument(help="Pipeline to run, e.g. flights.")],
    cluster: Annotated[
        str | None,
        typer.Option(help="local, kubernetes or tcp://HOST:PORT (default: RIVERLAKE_CLUSTER)."),
    ] = None,
    start: Annotated[str | None, typer.Option(help="First day, YYYY-MM-DD.")] = None,
    end: Annotated[str | None, typer.Option(help="Last day, YYYY-MM-DD.")] = None,
    watch: Annotated[
        bool,
        typer.Option(
            help="Keep the lake current: consume the event stream continuously and re-run "
            "the pipeline every --interval seconds (the demo upstream drops one more day each "
            "time). Ctrl-C stops."
        ),
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between runs in --watch.")] = 30.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run's summary as JSON (one line), alone.")
    ] = False,
) -> None:
    """Run a pipeline flow now, on an ephemeral Dask cluster, reporting to Prefect.

    Ends with what was loaded, quarantined and merged per table and the run's URL
    (stdout); ``--json`` prints the run's full summary instead. Messages go to stderr.
    """
    from riverlake import lake, pipelines
    from riverlake.cluster import validate_profile
    from riverlake.ops import stack

    settings = _settings()
    pipelines.pipeline(pipeline, settings)  # a bad declaration: one line, nothing started
    profile = validate_profile(cluster or settings.cluster)
    params: dict[str, object] = {}
    for label, value in (("start", start), ("end", end)):
        if value is not None:
            try:
                params[label] = date.fromisoformat(value)
            except ValueError:
                _fail(f"--{label} {value!r} is not a date (YYYY-MM-DD)")
    screen = progress.Screen()
    # The live display shows the run; Prefect's INFO lines stay in its UI (and the
    # cluster's worker processes inherit the level).
    quiet = screen.live and "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL" not in os.environ
    if quiet:
        os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "WARNING"
    os.environ.update(run_env(settings, os.environ))
    # Checks first, quietly on failure: a user mistake stays one line.
    with screen.step(f"connecting to Prefect at {settings.prefect_api_url}") as step:
        _require_prefect(settings)
        if quiet:
            _quiet_prefect_console()
        from riverlake.flows.runner import (
            ClusterTaskRunner,
            ensure_result_storage,
            export_storage_credentials,
            foreground_run,
            pipeline_task_runner,
            plain_parameters,
        )

        export_storage_credentials()  # first: the lake and result storage share one client
        step.update(f"checking the lake {settings.lake_url}")
        lake.check_store(settings)
        step.update(f"loading pipeline {pipeline}")
        from riverlake.flows import get_pipeline
        from riverlake.sources.ingest import reach_sources

        flow = get_pipeline(pipeline)  # an unknown pipeline is refused first
        step.update(f"reaching the sources of {pipeline}")
        reach_sources(pipelines.pipeline_sources(pipeline, settings), settings)  # before any run

        step.update(f"checked Prefect, the lake and the sources of {pipeline}")

    if isinstance(flow.task_runner, ClusterTaskRunner):  # the cluster chosen here, sized by
        flow = flow.with_options(  # the pipeline's declaration
            task_runner=pipeline_task_runner(pipeline, settings, profile=profile)
        )
    storage, _ = ensure_result_storage()  # flow results persist on the lake (the block)
    if profile == "local":
        _say(f"Dask dashboard (during the run): http://127.0.0.1:{settings.dashboard_port}/status")
    # Run now and fail fast; scheduled deployment runs keep the flow's retries.
    flow = flow.with_options(retries=0, result_storage=storage)

    def once(**kw: object) -> None:
        with screen.step(f"demo upstream: dropping the days of {pipeline}", quiet=True):
            delivered = stack.deliver_demo_data(settings, pipeline, kw.get("start"), kw.get("end"))
        if delivered is not None:
            _say(f"demo upstream: {len(delivered)} new daily drops delivered")
        # The run's task runs as Prefect reports them, polled from its API meanwhile.
        watcher = progress.RunWatcher(settings, say=None if screen.live else screen.say,
                                      ascii_only=screen.ascii_only)  # fmt: skip
        watched = plain_parameters(
            flow.with_options(on_running=[*flow.on_running_hooks, watcher.on_running])
        )
        t0 = time.monotonic()
        took = 0.0
        try:
            with screen.live_view(watcher.renderable), watcher, foreground_run():
                state = watched(**kw, return_state=True)
                took = time.monotonic() - t0  # the flow's time, not the display's last poll
            result = state.result()  # a failed run raises its exception here
        except RiverlakeError:
            raise
        except Exception as exc:  # the flow's own failure: one line, details in the Prefect UI
            first = str(exc).splitlines()[0] if str(exc) else ""
            _fail(
                f"pipeline {pipeline} failed: {type(exc).__name__}: {first} "
                f"(logs in the Prefect UI: {runs.ui_url(settings)}/runs)"
            )
        _say(f"pipeline {pipeline} done in {took:.1f}s")
        if as_json:
            typer.echo(json.dumps(result, default=str))
        else:
            columns = ["table", "in", "loaded", "quarantined", "merged"]
            _print_rows(accounting(pipeline, result), columns)
            typer.echo(f"run:  {runs.run_url(settings, state.state_details.flow_run_id)}")
            typer.echo(f"apps: http://127.0.0.1:{settings.panel_port}/ (riverlake serve)")

    if not watch:
        once(**params)
        return
    _watch(pipeline, once, params, interval, settings)


def accounting(pipeline: str, summary: dict) -> list[dict]:
    """A run's summary as one row per table: rows in, loaded, quarantined, merged (pure).

    Merged rows updated a row already there (a late or repeated record); gold tables are
    recomputed, so their rows count as loaded.
    """

    def row(table: str, s: dict, merged: int) -> dict:
        return {"table": table, "in": s["rows_in"], "loaded": s["rows_loaded"],
                "quarantined": s["rows_quarantined"], "merged": merged}  # fmt: skip

    if "sources" not in summary:  # a one-table pipeline: the stream
        return [row(pipeline, summary, summary.get("rows_deduplicated", 0))]
    rows = []
    if summary.get("landing"):  # landed, then read into the curated table
        rows.append(row(summary["landing"]["source"], summary["landing"], 0))
    rows += [row(name, s, s["rows_in"] - s["rows_loaded"] - s["rows_quarantined"])
             for name, s in summary["sources"].items()]  # fmt: skip
    if summary.get("curated_table"):
        rows.append(row(summary["curated_table"], summary, summary["rows_merged"]))
    rows += [{"table": name, "in": "", "loaded": n, "quarantined": "", "merged": ""}
             for name, n in summary.get("gold_rows", {}).items()]  # fmt: skip
    return rows


def _watch(pipeline: str, once, params: dict, interval: float, settings: Settings) -> None:
    """Run ``once`` every ``interval`` s while a thread consumes the event stream."""
    import threading

    from riverlake import pipelines
    from riverlake.ops import stack
    from riverlake.sources.base import SourceError
    from riverlake.sources.stream import consume

    stop = threading.Event()
    events = pipelines.pipeline_sources("flight_events", settings)[0]
    died: list[str] = []  # why the consumer stopped, when it was not asked to

    def stream() -> None:
        failures = 0
        try:
            while not stop.is_set():
                try:
                    stats = consume(events, settings, idle_s=None, max_seconds=interval, stop=stop)
                    failures = 0
                    _say(f"stream {events.name}: {json.dumps(stats.summary())}")
                except SourceError as e:  # the broker away, a lost lease: try again, a while
                    failures += 1
                    if failures > WATCH_STREAM_RETRIES:
                        raise
                    typer.echo(f"stream {events.name}: {e}; retrying in 5s", err=True)
                    stop.wait(5)
        except BaseException as e:  # anything else stops the watch, loudly
            first = str(e).splitlines()[0] if str(e) else ""
            died.append(f"{type(e).__name__}: {first}" if not isinstance(e, RiverlakeError)
                        else first)  # fmt: skip
            stop.set()

    def ctrl_c(signum, frame) -> None:  # the first Ctrl-C: finish the current run, then stop
        typer.echo("stopping after the current run (Ctrl-C again to abort)", err=True)
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, ctrl_c)
    consumer = threading.Thread(target=stream, name="stream-consumer", daemon=True)
    consumer.start()
    end = params.get("end")
    try:
        while not stop.is_set():
            once(**params)
            if stop.wait(interval):
                break
            nxt = stack.next_demo_day(settings, pipeline, end) if isinstance(end, date) else None
            if nxt is not None:  # the demo upstream drops the next day
                end = params["end"] = nxt
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        consumer.join(timeout=interval + 10)
    if died:
        _fail(f"watch stopped: the stream consumer of {events.name} died: {died[0]}")
    _say("watch stopped")


@app.command()
def new(
    name: Annotated[str, typer.Argument(help="The pipeline's name (lower case, digits, _).")],
    sample: Annotated[
        Path,
        typer.Option(
            "--from",
            help="A sample file of the data: csv, csv.gz, jsonl or parquet (its first "
            "10,000 rows are read). The pipeline reads every such file of its folder.",
        ),
    ],
    force: Annotated[bool, typer.Option(help="Overwrite the pipeline's file.")] = False,
) -> None:
    """Write a pipeline declaration inferred from a sample file, for you to edit.

    Types, the key, the event time, a contract and a monthly gold table are proposed
    from the sample; the file goes to the pipelines folder (RIVERLAKE_PIPELINES_DIR).
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from riverlake import pipelines as declared
    from riverlake.pipelines import infer

    settings = _settings()
    try:
        infer.check_name(name)
        if settings.pipelines_dir is None:
            _fail("RIVERLAKE_PIPELINES_DIR is not set: nowhere to write the pipeline")
        target = Path(settings.pipelines_dir) / f"{name}.yaml"
        if target.exists() and not force:
            _fail(f"{target} exists (--force overwrites it)")
        # Every other declaration: the name and the tables must be new.
        found, where = {}, {}
        for f in declared.declaration_files(settings):
            if f.exists() and not (target.exists() and f.resolve() == target.resolve()):
                try:
                    doc = yaml.safe_load(f.read_text()) or {}
                except yaml.YAMLError as exc:
                    _fail(f"{f}: not YAML: {str(exc).splitlines()[0]}")
                for n, p in declared.parse(doc, f).items():
                    found[n], where[n] = p, f
        if name in found:
            _fail(f"pipeline {name!r} is already declared in {where[name]}")
        if not sample.is_file():
            _fail(f"--from {sample}: no such file")
        fmt, ending = infer.format_of(sample.name)
        try:
            if fmt == "csv":
                df = pd.read_csv(sample, dtype=str, keep_default_na=False, nrows=10_000)
            elif fmt == "jsonl":
                df = pd.read_json(sample, lines=True, nrows=10_000, dtype=False)
            else:
                pf = pq.ParquetFile(sample)
                batch = next(pf.iter_batches(batch_size=10_000), None)
                df = pa.Table.from_batches([batch]) if batch else pf.schema_arrow.empty_table()
        except (OSError, ValueError) as exc:  # not what its name says: one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            _fail(f"--from {sample}: cannot be read as {fmt}: {type(exc).__name__}: {first}")
        url = f"{sample.resolve().parent.as_posix()}/*.{ending}"
        body = infer.propose(name, df, url, fmt)
        new_one = declared.parse({name: body}, target)
        declared.check_references({**found, **new_one}, {**where, name: target})
        text = infer.render(name, body, sample.name, len(df))
    except RiverlakeError as exc:
        _fail(str(exc))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    typer.echo(str(target))
    _say(f"pipeline {name}: proposed from {len(df)} rows of {sample}; edit {target}, then:")
    _say("  riverlake pipelines")
    _say(f"  riverlake run {name}")


@app.command()
def deploy(
    worker: Annotated[bool, typer.Option(help="Start the local process worker.")] = True,
    target: Annotated[
        str,
        typer.Option(
            help="prefect.yaml target: local (a process pool and its worker here) or "
            "kubernetes (the Kubernetes pool with deploy/prefect/kubernetes-job-template.json; "
            "Prefect's Kubernetes worker in the cluster runs it)."
        ),
    ] = "local",
) -> None:
    """Register a deployment of every declared pipeline (its schedule from the declaration,
    its work pool from prefect.yaml) and start the worker that runs them."""
    from riverlake.ops import stack

    if target not in ("local", "kubernetes"):
        _fail(f"unknown target {target!r}: use local or kubernetes")
    settings = _settings()
    screen = progress.Screen()
    with screen.step(f"connecting to Prefect at {settings.prefect_api_url}", quiet=True):
        _require_prefect(settings)
        from riverlake.flows.runner import ensure_result_storage

        root = Path(__file__).resolve().parents[2]  # the checkout: prefect.yaml and flows/
        _storage, results = ensure_result_storage()
    env = {**os.environ, **results, "RIVERLAKE_ROOT": str(root),
           "PREFECT_API_URL": str(settings.prefect_api_url)}  # fmt: skip
    if settings.pipelines_dir is not None:  # `prefect deploy` runs in the checkout
        env["RIVERLAKE_PIPELINES_DIR"] = str(Path(settings.pipelines_dir).resolve())
    prefect = str(Path(sys.executable).parent / "prefect")
    doc = yaml.safe_load((root / "prefect.yaml").read_text())
    chosen = doc["targets"][target]
    pool_name = chosen["work_pool"]["name"]
    kind = ["--type", "process"]
    if target == "kubernetes":
        template = root / "deploy" / "prefect" / "kubernetes-job-template.json"
        kind = ["--type", "kubernetes", "--base-job-template", str(template)]
    with screen.step(f"creating work pool {pool_name}"):
        pool = subprocess.run([prefect, "work-pool", "create", pool_name, *kind, "--overwrite"],
                              env=env, capture_output=True, text=True)  # fmt: skip
        if pool.returncode != 0:
            _fail(f"could not create work pool {pool_name}: {pool.stderr.strip()[-300:]}")
    from riverlake.flows import deployments

    if settings.pipelines_dir is not None and target == "local":  # the worker reads them too
        folder = str(Path(settings.pipelines_dir).resolve())
        jobs = chosen["work_pool"].setdefault("job_variables", {})
        jobs.setdefault("env", {})["RIVERLAKE_PIPELINES_DIR"] = folder
    rendered = deployments({target: chosen}, settings)
    spec = {k: v for k, v in doc.items() if k != "targets"} | {"deployments": rendered}
    with tempfile.TemporaryDirectory() as tmp:
        prefect_file = Path(tmp) / "prefect.yaml"
        prefect_file.write_text(yaml.safe_dump(spec, sort_keys=False))
        names = [arg for d in rendered for arg in ("--name", d["name"])]
        with screen.step(f"registering {len(rendered)} deployments of the declared pipelines"):
            res = subprocess.run(
                [prefect, "--no-prompt", "deploy", "--prefect-file", str(prefect_file), *names],
                env=env, cwd=root, capture_output=True, text=True,
            )  # fmt: skip
            if res.returncode != 0:
                last = (res.stderr or res.stdout).strip().splitlines()[-1]
                _fail(f"prefect deploy failed: {last}")
    for d in rendered:
        when = d["schedules"][0] if d["schedules"] else {}
        every = when.get("cron") or (f"every {when['interval']}s" if when else "no schedule")
        _say(f"deployed {d['name'].rsplit('-', 1)[0]}/{d['name']} to work pool "
             f"{pool_name} ({every})")  # fmt: skip
    if worker and target == "local":
        with screen.step("starting the worker", quiet=True):
            started = stack.start_worker(settings, {**results, "RIVERLAKE_ROOT": str(root)})
        _say("worker started" if started else "worker already running")
    _say(f"deployments: {runs.ui_url(settings)}/deployments")


@app.command()
def tables(
    as_json: Annotated[bool, typer.Option("--json", help="Full catalog as JSON.")] = False,
) -> None:
    """List the lake's tables: rows, size, files, partitions, version, last commit, batches."""
    from riverlake import lake

    settings = _settings()
    with progress.Screen().step(f"reading the catalog of {settings.lake_url}", quiet=True):
        lake.check_store(settings)
        rows = lake.list_tables(settings)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        _say(f"no tables in {settings.lake_url}")
        return
    for r in rows:
        shown = r["batches"][:3]
        more = len(r["batches"]) - len(shown)
        r["batch_ids"] = ",".join(shown) + (f" (+{more} more)" if more > 0 else "")
    _print_rows(rows, ["name", "rows", "size_bytes", "files", "partitions", "version",
                       "last_commit", "batch_ids"])  # fmt: skip


@app.command()
def optimize(
    table: Annotated[str, typer.Argument(help="Table to compact.")],
    target_size: Annotated[int | None, typer.Option(help="Target file size in bytes.")] = None,
) -> None:
    """Compact a table's small files (one commit; readers keep their snapshot)."""
    from riverlake import lake

    settings = _settings()
    with progress.Screen().step(f"compacting table {table}"):
        metrics = lake.optimize(table, target_size=target_size, settings=settings)
    typer.echo(
        f"{table}: {metrics.get('numFilesRemoved', 0)} files compacted into "
        f"{metrics.get('numFilesAdded', 0)}"
    )


@app.command()
def vacuum(
    table: Annotated[str, typer.Argument(help="Table to vacuum.")],
    retention_hours: Annotated[
        int,
        typer.Option(
            help="Keep files younger than this; at least RIVERLAKE_VACUUM_MIN_RETENTION_HOURS "
            "(1 by default: files being written are not committed yet)."
        ),
    ] = 168,
    dry_run: Annotated[bool, typer.Option(help="Only list what would be deleted.")] = False,
) -> None:
    """Delete unreferenced files (old versions, orphans of failed runs) past the retention."""
    from riverlake import lake

    settings = _settings()
    doing = "listing what vacuum would delete in" if dry_run else "vacuuming"
    with progress.Screen().step(f"{doing} table {table}"):
        removed = lake.vacuum(table, retention_hours, dry_run, settings=settings)
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"{table}: {verb} {len(removed)} files")


@app.command("prune-quarantine")
def prune_quarantine(
    older_than_days: Annotated[
        int,
        typer.Option(min=1, help="Delete the rows quarantined more than this many days ago."),
    ],
    table: Annotated[
        str | None,
        typer.Option(
            help="Only this quarantine table (default: every declared curated table's "
            "quarantine, then source_quarantine)."
        ),
    ] = None,
    retention_hours: Annotated[
        int | None,
        typer.Option(
            help="Vacuum only files removed at least this long ago (readers of earlier "
            "versions keep theirs); at least and by default "
            "RIVERLAKE_VACUUM_MIN_RETENTION_HOURS."
        ),
    ] = None,
) -> None:
    """Delete old quarantine rows through Delta (a delete commit per table), then vacuum
    the files the log removed. Replaces S3 expiry, which would corrupt the tables; run
    it on a schedule (e.g. --older-than-days 180)."""
    from datetime import timedelta

    from riverlake import lake
    from riverlake import pipelines as declared

    settings = _settings()
    names = [declared.quarantine_table(p.curated.table)
             for p in declared.pipelines(settings).values() if p.curated is not None]  # fmt: skip
    names.append(lake.SOURCE_QUARANTINE)
    if table is not None:
        if table not in names:
            _fail(f"{table} is not a declared quarantine table (one of: {', '.join(names)})")
        names = [table]
    lake.check_store(settings)
    older_than = timedelta(days=older_than_days)
    for name in names:
        with progress.Screen().step(f"pruning {name}"):
            deleted = lake.prune_quarantine(name, older_than, retention_hours=retention_hours,
                                            settings=settings)  # fmt: skip
        typer.echo(f"{name}: {deleted} rows deleted")


def panel_command(settings: Settings, port: int, num_procs: int = 1) -> tuple[list[str], dict]:
    """The `panel serve` command line and extra environment for every app in apps/ (pure).

    Secrets go through the environment (PANEL_*), never the command line, which any
    local user can read. The basic-auth password goes in a file of mode 600.
    """
    from riverlake import apps

    app_dir = Path(apps.__file__).parent
    files = [str(app_dir / f"{name}.py") for name in apps.APPS]
    origins = [f"127.0.0.1:{port}", f"localhost:{port}"]
    origins += [o.strip() for o in settings.app_origins.split(",") if o.strip()]
    cmd = [sys.executable, "-m", "panel", "serve", *files, "--port", str(port),
           "--address", settings.app_address, "--index", apps.APPS[0],
           "--setup", str(app_dir / "warm.py")]  # fmt: skip
    for origin in origins:
        cmd += ["--allow-websocket-origin", origin]
    if num_procs > 1:
        cmd += ["--num-procs", str(num_procs)]
    env: dict[str, str] = {}
    if settings.app_auth != "none":
        if settings.cookie_secret is None:
            raise RiverlakeError(f"app_auth={settings.app_auth} needs RIVERLAKE_COOKIE_SECRET")
        env["PANEL_COOKIE_SECRET"] = settings.cookie_secret.get_secret_value()
    if settings.app_auth == "basic":
        if settings.app_password is None:
            raise RiverlakeError("app_auth=basic needs RIVERLAKE_APP_PASSWORD")
        pw = settings.home.resolve() / "run" / "app-password"
        pw.parent.mkdir(parents=True, exist_ok=True)
        pw.touch(mode=0o600)
        # Panel reads a file as JSON {user: password}; a plain string would be the password.
        pw.write_text(json.dumps({settings.app_user: settings.app_password.get_secret_value()}))
        cmd += ["--basic-auth", str(pw)]
    elif settings.app_auth == "oauth":
        missing = [n for n in ("oauth_key", "oauth_secret", "oauth_encryption_key")
                   if getattr(settings, n) is None]  # fmt: skip
        if missing:
            raise RiverlakeError(f"app_auth=oauth needs RIVERLAKE_{missing[0].upper()}")
        cmd += ["--oauth-provider", "generic", "--oauth-extra-params", settings.oauth_extra_params]
        if settings.oauth_redirect_uri:
            cmd += ["--oauth-redirect-uri", settings.oauth_redirect_uri]
        env["PANEL_OAUTH_KEY"] = str(settings.oauth_key)
        env["PANEL_OAUTH_SECRET"] = settings.oauth_secret.get_secret_value()
        env["PANEL_OAUTH_ENCRYPTION_KEY"] = settings.oauth_encryption_key.get_secret_value()
    return cmd, env


@app.command()
def serve(
    port: Annotated[int | None, typer.Option(help="Port (default RIVERLAKE_PANEL_PORT).")] = None,
    num_procs: Annotated[int, typer.Option(help="Panel server processes.")] = 1,
    with_cluster: Annotated[
        bool, typer.Option(help="Keep a LocalCluster up for notebooks while serving.")
    ] = False,
    address: Annotated[
        str | None,
        typer.Option(help="Address to bind (default RIVERLAKE_APP_ADDRESS; 0.0.0.0 in a pod)."),
    ] = None,
) -> None:
    """Serve the Panel apps until Ctrl-C."""
    from riverlake import lake
    from riverlake.ops import stack

    settings = _settings()
    if address is not None:
        settings = settings.model_copy(update={"app_address": address})
    port = port or settings.panel_port
    if not stack.port_free(port):
        _fail(
            f"port {port} (Panel apps) is already in use; pass --port or set RIVERLAKE_PANEL_PORT"
        )
    lake.check_store(settings)
    cmd, extra_env = panel_command(settings, port, num_procs)  # refuses bad auth settings first
    cluster_obj = None
    if with_cluster:
        from riverlake.cluster import cluster_options, local_cluster

        if not stack.port_free(settings.dashboard_port):
            _fail(f"port {settings.dashboard_port} (Dask dashboard) is already in use; "
                  "set RIVERLAKE_DASHBOARD_PORT")  # fmt: skip
        cluster_obj = local_cluster(cluster_options(settings, profile="local"))
        (settings.home / "scheduler.json").write_text(
            json.dumps({"address": cluster_obj.scheduler_address})
        )
    env = {**os.environ, **extra_env, "PREFECT_API_URL": str(settings.prefect_api_url)}
    # Its own process group: `--num-procs N` forks N workers, which outlive their parent
    # unless the whole group is stopped.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    _say(f"Prefect UI:     {runs.ui_url(settings)}")
    if cluster_obj is not None:
        _say(f"Dask dashboard: {cluster_obj.dashboard_link}")
        _say(f"Dask scheduler: {cluster_obj.scheduler_address} (notebooks connect here)")
    _say(f"Panel apps:     http://127.0.0.1:{port}/")
    _say("Ctrl-C to stop serving (the stack stays up: `riverlake down`).")

    def _stop(signum, frame):  # SIGTERM (a supervisor, a test) stops the server too
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        proc.wait()
    except KeyboardInterrupt:
        _stop_group(proc)
    finally:
        _stop_group(proc)  # workers left by a server that exited on its own
        if cluster_obj is not None:
            (settings.home / "scheduler.json").unlink(missing_ok=True)
            cluster_obj.close()


def _stop_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM to every process of ``proc``'s group (it leads its own), then SIGKILL to
    what is left after ``timeout`` seconds."""
    pgid = proc.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()  # reaps the leader once it exits (a zombie still counts as a member)
        try:
            os.killpg(pgid, 0)  # raises once no process of the group remains
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@app.command()
def metrics(
    port: Annotated[int | None, typer.Option(help="Port (default RIVERLAKE_METRICS_PORT).")] = None,
    address: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
) -> None:
    """Serve the platform's Prometheus metrics (tables, quarantine, flow runs) until Ctrl-C."""
    from riverlake.ops import metrics as m
    from riverlake.ops import stack

    settings = _settings()
    port = port or settings.metrics_port
    if not stack.port_free(port, address if address != "0.0.0.0" else "127.0.0.1"):
        _fail(f"port {port} (metrics) is already in use; set RIVERLAKE_METRICS_PORT")
    m.serve(port, address)
    _say(f"metrics: http://{address}:{port}/metrics")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _freeze_heap_at_exit() -> None:
    """At exit, move every object to the permanent generation and stop the cyclic
    collector, so the interpreter's final collections do not walk the heap that Prefect,
    pydantic and Dask built (1.0 s of a 6.4 s run with nothing new, measured). Every exit
    handler still runs (Prefect's flush its logs and events to the API); only the search
    for reference cycles is skipped, and the process's exit returns their memory."""
    gc.disable()
    gc.freeze()


def main(forwarded: bool = False) -> None:
    """Entry point: user mistakes are one line on stderr and exit status 1.

    ``run`` goes to the stack's warm runner when one can serve it (:mod:`.warm`);
    ``forwarded``: that was tried already (or this is the runner's child)."""
    if not forwarded:
        from riverlake.ops import warm

        code = warm.forward(sys.argv)
        if code is not None:
            sys.exit(code)
    atexit.register(_freeze_heap_at_exit)
    try:
        app()
    except RiverlakeError as exc:  # StackError and LakeError are RiverlakeErrors
        typer.echo(f"riverlake: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
