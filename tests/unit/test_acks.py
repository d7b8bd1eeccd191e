"""MemoryAcks: the exact life of an ACK-required message, on a hand-moved clock.

The shared contract (both backends) is in tests/contract/test_acks_contract.py;
these tests pin the time arithmetic: backoff, attempts, expiry and ttl.
"""

from __future__ import annotations

import orjson
import pytest

from wsnode.acks import AckPolicy, DeadReason, MsgState
from wsnode.acks_memory import MemoryAcks
from wsnode.clock import ManualClock
from wsnode.ids import MsgId, UserId
from wsnode.protocol import Envelope

ALICE = UserId("alice")
BOB = UserId("bob")
POLICY = AckPolicy(retry_interval_ms=100, max_attempts=3, ttl_ms=60_000,
                   max_pending_per_user=5, dead_ttl_ms=600_000, max_dead=1000)


def env(msg_id: str, **kw: object) -> Envelope:
    return Envelope(type="note", payload={"n": msg_id}, id=msg_id, requires_ack=True, **kw)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(clock: ManualClock) -> MemoryAcks:
    return MemoryAcks(POLICY, clock)


# -- policy -------------------------------------------------------------------


def test_backoff_doubles_and_caps_at_16x() -> None:
    policy = AckPolicy(retry_interval_ms=100)
    assert [policy.backoff_ms(n) for n in range(1, 9)] == [
        100, 200, 400, 800, 1600, 1600, 1600, 1600]


# -- store --------------------------------------------------------------------


async def test_seq_increments_per_user_from_one(store: MemoryAcks) -> None:
    seqs = [(await store.store(ALICE, env(f"a{i}"))).seq for i in range(3)]
    assert seqs == [1, 2, 3]
    assert (await store.store(BOB, env("b0"))).seq == 1
    assert (await store.store(ALICE, env("a3"))).seq == 4


async def test_stored_message_fields(store: MemoryAcks, clock: ManualClock) -> None:
    result = await store.store(ALICE, env("m1"))
    msg = result.message
    assert msg is not None
    assert not result.duplicate
    assert result.state is MsgState.PENDING
    assert (msg.user, msg.id, msg.seq, msg.type) == (ALICE, "m1", 1, "note")
    assert msg.stored_at == clock.now_ms()
    assert msg.attempts == 1
    assert msg.next_due == clock.now_ms() + 100
    assert msg.expires_at == clock.now_ms() + 60_000


async def test_frame_is_the_envelope_plus_seq(store: MemoryAcks) -> None:
    original = Envelope(type="note", payload={"text": "hé ユ", "q": '"}'}, id="m1",
                        requires_ack=True, expires_at=1_900_000_000_000)
    msg = (await store.store(ALICE, original)).message
    assert msg is not None
    assert orjson.loads(msg.frame()) == {**original.to_wire(), "seq": 1}


async def test_frame_marks_requires_ack_even_if_caller_forgot(store: MemoryAcks) -> None:
    msg = (await store.store(ALICE, Envelope(type="note", id="m1"))).message
    assert msg is not None
    assert orjson.loads(msg.frame())["requiresAck"] is True


async def test_to_json_is_serialisable(store: MemoryAcks) -> None:
    msg = (await store.store(ALICE, env("m1"))).message
    assert msg is not None
    doc = orjson.loads(orjson.dumps(msg.to_json()))
    assert doc["id"] == "m1"
    assert doc["seq"] == 1
    assert doc["envelope"]["seq"] == 1


async def test_duplicate_while_pending(store: MemoryAcks) -> None:
    first = await store.store(ALICE, env("m1"))
    again = await store.store(ALICE, env("m1"))
    assert again.duplicate
    assert again.seq == first.seq
    assert again.state is MsgState.PENDING
    assert again.message == first.message
    assert [m.id for m in await store.pending(ALICE)] == ["m1"]
    assert (await store.stats()).pending == 1
    # the next new message still gets the next seq: the duplicate used none
    assert (await store.store(ALICE, env("m2"))).seq == 2


async def test_duplicate_after_ack(store: MemoryAcks) -> None:
    first = await store.store(ALICE, env("m1"))
    assert await store.settle(ALICE, MsgId("m1")) is MsgState.PENDING
    again = await store.store(ALICE, env("m1"))
    assert again.duplicate
    assert again.seq == first.seq
    assert again.state is MsgState.ACKED
    assert await store.pending(ALICE) == []
    assert (await store.stats()).pending == 0


async def test_duplicate_after_dead(store: MemoryAcks, clock: ManualClock) -> None:
    first = await store.store(ALICE, env("m1", expires_at=clock.now_ms() + 10))
    clock.advance(10)
    assert len(await store.sweep()) == 1
    again = await store.store(ALICE, env("m1"))
    assert again.duplicate
    assert again.seq == first.seq
    assert again.state is MsgState.DEAD
    assert await store.pending(ALICE) == []


async def test_same_id_for_another_user_is_not_a_duplicate(store: MemoryAcks) -> None:
    await store.store(ALICE, env("m1"))
    result = await store.store(BOB, env("m1"))
    assert not result.duplicate
    assert [m.id for m in await store.pending(BOB)] == ["m1"]


async def test_idempotency_record_lasts_ttl(store: MemoryAcks, clock: ManualClock) -> None:
    await store.store(ALICE, env("m1"))
    await store.settle(ALICE, MsgId("m1"))
    clock.advance(59_999)
    assert (await store.store(ALICE, env("m1"))).duplicate
    clock.advance(1)
    fresh = await store.store(ALICE, env("m1"))
    assert not fresh.duplicate
    assert fresh.seq == 2


# -- pending ------------------------------------------------------------------


async def test_pending_in_seq_order_with_since(store: MemoryAcks, clock: ManualClock) -> None:
    t0 = clock.now_ms()
    for i in range(4):
        await store.store(ALICE, env(f"m{i}"))
        clock.advance(100)
    await store.settle(ALICE, MsgId("m1"))
    assert [m.seq for m in await store.pending(ALICE)] == [1, 3, 4]
    assert [m.id for m in await store.pending(ALICE, since_ms=t0 + 200)] == ["m2", "m3"]
    assert [m.id for m in await store.pending(ALICE, since_ms=t0 + 150)] == ["m2", "m3"]
    assert await store.pending(ALICE, since_ms=t0 + 10_000) == []
    assert await store.pending(UserId("nobody")) == []


async def test_pending_order_survives_resends(store: MemoryAcks, clock: ManualClock) -> None:
    for i in range(3):
        await store.store(ALICE, env(f"m{i}"))
    clock.advance(100)
    assert [m.id for m in (await store.claim_due(ALICE)).resend] == ["m0", "m1", "m2"]
    assert [m.id for m in await store.pending(ALICE)] == ["m0", "m1", "m2"]


async def test_pending_hides_expired_before_sweep(
    store: MemoryAcks, clock: ManualClock
) -> None:
    await store.store(ALICE, env("short", expires_at=clock.now_ms() + 50))
    await store.store(ALICE, env("long"))
    clock.advance(50)
    assert [m.id for m in await store.pending(ALICE)] == ["long"]


# -- settle / status ----------------------------------------------------------


async def test_settle_states(store: MemoryAcks) -> None:
    await store.store(ALICE, env("m1"))
    assert await store.status(ALICE, MsgId("m1")) is MsgState.PENDING
    assert await store.settle(ALICE, MsgId("m1")) is MsgState.PENDING
    assert await store.status(ALICE, MsgId("m1")) is MsgState.ACKED
    assert await store.settle(ALICE, MsgId("m1")) is MsgState.ACKED
    assert await store.settle(ALICE, MsgId("unknown")) is None
    assert await store.settle(UserId("nobody"), MsgId("m1")) is None
    assert await store.settle(BOB, MsgId("m1")) is None  # ids are per user
    assert await store.status(ALICE, MsgId("unknown")) is None


async def test_settle_of_dead_is_dead(store: MemoryAcks, clock: ManualClock) -> None:
    await store.store(ALICE, env("m1", expires_at=clock.now_ms() + 1))
    clock.advance(1)
    await store.sweep()
    assert await store.settle(ALICE, MsgId("m1")) is MsgState.DEAD
    assert await store.status(ALICE, MsgId("m1")) is MsgState.DEAD
    assert len(await store.dead_letters()) == 1  # the ack did not resurrect or drop it


# -- the resend schedule -------------------------------------------------------


async def test_claim_schedule(store: MemoryAcks, clock: ManualClock) -> None:
    t0 = clock.now_ms()
    await store.store(ALICE, env("m1"))
    m1 = MsgId("m1")
    assert (await store.due()).users == []  # nothing due before the first interval

    clock.advance(99)
    assert (await store.claim_due(ALICE)).resend == []
    assert (await store.due()).next_in_ms == 1

    clock.advance(1)
    assert (await store.due()).users == [(ALICE, t0 + 100)]
    [first] = (await store.claim_due(ALICE)).resend
    assert (first.id, first.attempts, first.next_due) == (m1, 2, t0 + 100 + 200)
    # exactly one claimant per attempt: a second claim right after gets nothing
    assert (await store.claim_due(ALICE)).resend == []
    scan = await store.due()
    assert (scan.users, scan.next_in_ms) == ([], 200)

    clock.advance(200)
    [second] = (await store.claim_due(ALICE)).resend
    assert (second.attempts, second.next_due, second.seq) == (3, t0 + 300 + 400, 1)

    clock.advance(399)
    assert (await store.claim_due(ALICE)).resend == []
    clock.advance(1)
    claimed = await store.claim_due(ALICE)
    assert claimed.resend == []
    [dead] = claimed.dead
    assert (dead.reason, dead.dead_at, dead.message.attempts) == (
        DeadReason.MAX_ATTEMPTS, clock.now_ms(), 3)
    assert await store.pending(ALICE) == []
    assert await store.status(ALICE, m1) is MsgState.DEAD
    assert [d.message.id for d in await store.dead_letters()] == ["m1"]
    assert (await store.due()).users == [] and (await store.due()).next_in_ms is None


async def test_backoff_is_capped_at_16x(clock: ManualClock) -> None:
    store = MemoryAcks(AckPolicy(retry_interval_ms=10, max_attempts=10), clock)
    await store.store(ALICE, env("m1"))
    waits = []
    due = clock.now_ms() + 10
    for _ in range(8):
        clock.advance(due - clock.now_ms())
        [msg] = (await store.claim_due(ALICE)).resend
        waits.append(msg.next_due - clock.now_ms())
        due = msg.next_due
    assert waits == [20, 40, 80, 160, 160, 160, 160, 160]


async def test_claim_after_settle_finds_nothing(store: MemoryAcks, clock: ManualClock) -> None:
    await store.store(ALICE, env("m1"))
    await store.settle(ALICE, MsgId("m1"))
    clock.advance(100)
    # The index may still name the user; a claim finds nothing and clears it.
    claimed = await store.claim_due(ALICE)
    assert (claimed.resend, claimed.dead) == ([], [])
    assert (await store.due()).users == []
    assert (await store.claim_due(UserId("nobody"))).resend == []


async def test_claim_of_expired_dead_letters_it(store: MemoryAcks, clock: ManualClock) -> None:
    await store.store(ALICE, env("m1", expires_at=clock.now_ms() + 150))
    clock.advance(150)
    [dead] = (await store.claim_due(ALICE)).dead
    assert dead.reason is DeadReason.EXPIRED
    assert await store.sweep() == []  # not dead-lettered twice


async def test_due_lists_users_by_when_and_limit(store: MemoryAcks, clock: ManualClock) -> None:
    await store.store(ALICE, env("a1"))
    clock.advance(10)
    await store.store(BOB, env("b1"))
    clock.advance(200)
    scan = await store.due()
    assert scan.users == [(ALICE, scan.now_ms - 110), (BOB, scan.now_ms - 100)]
    assert (await store.due(limit=1)).users == [(ALICE, scan.now_ms - 110)]


async def test_defer_refunds_the_attempt_and_backs_off(clock: ManualClock) -> None:
    policy = AckPolicy(retry_interval_ms=1000, max_attempts=2, reroute_first_ms=50,
                       reroute_max_ms=120)
    store = MemoryAcks(policy, clock)
    await store.store(ALICE, env("m1"))
    waits = []
    for _ in range(4):  # a bus outage: every delivery reaches nobody
        await store.defer(ALICE, [MsgId("m1")])
        scan = await store.due()
        assert scan.next_in_ms is not None
        waits.append(scan.next_in_ms)
        clock.advance(scan.next_in_ms)
        [msg] = (await store.claim_due(ALICE)).resend
        assert msg.attempts == 1  # never spent: no client saw it
    assert waits == [50, 100, 120, 120]
    await store.defer(ALICE, [MsgId("unknown")])  # ignored


async def test_forget_drops_only_an_unchanged_entry(store: MemoryAcks,
                                                    clock: ManualClock) -> None:
    await store.store(ALICE, env("a1"))
    clock.advance(100)
    [(user, since)] = (await store.due()).users
    assert user == ALICE
    assert not await store.forget(ALICE, since - 1)
    assert await store.forget(ALICE, since)
    assert (await store.due()).users == []
    # Back in the index when a pod that holds the user schedules it.
    await store.schedule(ALICE)
    assert (await store.due()).users == [(ALICE, since)]


async def test_pending_with_hold_delays_the_next_resend(store: MemoryAcks,
                                                        clock: ManualClock) -> None:
    await store.store(ALICE, env("m1"))
    clock.advance(100)
    [msg] = await store.pending(ALICE, hold_ms=100)
    assert msg.next_due == clock.now_ms() + 100
    assert (await store.claim_due(ALICE)).resend == []


async def test_store_reports_overflow_evictions(store: MemoryAcks) -> None:
    for i in range(5):
        assert (await store.store(ALICE, env(f"m{i}"))).evicted == []
    result = await store.store(ALICE, env("m5"))
    assert [(d.message.id, d.reason) for d in result.evicted] == [("m0", DeadReason.OVERFLOW)]


# -- sweep: expiry and ttl ----------------------------------------------------


async def test_sweep_dead_letters_expired(store: MemoryAcks, clock: ManualClock) -> None:
    await store.store(ALICE, env("m1", expires_at=clock.now_ms() + 500))
    await store.store(ALICE, env("m2"))
    clock.advance(499)
    assert await store.sweep() == []
    clock.advance(1)
    dead = await store.sweep()
    assert [(d.message.id, d.reason) for d in dead] == [("m1", DeadReason.EXPIRED)]
    assert [m.id for m in await store.pending(ALICE)] == ["m2"]
    assert await store.status(ALICE, MsgId("m1")) is MsgState.DEAD


async def test_expires_at_later_than_ttl_is_bounded_by_ttl(
    store: MemoryAcks, clock: ManualClock
) -> None:
    await store.store(ALICE, env("m1", expires_at=clock.now_ms() + 10 * 60_000))
    clock.advance(60_000)
    dead = await store.sweep()
    assert [(d.message.id, d.reason) for d in dead] == [("m1", DeadReason.TTL)]


async def test_sweep_dead_letters_after_ttl(store: MemoryAcks, clock: ManualClock) -> None:
    await store.store(ALICE, env("m1"))
    clock.advance(59_999)
    assert await store.sweep() == []
    clock.advance(1)
    dead = await store.sweep()
    assert [(d.message.id, d.reason) for d in dead] == [("m1", DeadReason.TTL)]
    assert (await store.stats()).pending == 0


async def test_sweep_ignores_settled(store: MemoryAcks, clock: ManualClock) -> None:
    await store.store(ALICE, env("m1", expires_at=clock.now_ms() + 10))
    await store.settle(ALICE, MsgId("m1"))
    clock.advance(10)
    assert await store.sweep() == []
    assert await store.dead_letters() == []


async def test_sweep_limit(store: MemoryAcks, clock: ManualClock) -> None:
    for user in ("u1", "u2", "u3"):
        await store.store(UserId(user), env("m", expires_at=clock.now_ms() + 1))
    clock.advance(1)
    assert len(await store.sweep(limit=2)) == 2
    assert len(await store.sweep(limit=2)) == 1
    assert (await store.stats()).dead == 3


# -- overflow -----------------------------------------------------------------


async def test_overflow_dead_letters_the_oldest(store: MemoryAcks) -> None:
    for i in range(5):
        await store.store(ALICE, env(f"m{i}"))
    result = await store.store(ALICE, env("m5"))
    assert not result.duplicate
    assert result.seq == 6
    assert [m.id for m in await store.pending(ALICE)] == ["m1", "m2", "m3", "m4", "m5"]
    dead = await store.dead_letters(ALICE)
    assert [(d.message.id, d.reason) for d in dead] == [("m0", DeadReason.OVERFLOW)]
    assert await store.status(ALICE, MsgId("m0")) is MsgState.DEAD
    assert (await store.stats()).pending == 5 and (await store.stats()).dead == 1


async def test_overflow_is_per_user(store: MemoryAcks) -> None:
    for i in range(5):
        await store.store(ALICE, env(f"a{i}"))
        await store.store(BOB, env(f"b{i}"))
    assert await store.dead_letters() == []
    assert (await store.stats()).pending == 10


# -- dead letters -------------------------------------------------------------


async def _kill(store: MemoryAcks, clock: ManualClock, user: UserId, msg_id: str) -> None:
    await store.store(user, env(msg_id, expires_at=clock.now_ms() + 1))
    clock.advance(1)
    assert len(await store.sweep()) == 1


async def test_dead_letters_newest_first_and_by_user(
    store: MemoryAcks, clock: ManualClock
) -> None:
    await _kill(store, clock, ALICE, "a1")
    await _kill(store, clock, BOB, "b1")
    await _kill(store, clock, ALICE, "a2")
    assert [d.message.id for d in await store.dead_letters()] == ["a2", "b1", "a1"]
    assert [d.message.id for d in await store.dead_letters(ALICE)] == ["a2", "a1"]
    assert [d.message.id for d in await store.dead_letters(BOB)] == ["b1"]
    assert [d.message.id for d in await store.dead_letters(limit=1)] == ["a2"]
    assert await store.dead_letters(UserId("nobody")) == []
    doc = orjson.loads(orjson.dumps((await store.dead_letters(BOB))[0].to_json()))
    assert (doc["id"], doc["user"], doc["reason"]) == ("b1", "bob", "expired")


async def test_an_id_that_dies_again_is_the_newest_dead_letter(
    store: MemoryAcks, clock: ManualClock
) -> None:
    await _kill(store, clock, ALICE, "m1")
    await _kill(store, clock, BOB, "b1")
    clock.advance(POLICY.ttl_ms)  # alice's idempotency record of m1 is over
    await _kill(store, clock, ALICE, "m1")
    dead = await store.dead_letters()
    assert [(d.message.id, d.message.seq) for d in dead] == [("m1", 2), ("b1", 1)]
    # and the dead-letter store still ages out b1 on time
    clock.advance(POLICY.dead_ttl_ms - POLICY.ttl_ms - 1)
    await store.sweep()
    assert [d.message.id for d in await store.dead_letters()] == ["m1"]


async def test_revive_is_a_new_first_attempt(store: MemoryAcks, clock: ManualClock) -> None:
    await _kill(store, clock, ALICE, "m1")
    clock.advance(1000)
    revived = await store.revive(MsgId("m1"))
    assert [(m.id, m.user, m.seq, m.attempts) for m in revived] == [("m1", ALICE, 2, 1)]
    msg = revived[0]
    assert msg.stored_at == clock.now_ms()
    assert msg.expires_at == clock.now_ms() + POLICY.ttl_ms  # the old expiresAt is gone
    assert msg.next_due == clock.now_ms() + POLICY.retry_interval_ms
    assert await store.dead_letters() == []
    assert await store.revive(MsgId("m1")) == []
    assert [m.id for m in await store.pending(ALICE)] == ["m1"]
    assert (await store.stats()).pending == 1


async def test_revive_by_user(store: MemoryAcks, clock: ManualClock) -> None:
    await _kill(store, clock, ALICE, "m1")
    await _kill(store, clock, BOB, "m1")
    revived = await store.revive(MsgId("m1"), BOB)
    assert [m.user for m in revived] == [BOB]
    assert [d.message.user for d in await store.dead_letters()] == [ALICE]
    assert (await store.store(ALICE, env("m1"))).duplicate  # alice's record is kept


async def test_max_dead_bounds_the_dead_letter_store(clock: ManualClock) -> None:
    store = MemoryAcks(AckPolicy(max_dead=2), clock)
    for i in range(3):
        await _kill(store, clock, ALICE, f"m{i}")
    assert [d.message.id for d in await store.dead_letters()] == ["m2", "m1"]
    assert (await store.stats()).dead == 2


async def test_dead_letters_expire_after_dead_ttl(
    store: MemoryAcks, clock: ManualClock
) -> None:
    await _kill(store, clock, ALICE, "m1")
    clock.advance(POLICY.dead_ttl_ms - 1)
    await store.sweep()
    assert len(await store.dead_letters()) == 1
    clock.advance(1)
    await store.sweep()
    assert await store.dead_letters() == []


async def test_stats(store: MemoryAcks, clock: ManualClock) -> None:
    stats = await store.stats()
    assert (stats.pending, stats.dead) == (0, 0)
    await store.store(ALICE, env("m1"))
    await store.store(ALICE, env("m2"))
    await store.store(BOB, env("m1"))
    await store.store(BOB, env("m1"))  # duplicate: not counted
    assert (await store.stats()).pending == 3
    await store.settle(ALICE, MsgId("m1"))
    await _kill(store, clock, BOB, "m9")
    stats = await store.stats()
    assert (stats.pending, stats.dead) == (2, 1)
