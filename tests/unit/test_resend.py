"""Resender timers, driven by a ManualClock: only timers already due fire, so
nothing here waits on real time (the e2e tests cover resends end to end)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from wsnode.acks import AckPolicy, ClaimKind, MemoryAckStore, StoredMessage
from wsnode.bus import Delivery
from wsnode.clock import ManualClock
from wsnode.ids import MsgId, UserId
from wsnode.metrics import Metrics
from wsnode.protocol import Envelope
from wsnode.resend import Resender

ALICE = UserId("alice")
BOB = UserId("bob")
CAROL = UserId("carol")
FAR = 3_600_000  # a due time no test reaches


class Pod:
    """The pod side of a Resender: which users it holds, what it resent."""

    def __init__(self, clock: ManualClock, held: set[UserId]) -> None:
        self.clock = clock
        self.held = held
        self.asked: list[UserId] = []
        self.resent: list[tuple[UserId, str, int]] = []
        self.rerouted: list[Delivery] = []
        self.changed = asyncio.Event()
        self.acks = MemoryAckStore(AckPolicy(retry_interval_ms=100, max_attempts=3), clock)
        self.metrics = Metrics()
        self.resender = Resender(self.acks, self.metrics, resend=self.resend,
                                 reroute=self.reroute, holds=self.holds, clock=clock)

    def holds(self, user: UserId) -> bool:
        self.asked.append(user)
        return user in self.held

    async def resend(self, msg: StoredMessage) -> None:
        self.resent.append((msg.user, msg.id, msg.attempts))
        self.changed.set()

    async def reroute(self, delivery: Delivery) -> None:
        self.rerouted.append(delivery)

    async def store(self, user: UserId, msg_id: str) -> StoredMessage:
        result = await self.acks.store(user, Envelope(type="n", id=msg_id, requires_ack=True))
        assert result.message is not None
        return result.message

    async def resends(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.resent) < count:
                self.changed.clear()
                await self.changed.wait()
        for _ in range(20):  # let any other timer of the same batch finish
            await asyncio.sleep(0)


@pytest.fixture
def pod() -> Pod:
    return Pod(ManualClock(), {ALICE, BOB})


@pytest.fixture
async def running(pod: Pod) -> AsyncIterator[Pod]:
    task = asyncio.create_task(pod.resender.run())
    yield pod
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_due_timer_claims_and_resends(running: Pod) -> None:
    pod = running
    msg = await pod.store(ALICE, "m1")
    pod.clock.advance(100)
    pod.resender.track(ALICE, msg.id, msg.next_due)
    await pod.resends(1)
    assert pod.resent == [(ALICE, "m1", 2)]
    # the claim re-armed the timer at the new due time, in the future
    assert len(pod.resender) == 1
    [pending] = await pod.acks.pending(ALICE)
    assert pending.attempts == 2
    assert pending.next_due == pod.clock.now_ms() + 200


async def test_later_track_supersedes_an_earlier_one(running: Pod) -> None:
    pod = running
    m1 = await pod.store(ALICE, "m1")
    m2 = await pod.store(BOB, "m2")
    pod.clock.advance(100)
    pod.resender.track(ALICE, m1.id, m1.next_due)
    pod.resender.track(ALICE, m1.id, pod.clock.now_ms() + FAR)  # superseded: not due now
    pod.resender.track(BOB, m2.id, m2.next_due)
    await pod.resends(1)
    assert pod.resent == [(BOB, "m2", 2)]
    assert ALICE not in pod.asked
    assert [m.attempts for m in await pod.acks.pending(ALICE)] == [1]


async def test_earlier_track_supersedes_a_later_one(running: Pod) -> None:
    pod = running
    msg = await pod.store(ALICE, "m1")
    pod.resender.track(ALICE, msg.id, pod.clock.now_ms() + FAR)
    pod.clock.advance(100)
    pod.resender.track(ALICE, msg.id, msg.next_due)
    await pod.resends(1)
    assert pod.resent == [(ALICE, "m1", 2)]
    assert pod.asked == [ALICE]


async def test_timer_of_a_user_no_longer_held_does_nothing(running: Pod) -> None:
    pod = running
    gone = await pod.store(CAROL, "gone")
    here = await pod.store(BOB, "here")
    pod.clock.advance(100)
    pod.resender.track(CAROL, gone.id, gone.next_due)
    pod.resender.track(BOB, here.id, here.next_due)
    await pod.resends(1)
    assert CAROL in pod.asked
    assert pod.resent == [(BOB, "here", 2)]
    # carol's message was not claimed: its attempts are untouched for whoever holds her
    [carol_msg] = await pod.acks.pending(CAROL)
    assert carol_msg.attempts == 1
    assert len(pod.resender) == 1  # only bob's re-armed timer remains


async def test_settled_message_is_dropped(running: Pod) -> None:
    pod = running
    acked = await pod.store(ALICE, "acked")
    live = await pod.store(BOB, "live")
    await pod.acks.settle(ALICE, MsgId("acked"))
    pod.clock.advance(100)
    pod.resender.track(ALICE, acked.id, acked.next_due)
    pod.resender.track(BOB, live.id, live.next_due)
    await pod.resends(1)
    assert pod.resent == [(BOB, "live", 2)]
    assert len(pod.resender) == 1  # only bob's re-armed timer remains


async def test_not_yet_due_in_store_is_rearmed(running: Pod) -> None:
    pod = running
    msg = await pod.store(ALICE, "m1")
    other = await pod.store(BOB, "m2")
    pod.clock.advance(100)
    # the store says m1 is due at next_due; a timer that fires early gets WAIT
    pod.resender.track(ALICE, msg.id, pod.clock.now_ms() - 50)
    early = await pod.acks.claim(ALICE, msg.id)  # another pod resent it just now
    assert early.kind is ClaimKind.RESEND
    pod.resender.track(BOB, other.id, other.next_due)
    await pod.resends(1)
    assert pod.resent == [(BOB, "m2", 2)]
    assert [m.attempts for m in await pod.acks.pending(ALICE)] == [2]
    assert len(pod.resender) == 2  # both re-armed at their store due times


async def test_exhausted_message_is_dead_lettered(running: Pod) -> None:
    pod = running
    msg = await pod.store(ALICE, "m1")
    for advance in (100, 200):
        pod.clock.advance(advance)
        assert (await pod.acks.claim(ALICE, msg.id)).kind is ClaimKind.RESEND
    pod.clock.advance(400)
    sentinel = await pod.store(BOB, "sentinel")
    pod.clock.advance(100)
    pod.resender.track(ALICE, msg.id, pod.clock.now_ms())
    pod.resender.track(BOB, sentinel.id, sentinel.next_due)
    await pod.resends(1)
    assert [d.reason.value for d in await pod.acks.dead_letters(ALICE)] == ["max_attempts"]
    assert pod.resent == [(BOB, "sentinel", 2)]


def unrouted(msg: StoredMessage) -> Delivery:
    return Delivery(msg.user, msg.frame(), msg.type, msg.id, msg.next_due)


async def test_unrouted_pending_delivery_is_routed_again(running: Pod) -> None:
    pod = running
    msg = await pod.store(CAROL, "m1")  # a user this pod does not hold: rerouting is not a resend
    sentinel = await pod.store(BOB, "sentinel")
    pod.resender.track_unrouted(unrouted(msg))
    pod.clock.advance(250)
    pod.resender.track(BOB, sentinel.id, pod.clock.now_ms())  # wakes the loop, due now
    await pod.resends(1)
    assert [(d.user, d.ack_id, d.frame) for d in pod.rerouted] == [(CAROL, "m1", msg.frame())]
    [pending] = await pod.acks.pending(CAROL)
    assert pending.attempts == 1  # no client saw it: not a delivery attempt


async def test_unrouted_delivery_of_a_settled_message_is_dropped(running: Pod) -> None:
    pod = running
    msg = await pod.store(ALICE, "m1")
    sentinel = await pod.store(BOB, "sentinel")
    pod.resender.track_unrouted(unrouted(msg))
    await pod.acks.settle(ALICE, msg.id)
    pod.clock.advance(250)
    pod.resender.track(BOB, sentinel.id, pod.clock.now_ms())
    await pod.resends(1)
    assert pod.rerouted == []
