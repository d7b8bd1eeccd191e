"""Shared fixtures: real pod processes, stopped by pid when the test ends, and
the private Redis topologies (a Redis Cluster, a Sentinel set) that tests of
several directories share: each is started the first time a test asks for it
and stopped by pid when the session ends (skipped, with the reason, where it
cannot start)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.support.cluster import ClusterSlice
from tests.support.pods import PodProcess
from tests.support.rabbit_cluster import RabbitCluster
from tests.support.rabbit_cluster import start_or_skip as start_rabbit_or_skip
from tests.support.redis_cluster import RedisClusterServers, SentinelServers, start_or_skip

# A runner started in the background by a non-interactive shell ignores SIGINT, and
# so would every process the tests start (exec keeps an ignored signal ignored, a
# caught one is reset to the default): the tests that press Ctrl-C on wsctl or a
# client need it delivered.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

PodFactory = Callable[..., PodProcess]

# Session fixtures that start private brokers (a 3-node RabbitMQ cluster takes
# ~20 s and three Erlang VMs): their users run in one pytest-xdist worker, so the
# suite starts each once, however many workers `make test` runs.
_ONE_WORKER_FIXTURES = ("rabbit_cluster", "redis_cluster_servers", "redis_sentinel_servers")


_LOG_TAIL_LINES = 80


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None],
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report carries the tail of every log in its ``tmp_path``
    (the pods' own, ``<pod-id>.log``): on CI that is all there is to read of
    what the pods saw."""
    report = yield
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if report.failed and call.when != "teardown" and isinstance(tmp, Path):
        for path in sorted(tmp.rglob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
            report.sections.append((f"{path.relative_to(tmp)} (last {len(lines)} lines)",
                                    "\n".join(lines)))
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Group the tests for ``pytest -n N --dist loadgroup`` (``make test``): the
    users of a session broker fixture in one group per fixture, every other
    test with the rest of its module (module fixtures set up once, a module's
    tests in their written order). Without xdist the marks change nothing."""
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue  # grouped by its param (tests/contract/conftest.py)
        used = getattr(item, "fixturenames", ())
        group = next((name for name in _ONE_WORKER_FIXTURES if name in used),
                     item.nodeid.split("::", 1)[0])
        item.add_marker(pytest.mark.xdist_group(group))


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
async def cluster() -> AsyncIterator[ClusterSlice]:
    """A test's own slice of the shared Redis and RabbitMQ, deleted afterwards
    (the pods it adopted are killed first)."""
    slice_ = ClusterSlice()
    yield slice_
    await slice_.cleanup()


@pytest.fixture
def pod(pod_factory: PodFactory) -> PodProcess:
    """One embedded pod with the chat example and fast ACK retries."""
    return pod_factory("pod-a", env={"WSNODE_ACK_RETRY_INTERVAL": "300ms",
                                     "WSNODE_ACK_MAX_ATTEMPTS": "3"},
                       args=["--app", "wsnode.examples.chat"])


@pytest.fixture(scope="session")
def rabbit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    """A private 3-node RabbitMQ cluster for the session (its start takes ~20 s).
    Tests that stop a node leave it to the next user of the cluster to restart
    it (``rabbit_cluster_up``)."""
    with closing(start_rabbit_or_skip(tmp_path_factory.mktemp("rabbit"))) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_cluster_servers(tmp_path_factory: pytest.TempPathFactory
                          ) -> Iterator[RedisClusterServers]:
    """A private Redis Cluster (3 masters, one replica each) for the session.
    Tests that kill a master restart it (it comes back as a replica) and wait
    for :meth:`~RedisClusterServers.await_healthy` before they end."""
    servers = start_or_skip(RedisClusterServers, tmp_path_factory.mktemp("redis-cluster"))
    assert isinstance(servers, RedisClusterServers)
    with closing(servers):
        yield servers


@pytest.fixture(scope="session")
def redis_sentinel_servers(tmp_path_factory: pytest.TempPathFactory
                           ) -> Iterator[SentinelServers]:
    """A private Sentinel set (master, replica, three sentinels) for the session."""
    servers = start_or_skip(SentinelServers, tmp_path_factory.mktemp("redis-sentinel"))
    assert isinstance(servers, SentinelServers)
    with closing(servers):
        yield servers
