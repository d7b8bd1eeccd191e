"""Unit tests: no network, no sleeps, no stray configuration.

Every unit test runs in an empty temporary working directory (so no ``.env``
is read) with every ``WSNODE_*`` variable of the outer environment removed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("WSNODE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path
