"""The GitHub Actions workflow as data: the suite, then the kind end-to-end job."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.deploy


def test_workflow_runs_the_suite_then_the_kind_end_to_end_job():
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    jobs = wf["jobs"]
    assert [s["run"] for s in jobs["test"]["steps"] if "run" in s][-1].endswith("bash .ci/run")
    assert jobs["e2e-kind"]["needs"] == "test"
    steps = jobs["e2e-kind"]["steps"]
    assert any(s.get("uses", "").startswith("helm/kind-action@") for s in steps)
    assert steps[-1]["run"] == "bash deploy/e2e/kind.sh"


def test_the_e2e_script_parses_and_pins_the_operator_like_terraform():
    script = ROOT / "deploy" / "e2e" / "kind.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "dask_operator_chart_version" in text and "ownerReference" in text
    assert "make test" in (ROOT / ".ci" / "run").read_text()
