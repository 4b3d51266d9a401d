import os

import pytest


@pytest.fixture(autouse=True)
def _clean_riverlake_env(monkeypatch):
    """Unit tests see default settings, whatever stack an integration fixture started."""
    for key in list(os.environ):
        if key.startswith("RIVERLAKE_"):
            monkeypatch.delenv(key)
