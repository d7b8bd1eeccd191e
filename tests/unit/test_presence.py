"""MemoryPresence lease arithmetic on a hand-moved clock.

Behaviour shared with the Redis backend is in tests/contract/test_presence_contract.py;
these tests pin the exact lease boundaries.
"""

from __future__ import annotations

import pytest

from wsnode.clock import ManualClock
from wsnode.ids import ConnId, PodId, UserId
from wsnode.presence import MemoryPresence, PodState

P1 = PodId("p1")
P2 = PodId("p2")
ALICE = UserId("alice")
LEASE = 1_000


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def presence(clock: ManualClock) -> MemoryPresence:
    p = MemoryPresence(LEASE, clock)
    await p.join(P1)
    await p.join(P2)
    await p.add(P1, ALICE, ConnId("c1"), clock.now_ms())
    await p.add(P2, ALICE, ConnId("c2"), clock.now_ms())
    return p


async def test_pod_counts_until_the_lease_ends(presence: MemoryPresence,
                                               clock: ManualClock) -> None:
    clock.advance(LEASE - 1)
    await presence.heartbeat(P2, PodState.ACTIVE)
    assert (await presence.pods_of([ALICE]))[ALICE] == {P1, P2}
    clock.advance(1)  # p1's lease ends now; p2 renewed 1 ms ago
    assert (await presence.pods_of([ALICE]))[ALICE] == {P2}
    assert [c.conn for c in await presence.connections(ALICE)] == ["c2"]
    assert [p.pod for p in await presence.pods()] == [P2]
    assert [(u.user, u.connections, u.pods) for u in await presence.users()] == [
        (ALICE, 1, [P2])]
    assert await presence.users(pod=P1) == []


async def test_heartbeat_renews_from_now(presence: MemoryPresence, clock: ManualClock) -> None:
    for _ in range(5):
        clock.advance(LEASE - 1)
        assert await presence.heartbeat(P1, PodState.ACTIVE) is True
        assert await presence.heartbeat(P2, PodState.ACTIVE) is True
    assert (await presence.pods_of([ALICE]))[ALICE] == {P1, P2}
    pods = await presence.pods()
    assert {p.last_heartbeat for p in pods} == {clock.now_ms()}


async def test_reap_only_expired(presence: MemoryPresence, clock: ManualClock) -> None:
    clock.advance(LEASE - 1)
    assert await presence.reap() == []
    await presence.heartbeat(P2, PodState.ACTIVE)
    clock.advance(1)
    assert await presence.reap() == [P1]
    assert await presence.reap() == []


async def test_late_heartbeat_rejoins_empty(presence: MemoryPresence,
                                            clock: ManualClock) -> None:
    clock.advance(LEASE)
    assert await presence.heartbeat(P1, PodState.ACTIVE) is False
    # rejoined, but its old entries are gone until it re-announces them
    assert [p.pod for p in await presence.pods()] == [P1]
    assert await presence.connections(ALICE) == []
    await presence.add_many(P1, [(ALICE, ConnId("c1"), 123)])
    assert [(c.conn, c.pod, c.since) for c in await presence.connections(ALICE)] == [
        ("c1", P1, 123)]
    assert await presence.heartbeat(P1, PodState.ACTIVE) is True


async def test_add_before_join_is_ignored(clock: ManualClock) -> None:
    presence = MemoryPresence(LEASE, clock)
    await presence.add(P1, ALICE, ConnId("c1"), 0)
    assert await presence.connections(ALICE) == []
