"""The resend loop's steps over the memory backends, on a ManualClock: which
pod resends what, and when a user leaves the due index. Two pods share one
store, one presence and one in-process bus, as two pods share Redis and
RabbitMQ (the e2e and fault tests cover the real thing)."""

from __future__ import annotations

import pytest

from wsnode import failpoints
from wsnode.acks import AckPolicy
from wsnode.acks_memory import MemoryAcks
from wsnode.bus import Delivery, MemoryBus
from wsnode.clock import ManualClock
from wsnode.ids import ConnId, MsgId, PodId, UserId
from wsnode.metrics import Metrics
from wsnode.presence import MemoryPresence
from wsnode.protocol import Envelope
from wsnode.resend import Resender, Sweeper
from wsnode.sender import Sender

ALICE, BOB, CAROL = UserId("alice"), UserId("bob"), UserId("carol")
POLICY = AckPolicy(retry_interval_ms=100, max_attempts=3, ttl_ms=60_000)


class Pod:
    """One pod's view: the users it holds, and the frames its connections got."""

    def __init__(self, name: str, clock: ManualClock, acks: MemoryAcks,
                 presence: MemoryPresence, bus: MemoryBus) -> None:
        self.name = PodId(name)
        self.held: set[UserId] = set()
        self.busy: set[UserId] = set()
        self.got: list[tuple[UserId, MsgId | None]] = []
        self.presence = presence
        self.metrics = Metrics()
        self.bus = bus
        self.sender = Sender(presence=presence, bus=bus, acks=acks, metrics=self.metrics,
                             pod=self.name, local=self, clock=clock)
        self.resender = Resender(acks, presence, self.sender, self.metrics,
                                 holds=self.held.__contains__, held=lambda: self.held,
                                 busy=self.busy.__contains__, interval=0.1)

    def deliver_local(self, delivery: Delivery) -> int:
        if delivery.user not in self.held:
            return 0
        self.got.append((delivery.user, delivery.ack_id))
        return 1

    async def on_deliveries(self, batch: list[Delivery]) -> None:
        for d in batch:
            self.deliver_local(d)

    async def start(self) -> Pod:
        async def nothing(_: object) -> None:
            return None
        await self.presence.join(self.name)
        await self.bus.start(self.name, self.on_deliveries, nothing, self.on_deliveries)
        return self

    async def hold(self, user: UserId) -> None:
        self.held.add(user)
        await self.presence.add(self.name, user, ConnId(f"{self.name}-{user}"), 0)

    def resends(self) -> int:
        return int(self.metrics.acks_resent._value.get())


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def acks(clock: ManualClock) -> MemoryAcks:
    return MemoryAcks(POLICY, clock)


@pytest.fixture
async def pods(clock: ManualClock, acks: MemoryAcks) -> tuple[Pod, Pod]:
    presence, bus = MemoryPresence(lease_ms=3_600_000, clock=clock), MemoryBus()
    a = await Pod("a", clock, acks, presence, bus).start()
    b = await Pod("b", clock, acks, presence, bus.attach()).start()
    return a, b


async def store(acks: MemoryAcks, user: UserId, msg_id: str) -> None:
    await acks.store(user, Envelope(type="n", id=msg_id, requires_ack=True))


async def test_a_pod_resends_what_is_due_for_the_users_it_holds(
        pods: tuple[Pod, Pod], acks: MemoryAcks, clock: ManualClock) -> None:
    a, _ = pods
    await a.hold(ALICE)
    await store(acks, ALICE, "m1")  # stored but never routed: a sender died
    await store(acks, BOB, "m2")
    assert await a.resender.resend_step() == pytest.approx(0.1)
    assert a.got == []
    clock.advance(100)
    await a.resender.resend_step()
    assert a.got == [(ALICE, "m1")]  # bob is held nowhere: his waits for his connect
    [msg] = await acks.pending(ALICE)
    assert msg.attempts == 2


async def test_a_user_on_two_pods_gets_one_resend_per_attempt(
        pods: tuple[Pod, Pod], acks: MemoryAcks, clock: ManualClock) -> None:
    a, b = pods
    await a.hold(ALICE)
    await b.hold(ALICE)
    await store(acks, ALICE, "m1")
    clock.advance(100)
    await a.resender.resend_step()
    await b.resender.resend_step()
    # One claim won; its pod delivered here and published to the other.
    assert (a.got, b.got) == ([(ALICE, "m1")], [(ALICE, "m1")])
    assert a.resends() + b.resends() == 1


async def test_the_wait_follows_the_store(pods: tuple[Pod, Pod], acks: MemoryAcks,
                                          clock: ManualClock) -> None:
    a, _ = pods
    await a.hold(ALICE)
    await store(acks, ALICE, "m1")
    clock.advance(70)
    assert await a.resender.resend_step() == pytest.approx(0.03)


async def test_a_user_nobody_holds_leaves_the_index_and_comes_back_on_connect(
        pods: tuple[Pod, Pod], acks: MemoryAcks, clock: ManualClock) -> None:
    a, b = pods
    await store(acks, CAROL, "m1")
    clock.advance(100)
    await a.resender.resend_step()
    assert [u for u, _ in (await acks.due()).users] == [CAROL]  # within the grace
    clock.advance(a.resender.grace_ms)
    await a.resender.resend_step()
    assert (await acks.due()).users == []
    assert (await acks.pending(CAROL))[0].attempts == 1  # nothing was spent
    await b.hold(CAROL)  # connects, gets the replay, and the pod schedules her
    await acks.schedule(CAROL)
    await b.resender.resend_step()
    assert b.got == [(CAROL, "m1")]


async def test_a_user_held_elsewhere_is_left_to_that_pod(
        pods: tuple[Pod, Pod], acks: MemoryAcks, clock: ManualClock) -> None:
    a, b = pods
    await b.hold(ALICE)
    b.busy.add(ALICE)  # b skips her for now
    await store(acks, ALICE, "m1")
    clock.advance(100 + a.resender.grace_ms)
    await a.resender.resend_step()
    assert [u for u, _ in (await acks.due()).users] == [ALICE]
    b.busy.clear()
    await b.resender.resend_step()
    assert b.got == [(ALICE, "m1")]


async def test_a_backed_up_client_is_skipped_without_spending_an_attempt(
        pods: tuple[Pod, Pod], acks: MemoryAcks, clock: ManualClock) -> None:
    a, _ = pods
    await a.hold(ALICE)
    a.busy.add(ALICE)
    await store(acks, ALICE, "m1")
    clock.advance(100)
    await a.resender.resend_step()
    assert a.got == [] and (await acks.pending(ALICE))[0].attempts == 1
    a.busy.clear()
    await a.resender.resend_step()
    assert a.got == [(ALICE, "m1")]


async def test_one_failing_claim_holds_back_no_other_user(
        pods: tuple[Pod, Pod], acks: MemoryAcks, clock: ManualClock) -> None:
    a, _ = pods
    await a.hold(ALICE)
    await a.hold(BOB)
    await store(acks, ALICE, "a1")
    await store(acks, BOB, "b1")
    clock.advance(100)
    failpoints.configure("resend.claim=1*raise")
    try:
        await a.resender.resend_step()  # does not raise
    finally:
        failpoints.configure("")
    assert len(a.got) == 1
    assert a.resender.problem == "resend claims failing for 1 user(s)"
    await a.resender.resend_step()  # the failed one is still due: claimed now
    assert sorted(a.got) == [(ALICE, "a1"), (BOB, "b1")]
    assert a.resender.problem is None


async def test_reconcile_puts_held_users_back_in_the_index(
        pods: tuple[Pod, Pod], acks: MemoryAcks, clock: ManualClock) -> None:
    a, _ = pods
    await a.hold(ALICE)
    await store(acks, ALICE, "m1")
    clock.advance(100)
    [(_, since)] = (await acks.due()).users
    assert await acks.forget(ALICE, since)  # an index entry lost to a crash
    await a.resender.resend_step()
    assert a.got == []
    await a.resender.reconcile_step()
    await a.resender.resend_step()
    assert a.got == [(ALICE, "m1")]


async def test_out_of_attempts_and_expired_messages_are_reported_once(
        pods: tuple[Pod, Pod], acks: MemoryAcks, clock: ManualClock) -> None:
    a, _ = pods
    await a.hold(ALICE)
    await store(acks, ALICE, "m1")
    for wait in (100, 200, 400):
        clock.advance(wait)
        await a.resender.resend_step()
    dead = a.metrics.acks_dead_lettered.labels("max_attempts")._value.get()
    assert dead == 1 and a.resends() == 2
    await acks.store(BOB, Envelope(type="n", id="b1", requires_ack=True,
                                   expires_at=clock.now_ms() + 10))
    clock.advance(10)
    await Sweeper(acks, a.sender).step()
    assert a.metrics.acks_dead_lettered.labels("expired")._value.get() == 1
