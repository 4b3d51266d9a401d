"""The command behaves like the tools its users know: --version, completion, JSON on request."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from riverlake import __version__
from riverlake.errors import RiverlakeError
from riverlake.ops.cli import app

pytestmark = pytest.mark.unit


def test_version_is_one_line_on_stdout():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout == f"riverlake {__version__}\n"


def test_shell_completion_is_offered():
    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "--install-completion" in res.stdout and "--show-completion" in res.stdout


def test_pipelines_json_is_the_declarations_alone_on_stdout():
    res = CliRunner().invoke(app, ["pipelines", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)  # nothing else on stdout
    assert [r["name"] for r in rows] == ["flights", "flight_events"]
    assert rows[1] == {"name": "flight_events", "schedule": "every 60s", "profile": "small",
                       "freshness": "0:10:00", "sources": "flight_events", "curated": "",
                       "gold": "", "tables": "flight_events"}  # fmt: skip
    assert rows[0]["curated"] == "flights" and rows[0]["schedule"] == "0 6 * * *"
    assert rows[0]["gold"].split(",")[:2] == ["carrier_origin_daily", "route_stats"]
    assert "declared in" not in res.stdout


def test_flow_runs_are_read_with_prefects_client_and_its_api_key():
    from prefect.settings import PREFECT_API_KEY, temporary_settings

    from riverlake import runs
    from riverlake.settings import get_settings

    settings = get_settings(prefect_api_url="http://127.0.0.1:1/api")
    assert "authorization" not in runs.client(settings)._client.headers
    with temporary_settings({PREFECT_API_KEY: "k-123"}):
        c = runs.client(settings)
    assert c._client.headers["authorization"] == "Bearer k-123"
    assert str(c._client.base_url).rstrip("/") == "http://127.0.0.1:1/api"
    assert runs.healthy(settings, timeout=1) is False  # nothing listens there: not healthy


def test_a_runs_accounting_has_a_row_per_table():
    from riverlake.ops.cli import accounting

    stream = {"batches": 3, "rows_in": 10, "rows_loaded": 7, "rows_quarantined": 1,
              "rows_deduplicated": 2, "last_seq": 10}  # fmt: skip
    assert accounting("flight_events", stream) == [
        {"table": "flight_events", "in": 10, "loaded": 7, "quarantined": 1, "merged": 2}]  # fmt: skip
    flights = {"rows_in": 100, "rows_loaded": 95, "rows_quarantined": 3, "rows_merged": 2,
               "curated_table": "flights",
               "landing": {"source": "flight_drops", "units": 2, "rows_in": 100,
                           "rows_loaded": 99, "rows_quarantined": 1},
               "sources": {"weather": {"rows_in": 5, "rows_loaded": 4, "rows_quarantined": 0}},
               "gold_rows": {"carrier_origin_daily": 12}}  # fmt: skip
    rows = {r["table"]: r for r in accounting("flights", flights)}
    assert list(rows) == ["flight_drops", "weather", "flights", "carrier_origin_daily"]
    assert rows["weather"]["merged"] == 1  # a repeated record updated its row
    assert (rows["flights"]["loaded"], rows["flights"]["merged"]) == (95, 2)
    assert rows["carrier_origin_daily"]["loaded"] == 12


def test_optimize_and_vacuum_name_their_step_on_stderr_and_keep_stdout_for_the_result(settings):
    import re

    import pandas as pd

    from riverlake import lake

    for i in range(3):
        lake.write_table("t", pd.DataFrame({"k": [i]}), settings=settings)
    runner = CliRunner()
    res = runner.invoke(app, ["optimize", "t"])
    assert res.exit_code == 0, res.output
    assert res.stdout == "t: 3 files compacted into 1\n"
    assert re.fullmatch(r"compacting table t: done in \d+\.\ds\n", res.stderr), res.stderr
    res = runner.invoke(app, ["vacuum", "t", "--retention-hours", "1", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert res.stdout == "t: would delete 0 files\n"
    assert re.fullmatch(r"listing what vacuum would delete in table t: done in \d+\.\ds\n",
                        res.stderr)  # fmt: skip
    # a refusal stays the one error line (main() prints it): no step line before it
    res = runner.invoke(app, ["vacuum", "t", "--retention-hours", "0"])
    assert isinstance(res.exception, RiverlakeError)
    assert str(res.exception).startswith("vacuum of table 't': a retention of 0 hours")
    assert res.stdout == "" and res.stderr == ""


def test_tables_prints_only_the_table_on_stdout(settings):
    import pandas as pd

    from riverlake import lake

    lake.write_table("t", pd.DataFrame({"k": [1, 2]}), settings=settings)
    res = CliRunner().invoke(app, ["tables"])
    assert res.exit_code == 0, res.output
    assert res.stdout.split()[:9] == ["NAME", "ROWS", "SIZE_BYTES", "FILES", "PARTITIONS",
                                      "VERSION", "LAST_COMMIT", "BATCH_IDS", "t"]  # fmt: skip
    assert res.stderr == ""  # the catalog's step is quiet: a spinner on a terminal only
