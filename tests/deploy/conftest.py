"""Deployment checks: rendered and validated here, never applied (no cluster exists)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, need

KUSTOMIZE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("dev", "prod")


def tool(name: str, *candidates: Path) -> str:
    """A command-line tool: from the candidates, else PATH; skips (fails in CI) if absent."""
    for c in candidates:
        if c.exists():
            return str(c)
    found = shutil.which(name)
    need(found is not None, f"{name} is not installed (see .ci/run)")
    return found


def checkov() -> str:
    return tool("checkov", ROOT / ".venv-tools" / "bin" / "checkov")


def render(path: Path) -> list[dict]:
    kubectl = tool("kubectl")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, render(KUSTOMIZE / "overlays" / request.param)


@pytest.fixture(scope="session")
def base() -> list[dict]:
    return render(KUSTOMIZE / "base")
