"""When an ACK-store write counts on a replicated Redis (``wsnode.redis_wait``)."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError

from wsnode.errors import BackendUnavailable
from wsnode.redis_conn import translate
from wsnode.redis_wait import PROBE_MS, RECHECK_S, ReplicaWait


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Online:
    """``online()`` for a node that has ``n`` replicas online; counts the questions."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.asked = 0

    async def __call__(self) -> int:
        self.asked += 1
        return self.n


online = Online


async def test_a_node_whose_replica_confirmed_lately_refuses_a_short_answer() -> None:
    clock = Clock()
    wait = ReplicaWait(1, wait_ms=500, grace_s=30, clock=clock)
    assert await wait.verdict("n1", 1, online(1)) is None
    assert wait.timeout_ms("n1") == 500
    clock.now += 29
    # Even if the node says it has no replica now: its replica may be taking over.
    error = await wait.verdict("n1", 0, online(0))
    assert error is not None
    assert isinstance(translate(error, "ack store"), BackendUnavailable)
    assert "NOREPLICAS 0 of 1 replica(s) confirmed the write within 500 ms on n1" in str(error)


async def test_a_master_without_replicas_keeps_its_writes_and_probes() -> None:
    clock = Clock()
    wait = ReplicaWait(1, wait_ms=500, grace_s=30, clock=clock)
    # Never confirmed (a replica just promoted), and no replica online: kept.
    assert wait.timeout_ms("n2") == 500
    ask = online(0)
    assert await wait.verdict("n2", 0, ask) is None
    assert wait.timeout_ms("n2") == PROBE_MS  # no latency while it has none
    assert await wait.verdict("n2", 0, ask) is None
    assert ask.asked == 1  # believed for a while, not asked at every write
    clock.now += RECHECK_S + 1
    assert wait.timeout_ms("n2") == 500  # asked again (a full WAIT) after a while
    # The first full answer makes it a confirmed node: short answers are refused again.
    assert await wait.verdict("n2", 1, ask) is None
    assert await wait.verdict("n2", 0, online(0)) is not None


async def test_slow_replicas_or_an_unknown_count_do_not_confirm() -> None:
    wait = ReplicaWait(1, grace_s=30, clock=Clock())
    error = await wait.verdict("n3", 0, online(1))  # never confirmed, replica online
    assert error is not None and "1 replica(s) online, slow" in str(error)

    async def broken() -> int:
        raise RedisConnectionError("gone")
    assert await wait.verdict("n4", 0, broken) is not None
    failure = RedisConnectionError("gone")
    assert await wait.verdict("", failure, online(1)) is failure
