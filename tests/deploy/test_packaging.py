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
    assert human.stdout.splitlines()[0].split()[:4] == ["NAME", "SCHEDULE", "PROFILE", "FRESHNESS"]
    assert declared["flights"]["gold"].startswith("carrier_origin_daily,")
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
    assert "Contracts: 5 kept, 0 broken." in out


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


def test_the_image_installs_exact_locked_versions_that_satisfy_pyproject():
    """requirements.lock (uv pip compile, `make lock`) pins every package the image
    installs, with hashes; every dependency pyproject declares is pinned to a version in
    its range (so the lock is regenerated when pyproject moves); the Dockerfile installs
    from the lock with --require-hashes and adds Riverlake's own wheel without deps."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lock = (ROOT / "requirements.lock").read_text()
    pins = {}
    for line in lock.splitlines():
        if line and not line.startswith((" ", "#")):
            req = Requirement(line.removesuffix("\\").strip())
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = spec.version
    blocks = lock.split("\n")
    assert all("--hash=sha256:" in "".join(blocks[i + 1 : i + 2]) for i, line in
               enumerate(blocks) if line and not line.startswith((" ", "#")))  # fmt: skip
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux",
           "platform_machine": "x86_64", "implementation_name": "cpython", "extra": ""}  # fmt: skip
    for dep in project["dependencies"]:
        req = Requirement(dep)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[name]}, outside {req.specifier}: "
            "run `make lock`"
        )
    assert pins["distributed"] == pins["dask"]  # client, scheduler and workers match
    docker = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir --require-hashes -r /src/requirements.lock" in docker
    # Riverlake's own wheel goes on top without dependencies and without an index.
    assert "pip install --no-cache-dir --no-deps --no-index /tmp/wheels/*.whl" in docker
    assert docker.count("FROM ${BASE}") == 2 and "ARG BASE=python:3.11" in docker
