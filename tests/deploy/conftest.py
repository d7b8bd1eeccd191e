from __future__ import annotations

import pytest

from tests.deploy.loopback import ensure_haproxy


@pytest.fixture(scope="session")
def haproxy() -> str:
    """The haproxy binary; installed with scripts/ensure-haproxy.sh if missing."""
    return ensure_haproxy()
