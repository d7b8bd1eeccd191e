from __future__ import annotations

import pytest

from tests.conftest import PodFactory
from tests.support.pods import PodProcess

FAST_ACKS = {"WSNODE_ACK_RETRY_INTERVAL": "300ms", "WSNODE_ACK_MAX_ATTEMPTS": "3"}


@pytest.fixture
def app_pod(pod_factory: PodFactory) -> PodProcess:
    """One embedded pod running the test handlers, with fast ACK retries."""
    return pod_factory("pod-a", env=FAST_ACKS, args=["--app", "tests.e2e.app"])
