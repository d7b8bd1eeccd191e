"""Shared fixtures: real pod processes, stopped by pid when the test ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.pods import PodProcess

PodFactory = Callable[..., PodProcess]


@pytest.fixture
def pod_factory(tmp_path: Path) -> Iterator[PodFactory]:
    """Start ``wsnode serve`` processes; every one is stopped at teardown."""
    pods: list[PodProcess] = []

    def start(pod_id: str = "pod-a", env: dict[str, str] | None = None,
              args: list[str] | None = None) -> PodProcess:
        pod = PodProcess(pod_id, tmp_path, env, args)
        pods.append(pod)
        return pod.start()

    yield start
    for pod in pods:
        pod.kill()


@pytest.fixture
def pod(pod_factory: PodFactory) -> PodProcess:
    """One embedded pod with the chat example and fast ACK retries."""
    return pod_factory("pod-a", env={"WSNODE_ACK_RETRY_INTERVAL": "300ms",
                                     "WSNODE_ACK_MAX_ATTEMPTS": "3"},
                       args=["--app", "wsnode.examples.chat"])
