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


_SKIPPING = """
import pytest

pytestmark = pytest.mark.deploy


def test_skips_inside():
    pytest.skip("no such service")


@pytest.mark.skipif(True, reason="marked away")
def test_skipped_by_a_marker():
    pass


def test_runs():
    assert True
"""


@pytest.mark.parametrize("ci", ["", "true", "1"])
def test_under_ci_any_skip_fails_the_run(tmp_path, ci):
    """The hook in tests/conftest.py, run on a module that skips two ways: a user's
    machine sees two skips; CI (CI=true or CI=1) sees two failures naming the reasons."""
    import os
    import sys

    (tmp_path / "test_skipping.py").write_text(_SKIPPING)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n  deploy: x\n")
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q", "-rA", "-p", "no:cacheprovider",
         str(tmp_path / "test_skipping.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    tail = res.stdout.strip().splitlines()[-1]
    if ci:
        assert res.returncode == 1, res.stdout[-2000:]
        # a skip in the call fails the test; a marker's skip (setup) errors it
        assert tail.startswith("1 failed, 1 passed, 1 error"), tail
        assert f"CI={ci} but the test skipped: no such service" in res.stdout
        assert "but the test skipped: marked away" in res.stdout
    else:
        assert res.returncode == 0, res.stdout[-2000:]
        assert tail.startswith("1 passed, 2 skipped"), tail
