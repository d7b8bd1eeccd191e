"""When an ACK-store write counts on a replicated Redis (``wsnode.redis_wait``)."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError

from wsnode.redis_conn import translate
from wsnode.redis_wait import PROBE_MS, ReplicaWait


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_node_whose_replica_confirmed_lately_refuses_a_short_answer() -> None:
    clock = Clock()
    wait = ReplicaWait(1, wait_ms=500, grace_s=30, clock=clock)
    assert wait.verdict("n1", 1) is None
    assert wait.timeout_ms("n1") == 500
    clock.now += 29
    error = wait.verdict("n1", 0)
    assert error is not None
    assert type(translate(error, "ack store")).__name__ == "BackendUnavailable"
    assert "NOREPLICAS 0 of 1 replica(s) confirmed the write within 500 ms on n1" in str(error)


def test_a_node_without_a_replica_for_the_grace_keeps_its_writes_and_probes() -> None:
    clock = Clock()
    wait = ReplicaWait(1, wait_ms=500, grace_s=30, clock=clock)
    wait.verdict("n1", 1)
    clock.now += 31
    assert wait.timeout_ms("n1") == PROBE_MS  # no latency while degraded
    assert wait.verdict("n1", 0) is None
    # A master never seen confirmed (a replica just promoted) keeps writes at once.
    assert wait.timeout_ms("n2") == PROBE_MS
    assert wait.verdict("n2", 0) is None
    # The first full answer makes it a confirmed node again.
    assert wait.verdict("n2", 1) is None
    assert wait.timeout_ms("n2") == 500
    assert wait.verdict("n2", 0) is not None


def test_an_error_answer_fails_the_writes() -> None:
    wait = ReplicaWait(1)
    error = RedisConnectionError("gone")
    assert wait.verdict("", error) is error
