"""The package as a user installs it: a wheel, in a clean virtualenv outside the checkout.

The virtualenv gets Riverlake from the wheel alone; its dependencies come from the
project's environment through a path file (installing them again would only download
the same packages). From there: ``riverlake --version``, a pipeline listing from the
declarations shipped as package data, the import contracts on the installed layout,
and no module cycles.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.deploy


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtualenv outside the checkout with the wheel of this checkout installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp / "dist"), str(ROOT)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (wheel,) = (tmp / "dist").glob("riverlake-*.whl")
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    # Dependencies from the project's environment, after the venv's own site-packages.
    (site / "_riverlake_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
         str(wheel)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return env_dir


def run(env_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIVERLAKE_", "PYTHON"))}
    return subprocess.run(
        [str(env_dir / "bin" / "python"), *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


def test_the_wheel_runs_outside_the_checkout(installed, tmp_path):
    where = run(installed, "-c", "import riverlake, sys; print(riverlake.__file__)", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(installed)), where.stdout  # the wheel, not the checkout
    version = run(installed, "-m", "riverlake.ops.cli", "--version", cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == "riverlake 0.1.0"
    listing = run(installed, "-m", "riverlake.ops.cli", "pipelines", "--json", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    declared = {p["name"]: p for p in json.loads(listing.stdout)}
    assert set(declared) == {"flights", "flight_events"}
    assert declared["flights"]["profile"] == "standard"
    assert "flight_drops" in declared["flights"]["sources"]
    human = run(installed, "-m", "riverlake.ops.cli", "pipelines", cwd=tmp_path)
    assert human.stdout.splitlines()[0].split()[:3] == ["NAME", "PROFILE", "FRESHNESS"]
    assert f"declared in {installed}" in human.stderr  # package data, not the checkout's file


def test_installed_names_are_all_under_riverlake(installed):
    site = next((installed / "lib").glob("python3*/site-packages"))
    top = {p.name for p in site.iterdir() if not p.name.endswith((".dist-info", ".pth"))}
    top.discard("__pycache__")
    assert top == {"riverlake"}
    for sub in ("analytics", "apps", "cluster", "flows", "lake", "sources", "ops", "demo"):
        assert (site / "riverlake" / sub / "__init__.py").exists(), sub
    assert (site / "riverlake" / "pipelines" / "pipelines.yaml").exists()
    assert (site / "riverlake" / "cluster" / "daskcluster.yaml").exists()


def test_import_contracts_hold_on_the_installed_layout(installed):
    lint = "import sys; from importlinter.cli import lint_imports_command as c; c(sys.argv[1:])"
    res = run(installed, "-c", lint, str(ROOT / "pyproject.toml"), cwd=ROOT.parent)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "Contracts: 4 kept, 0 broken." in out


CYCLES = """
import grimp, json
g = grimp.build_graph("riverlake")
mods = sorted(g.modules)
edges = {m: sorted(g.find_modules_directly_imported_by(m)) for m in mods}
index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]
import sys
sys.setrecursionlimit(10000)
def visit(v):
    index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(sorted(comp))
for m in mods:
    if m not in index: visit(m)
print(json.dumps({"modules": len(mods), "cycles": sccs}))
"""


def test_no_module_imports_itself_through_others(installed, tmp_path):
    res = run(installed, "-c", CYCLES, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    found = json.loads(res.stdout)
    assert found["modules"] > 40
    assert found["cycles"] == []
