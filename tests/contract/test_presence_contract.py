"""Contract of :class:`wsnode.presence.Presence`, run against every backend.

Only the Protocol's public methods are used. Lease tests run on the backend's
own clock (Redis server time for Redis) with a short lease and a bounded poll.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.contract.factories import PresenceFactory
from tests.contract.poll import eventually
from wsnode.ids import ConnId, PodId, UserId
from wsnode.presence import PodState, Presence

P1 = PodId("pod-1")
P2 = PodId("pod-2")
P3 = PodId("pod-3")
ALICE = UserId("alice")
BOB = UserId("bob")
SHORT_LEASE_MS = 300


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
async def presence(make_presence: PresenceFactory) -> Presence:
    p = await make_presence(lease_ms=30_000)
    await p.join(P1)
    await p.join(P2)
    return p


async def conns_of(p: Presence, user: UserId) -> set[tuple[str, str]]:
    return {(c.conn, c.pod) for c in await p.connections(user)}


async def test_empty(presence: Presence) -> None:
    assert await presence.pods_of([ALICE]) == {}
    assert await presence.connections(ALICE) == []
    assert await presence.users() == []
    assert {p.pod for p in await presence.pods()} == {P1, P2}


async def test_add_and_remove_one_connection(presence: Presence) -> None:
    await presence.add(P1, ALICE, ConnId("c1"), 1000)
    assert await presence.pods_of([ALICE]) == {ALICE: {P1}}
    conns = await presence.connections(ALICE)
    assert [(c.conn, c.pod, c.since) for c in conns] == [("c1", P1, 1000)]
    await presence.remove(P1, ALICE, ConnId("c1"))
    assert await presence.pods_of([ALICE]) == {}
    assert await presence.connections(ALICE) == []
    assert await presence.users() == []


async def test_user_on_two_pods_with_three_connections(presence: Presence) -> None:
    await presence.add(P1, ALICE, ConnId("c1"), 1000)
    await presence.add(P1, ALICE, ConnId("c2"), 2000)
    await presence.add(P2, ALICE, ConnId("c3"), 3000)

    assert await presence.pods_of([ALICE]) == {ALICE: {P1, P2}}
    conns = await presence.connections(ALICE)
    assert sorted((c.conn, c.pod, c.since) for c in conns) == [
        ("c1", P1, 1000), ("c2", P1, 2000), ("c3", P2, 3000)]
    users = await presence.users()
    assert [(u.user, u.connections, sorted(u.pods)) for u in users] == [(ALICE, 3, [P1, P2])]

    await presence.remove(P1, ALICE, ConnId("c1"))
    assert await presence.pods_of([ALICE]) == {ALICE: {P1, P2}}
    assert await conns_of(presence, ALICE) == {("c2", P1), ("c3", P2)}

    await presence.remove(P2, ALICE, ConnId("c3"))
    assert await presence.pods_of([ALICE]) == {ALICE: {P1}}
    assert await conns_of(presence, ALICE) == {("c2", P1)}

    await presence.remove(P1, ALICE, ConnId("c2"))
    assert await presence.pods_of([ALICE]) == {}
    assert await presence.users() == []


async def test_remove_is_idempotent_and_exact(presence: Presence) -> None:
    await presence.add(P1, ALICE, ConnId("c1"), 1)
    await presence.add(P1, BOB, ConnId("c2"), 1)
    await presence.remove(P1, ALICE, ConnId("unknown"))
    await presence.remove(P2, ALICE, ConnId("c1"))  # wrong pod: not that connection
    await presence.remove(P1, ALICE, ConnId("c2"))  # wrong user: not that connection
    assert await presence.pods_of([ALICE, BOB]) == {ALICE: {P1}, BOB: {P1}}
    assert [(p.pod, p.connections, p.users) for p in await presence.pods()
            if p.pod == P1] == [(P1, 2, 2)]
    await presence.remove(P1, ALICE, ConnId("c1"))
    await presence.remove(P1, ALICE, ConnId("c1"))
    assert await presence.pods_of([ALICE, BOB]) == {BOB: {P1}}
    # what a pod leaves behind is really gone: a new life of it starts empty
    await presence.leave(P1)
    await presence.join(P1)
    assert await presence.pods_of([ALICE, BOB]) == {}
    assert await presence.connections(BOB) == []


async def test_pods_of_is_batched(presence: Presence) -> None:
    await presence.add(P1, ALICE, ConnId("c1"), 1)
    await presence.add(P2, BOB, ConnId("c2"), 1)
    result = await presence.pods_of([ALICE, BOB, UserId("carol")])
    assert result == {ALICE: {P1}, BOB: {P2}}
    assert await presence.pods_of([]) == {}


async def test_users_filter_by_pod(presence: Presence) -> None:
    await presence.add(P1, ALICE, ConnId("c1"), 1)
    await presence.add(P2, ALICE, ConnId("c2"), 1)
    await presence.add(P2, BOB, ConnId("c3"), 1)
    assert sorted(u.user for u in await presence.users()) == [ALICE, BOB]
    assert [u.user for u in await presence.users(pod=P1)] == [ALICE]
    on_p2 = {u.user: u for u in await presence.users(pod=P2)}
    assert set(on_p2) == {ALICE, BOB}
    # the filter selects users; their counts still cover every pod
    assert on_p2[ALICE].connections == 2
    assert sorted(on_p2[ALICE].pods) == [P1, P2]
    assert await presence.users(pod=P3) == []


async def test_pods_counts_and_state(presence: Presence) -> None:
    await presence.add(P1, ALICE, ConnId("c1"), 1)
    await presence.add(P1, ALICE, ConnId("c2"), 1)
    await presence.add(P1, BOB, ConnId("c3"), 1)
    await presence.add(P2, BOB, ConnId("c4"), 1)
    before = now_ms()
    assert await presence.heartbeat(P2, PodState.DRAINING) is True
    pods = {p.pod: p for p in await presence.pods()}
    assert set(pods) == {P1, P2}
    assert (pods[P1].state, pods[P1].connections, pods[P1].users) == (PodState.ACTIVE, 3, 2)
    assert (pods[P2].state, pods[P2].connections, pods[P2].users) == (PodState.DRAINING, 1, 1)
    # a coarse check: backends may use their own clock for heartbeats
    assert abs(pods[P2].last_heartbeat - before) < 60_000
    assert await presence.heartbeat(P2, PodState.ACTIVE) is True
    assert {p.pod: p.state for p in await presence.pods()}[P2] is PodState.ACTIVE


async def test_join_with_draining_state(make_presence: PresenceFactory) -> None:
    presence = await make_presence()
    await presence.join(P3, PodState.DRAINING)
    assert [(p.pod, p.state) for p in await presence.pods()] == [(P3, PodState.DRAINING)]


async def test_leave_removes_the_pod_and_its_entries(presence: Presence) -> None:
    await presence.add(P1, ALICE, ConnId("c1"), 1)
    await presence.add(P2, ALICE, ConnId("c2"), 1)
    await presence.add(P1, BOB, ConnId("c3"), 1)
    await presence.leave(P1)
    assert await presence.pods_of([ALICE, BOB]) == {ALICE: {P2}}
    assert await conns_of(presence, ALICE) == {("c2", P2)}
    assert await presence.connections(BOB) == []
    assert [p.pod for p in await presence.pods()] == [P2]
    await presence.leave(P1)  # idempotent
    await presence.leave(P3)  # never joined
    assert [p.pod for p in await presence.pods()] == [P2]


async def test_rejoin_does_not_inherit_entries(presence: Presence) -> None:
    await presence.add(P1, ALICE, ConnId("old"), 1)
    await presence.add(P2, ALICE, ConnId("other"), 1)
    await presence.join(P1)  # the pod restarted under the same id
    assert await conns_of(presence, ALICE) == {("other", P2)}
    pods = {p.pod: p for p in await presence.pods()}
    assert (pods[P1].connections, pods[P1].users) == (0, 0)
    await presence.add(P1, ALICE, ConnId("new"), 2)
    assert await conns_of(presence, ALICE) == {("other", P2), ("new", P1)}


@pytest.mark.parametrize(
    "user",
    ["ユーザー", "a b:c{d}", "u:1", "{u:alice}", "user with spaces", "🙂", "a%20b", "*"],
)
async def test_odd_user_ids_round_trip(presence: Presence, user: str) -> None:
    uid = UserId(user)
    await presence.add(P1, uid, ConnId(f"conn:{{x}} {user}"), 5)
    await presence.add(P2, BOB, ConnId("c-bob"), 5)
    assert await presence.pods_of([uid]) == {uid: {P1}}
    assert [(c.conn, c.pod) for c in await presence.connections(uid)] == [
        (f"conn:{{x}} {user}", P1)]
    assert [u.user for u in await presence.users(pod=P1)] == [uid]
    await presence.remove(P1, uid, ConnId(f"conn:{{x}} {user}"))
    assert await presence.pods_of([uid]) == {}
    assert [u.user for u in await presence.users()] == [BOB]


async def test_odd_pod_ids_round_trip(make_presence: PresenceFactory) -> None:
    presence = await make_presence()
    pod = PodId("pod {a}:ü 1")
    await presence.join(pod)
    await presence.add(pod, ALICE, ConnId("c1"), 1)
    assert await presence.pods_of([ALICE]) == {ALICE: {pod}}
    assert [p.pod for p in await presence.pods()] == [pod]
    await presence.leave(pod)
    assert await presence.pods_of([ALICE]) == {}


# -- leases (real time) -------------------------------------------------------


async def _alive_pods(presence: Presence, keep: PodId) -> set[PodId]:
    """Readers' view of live pods, while ``keep`` keeps heartbeating."""
    await presence.heartbeat(keep, PodState.ACTIVE)
    return {p.pod for p in await presence.pods()}


async def test_silent_pod_stops_counting_within_the_lease(
    make_presence: PresenceFactory,
) -> None:
    presence = await make_presence(lease_ms=SHORT_LEASE_MS)
    await presence.join(P1)
    await presence.join(P2)
    await presence.add(P1, ALICE, ConnId("c1"), 1)
    await presence.add(P2, ALICE, ConnId("c2"), 1)
    await presence.add(P1, BOB, ConnId("c3"), 1)
    started = time.monotonic()
    assert await presence.pods_of([ALICE, BOB]) == {ALICE: {P1, P2}, BOB: {P1}}

    # P2 keeps heartbeating, P1 falls silent
    await eventually(lambda: _alive_pods(presence, P2), lambda pods: pods == {P2})
    # gone within the lease (plus slack for a slow store), not merely eventually
    assert time.monotonic() - started < SHORT_LEASE_MS / 1000 + 0.5
    # every reader agrees, before any reap
    assert await presence.pods_of([ALICE, BOB]) == {ALICE: {P2}}
    assert await conns_of(presence, ALICE) == {("c2", P2)}
    assert await presence.connections(BOB) == []
    assert [u.user for u in await presence.users()] == [ALICE]
    assert await presence.users(pod=P1) == []

    assert await presence.reap() == [P1]
    assert await presence.reap() == []
    assert await presence.pods_of([ALICE, BOB]) == {ALICE: {P2}}


async def test_live_pods_are_the_pods_with_a_live_lease(
    make_presence: PresenceFactory,
) -> None:
    presence = await make_presence(lease_ms=SHORT_LEASE_MS)
    assert await presence.live_pods() == []
    await presence.join(P2)
    await presence.join(P1)
    assert await presence.live_pods() == [P1, P2]  # sorted, with no connection needed

    async def live() -> list[PodId]:
        await presence.heartbeat(P2, PodState.ACTIVE)
        return await presence.live_pods()

    await eventually(live, lambda pods: pods == [P2])
    await presence.leave(P2)
    assert await presence.live_pods() == []


async def test_heartbeats_keep_a_pod_alive(make_presence: PresenceFactory) -> None:
    presence = await make_presence(lease_ms=SHORT_LEASE_MS)
    await presence.join(P1)
    await presence.add(P1, ALICE, ConnId("c1"), 1)
    deadline = time.monotonic() + 3 * SHORT_LEASE_MS / 1000
    while time.monotonic() < deadline:  # heartbeat well within the lease for 3 leases
        assert await presence.heartbeat(P1, PodState.ACTIVE) is True
        assert await presence.pods_of([ALICE]) == {ALICE: {P1}}
        await asyncio.sleep(SHORT_LEASE_MS / 6000)
    assert await presence.reap() == []


async def test_lapsed_heartbeat_returns_false_then_add_many_reannounces(
    make_presence: PresenceFactory,
) -> None:
    presence = await make_presence(lease_ms=SHORT_LEASE_MS)
    await presence.join(P1)
    await presence.add(P1, ALICE, ConnId("c1"), 10)
    await presence.add(P1, BOB, ConnId("c2"), 20)
    await eventually(lambda: presence.pods_of([ALICE]), lambda found: found == {})

    assert await presence.heartbeat(P1, PodState.ACTIVE) is False
    # the pod counts again, but only with what it re-announces
    assert [p.pod for p in await presence.pods()] == [P1]
    assert await presence.pods_of([ALICE, BOB]) == {}
    await presence.add_many(P1, [(ALICE, ConnId("c1"), 10), (BOB, ConnId("c2"), 20)])
    assert await presence.pods_of([ALICE, BOB]) == {ALICE: {P1}, BOB: {P1}}
    assert [(c.conn, c.since) for c in await presence.connections(BOB)] == [("c2", 20)]
    assert await presence.heartbeat(P1, PodState.ACTIVE) is True


async def test_lapsed_pod_after_reap_rejoins_on_heartbeat(
    make_presence: PresenceFactory,
) -> None:
    presence = await make_presence(lease_ms=SHORT_LEASE_MS)
    await presence.join(P1)
    await presence.add(P1, ALICE, ConnId("c1"), 1)
    await eventually(presence.reap, lambda reaped: reaped == [P1])
    assert await presence.pods() == []
    assert await presence.heartbeat(P1, PodState.ACTIVE) is False
    assert [p.pod for p in await presence.pods()] == [P1]
    assert await presence.connections(ALICE) == []


async def test_rejoin_after_expiry_does_not_inherit(make_presence: PresenceFactory) -> None:
    presence = await make_presence(lease_ms=SHORT_LEASE_MS)
    await presence.join(P1)
    await presence.add(P1, ALICE, ConnId("c1"), 1)
    await eventually(lambda: presence.pods_of([ALICE]), lambda found: found == {})
    await presence.join(P1)  # a new life, before anyone reaped the old one
    assert await presence.pods_of([ALICE]) == {}
    assert await presence.connections(ALICE) == []
    pods = await presence.pods()
    assert [(p.pod, p.connections) for p in pods] == [(P1, 0)]

