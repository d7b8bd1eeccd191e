"""Fixtures of the client tests: embedded pods, cluster slices, pod groups."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.client import tooling
from tests.conftest import PodFactory
from tests.support.cluster import ClusterSlice
from tests.support.pods import PodProcess

APP = ["--app", "tests.e2e.app"]


def start_pod(pod_factory: PodFactory, pod_id: str, env: dict[str, str]) -> PodProcess:
    """A pod, started again on new ports if another process took the free ones
    between ``free_port()`` and the pod's bind (other suites run beside this one)."""
    for attempt in range(3):
        try:
            return pod_factory(pod_id, env=env, args=APP)
        except RuntimeError as exc:
            if "address already in use" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def app_pod(pod_factory: PodFactory) -> PodProcess:
    """One embedded pod with the test handlers and fast ACK retries."""
    return start_pod(pod_factory, "pod-a", {"WSNODE_ACK_RETRY_INTERVAL": "300ms",
                                            "WSNODE_ACK_MAX_ATTEMPTS": "10"})


def start_cluster(pod_factory: PodFactory, cluster: ClusterSlice, count: int,
                  **env: str) -> list[PodProcess]:
    """``count`` pods (pod-a, pod-b, ...) of one cluster, rate limit off (unless
    ``env`` sets one)."""
    settings = cluster.env(**{"WSNODE_RATE_LIMIT": "0", **env})
    return [cluster.adopt(start_pod(pod_factory, f"pod-{chr(ord('a') + i)}", settings))
            for i in range(count)]


@pytest.fixture(scope="session")
def npm_modules() -> Path:
    """The test-only npm packages of clients/js, installed once per session."""
    try:
        return tooling.npm_dependencies()
    except tooling.MissingTool as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, installed with apt-get once if missing; never skipped."""
    try:
        return tooling.chromium()
    except tooling.MissingTool as exc:
        pytest.fail(str(exc), pytrace=False)
