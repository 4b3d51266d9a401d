import os

import pytest

from riverlake.settings import get_settings


@pytest.fixture(autouse=True)
def _clean_riverlake_env(monkeypatch):
    """Unit tests see default settings, whatever stack an integration fixture started."""
    for key in list(os.environ):
        if key.startswith("RIVERLAKE_"):
            monkeypatch.delenv(key)


@pytest.fixture
def settings(tmp_path, monkeypatch):
    """Settings of a local-path lake of the test's own (no store, no stack)."""
    monkeypatch.setenv("RIVERLAKE_LAKE_URL", str(tmp_path / "lake"))
    monkeypatch.setenv("RIVERLAKE_HOME", str(tmp_path / "home"))
    return get_settings()
