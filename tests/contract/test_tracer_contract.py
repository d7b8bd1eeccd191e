"""Contract of :class:`wsnode.trace.Tracer`, run against every backend.

``record`` never blocks, so a backend may write later: every read of a trail
polls (bounded) until the events are there.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.contract.factories import TracerFactory
from tests.contract.poll import eventually
from wsnode.clock import ManualClock
from wsnode.ids import MsgId, PodId, UserId
from wsnode.trace import MAX_EVENTS, Tracer

ALICE, BOB = UserId("alice"), UserId("bob")
P1, P2 = PodId("p1"), PodId("p2")


async def trail_of(tracer: Tracer, msg_id: str, count: int,
                   user: UserId | None = None) -> list[dict[str, Any]]:
    """The trail once it holds ``count`` events (bounded wait)."""
    async def probe() -> list[dict[str, Any]]:
        return await tracer.trail(MsgId(msg_id), user)
    return await eventually(probe, lambda events: len(events) >= count)


async def test_trail_lists_events_in_time_order_with_their_fields(
        make_tracer: TracerFactory) -> None:
    clock = ManualClock()
    tracer = await make_tracer(clock=clock)
    tracer.record(MsgId("m1"), ALICE, "stored", P1, seq=7)
    clock.advance(1)
    tracer.record(MsgId("m1"), ALICE, "routed", P1, local=0, pods=["p2"], failed=[])
    clock.advance(5)
    tracer.record(MsgId("m1"), ALICE, "delivered", P2, conns=2, hops=0)
    clock.advance(3)
    tracer.record(MsgId("m1"), ALICE, "acked", None, conn="c-1")
    events = await trail_of(tracer, "m1", 4)
    start = clock.now_ms() - 9
    assert events == [
        {"at": start, "event": "stored", "user": "alice", "pod": "p1", "seq": 7},
        {"at": start + 1, "event": "routed", "user": "alice", "pod": "p1", "local": 0,
         "pods": ["p2"], "failed": []},
        {"at": start + 6, "event": "delivered", "user": "alice", "pod": "p2", "conns": 2,
         "hops": 0},
        {"at": start + 9, "event": "acked", "user": "alice", "pod": None, "conn": "c-1"},
    ]
    assert await tracer.trail(MsgId("other")) == []


async def test_trail_is_in_time_order_when_recorded_out_of_order(
        make_tracer: TracerFactory) -> None:
    clock = ManualClock()
    tracer = await make_tracer(clock=clock)
    clock.advance(1000)
    tracer.record(MsgId("m1"), ALICE, "routed", P1)
    clock.advance(-600)  # this clock steps back (or: another pod's clock is behind)
    tracer.record(MsgId("m1"), ALICE, "stored", P1)
    clock.advance(1)
    tracer.record(MsgId("m1"), ALICE, "delivered", P1)
    events = await trail_of(tracer, "m1", 3)
    assert [e["event"] for e in events] == ["stored", "delivered", "routed"]


@pytest.mark.parametrize("backend", ["redis", "redis-cluster"])  # in-process: one pod
async def test_pods_sharing_a_trail_are_merged_in_time_order(
        make_tracer: TracerFactory) -> None:
    clock_a, clock_b = ManualClock(1_000_000), ManualClock(1_000_000)
    pod_a = await make_tracer(clock=clock_a)
    pod_b = await make_tracer(clock=clock_b)
    pod_a.record(MsgId("m1"), ALICE, "stored", P1)
    clock_b.advance(5)
    pod_b.record(MsgId("m1"), ALICE, "delivered", P2)
    clock_a.advance(2)
    pod_a.record(MsgId("m1"), ALICE, "routed", P1)
    events = await trail_of(pod_b, "m1", 3)
    assert [(e["event"], e["pod"]) for e in events] == [
        ("stored", "p1"), ("routed", "p1"), ("delivered", "p2")]


async def test_trail_of_one_user(make_tracer: TracerFactory) -> None:
    tracer = await make_tracer()
    tracer.record(MsgId("m1"), ALICE, "stored", P1)
    tracer.record(MsgId("m1"), BOB, "stored", P1)  # two users' messages with one id
    tracer.record(MsgId("m1"), ALICE, "acked", P1)
    assert len(await trail_of(tracer, "m1", 3)) == 3
    mine = await trail_of(tracer, "m1", 2, ALICE)
    assert [(e["user"], e["event"]) for e in mine] == [("alice", "stored"), ("alice", "acked")]
    assert [e["user"] for e in await tracer.trail(MsgId("m1"), BOB)] == ["bob"]
    assert await tracer.trail(MsgId("m1"), UserId("carol")) == []


async def record_many(make_tracer: TracerFactory, event: str) -> list[dict[str, Any]]:
    """MAX_EVENTS + 20 events of one kind; the trail once all are written."""
    clock = ManualClock()
    tracer = await make_tracer(clock=clock)
    for attempt in range(MAX_EVENTS + 20):
        tracer.record(MsgId("m1"), ALICE, event, P1, attempt=attempt)
        clock.advance(1)
    await tracer.aclose()  # written: nothing to poll for
    return await tracer.trail(MsgId("m1"))


async def test_trail_keeps_the_latest_max_events_of_resends(
        make_tracer: TracerFactory) -> None:
    events = await record_many(make_tracer, "resent")
    assert [e["attempt"] for e in events] == list(range(20, MAX_EVENTS + 20))


async def test_trail_is_capped_whatever_the_events(make_tracer: TracerFactory) -> None:
    events = await record_many(make_tracer, "delivered")
    assert [e["attempt"] for e in events] == list(range(20, MAX_EVENTS + 20))


async def test_aclose_writes_what_is_buffered(make_tracer: TracerFactory) -> None:
    tracer = await make_tracer()
    tracer.record(MsgId("m1"), ALICE, "stored", P1)
    await tracer.aclose()
    assert [e["event"] for e in await tracer.trail(MsgId("m1"))] == ["stored"]


async def test_trail_expires_ttl_after_its_last_event(make_tracer: TracerFactory) -> None:
    tracer = await make_tracer(ttl_ms=300)
    tracer.record(MsgId("m1"), ALICE, "stored", P1)
    assert len(await trail_of(tracer, "m1", 1)) == 1

    async def probe() -> list[dict[str, Any]]:
        return await tracer.trail(MsgId("m1"))
    await eventually(probe, lambda events: events == [], timeout=5.0)


async def test_record_never_raises_nor_blocks_when_the_store_is_gone(
        make_tracer: TracerFactory) -> None:
    tracer = await make_tracer(reachable=False)
    started = time.monotonic()
    for i in range(50):
        tracer.record(MsgId(f"m{i}"), ALICE, "stored", P1, seq=i)
    assert time.monotonic() - started < 0.5  # no I/O on the caller's path
    for _ in range(2):  # the writes fail (bounded), and recording goes on after that
        async with asyncio.timeout(10):
            await tracer.aclose()
        tracer.record(MsgId("m-late"), ALICE, "stored", P1)


async def test_record_never_raises_whatever_the_fields(make_tracer: TracerFactory) -> None:
    tracer = await make_tracer()
    tracer.record(MsgId("m1"), ALICE, "stored", P1, pods={"p1"}, why=ValueError("x"))
    tracer.record(MsgId("m1"), ALICE, "acked", P1)
    events = await trail_of(tracer, "m1", 2)
    assert [e["event"] for e in events] == ["stored", "acked"]


async def test_one_users_events_never_crowd_out_anothers_trail(
        make_tracer: TracerFactory) -> None:
    """Trails are per (user, id): a user with a flood of events for an id (its
    own restores, say) cannot push another user's events of that id out."""
    tracer = await make_tracer()
    tracer.record(MsgId("shared"), BOB, "stored", P1, seq=1)
    for n in range(MAX_EVENTS + 20):
        tracer.record(MsgId("shared"), ALICE, "replayed", P1, n=n)
    bobs = await trail_of(tracer, "shared", 1, BOB)
    assert [e["event"] for e in bobs] == ["stored"]
    everyone = await trail_of(tracer, "shared", MAX_EVENTS + 1)
    assert len(everyone) == MAX_EVENTS + 1  # alice's capped, bob's whole
