"""Contract of :class:`wsnode.acks.AckStore`, run against every backend.

Only the Protocol's public methods are used. Time-dependent checks (resend
schedule, expiry, ttl) use short real durations and bounded polls, because a
shared backend uses its own clock; exact arithmetic is in tests/unit/test_acks.py.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from tests.contract.factories import AcksFactory
from tests.contract.poll import eventually
from wsnode.acks import AckPolicy, AckStore, Claim, ClaimKind, DeadLetter, DeadReason, MsgState
from wsnode.ids import MsgId, UserId
from wsnode.protocol import Envelope

ALICE = UserId("alice")
BOB = UserId("bob")
SLOW = AckPolicy(retry_interval_ms=60_000, max_attempts=5, ttl_ms=3_600_000,
                 max_pending_per_user=3)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def env(msg_id: str, **kw: object) -> Envelope:
    return Envelope(type="note", payload={"text": msg_id}, id=msg_id, requires_ack=True, **kw)


@pytest.fixture
async def acks(make_acks: AcksFactory) -> AckStore:
    return await make_acks(SLOW)


async def ids(store: AckStore, user: UserId, since_ms: int | None = None) -> list[str]:
    return [m.id for m in await store.pending(user, since_ms)]


# -- store, seq, idempotency --------------------------------------------------


async def test_seq_per_user_from_one(acks: AckStore) -> None:
    assert [(await acks.store(ALICE, env(f"a{i}"))).seq for i in range(3)] == [1, 2, 3]
    assert (await acks.store(BOB, env("b0"))).seq == 1


async def test_store_returns_the_message(acks: AckStore) -> None:
    before = now_ms()
    result = await acks.store(ALICE, env("m1"))
    assert not result.duplicate
    assert result.state is MsgState.PENDING
    msg = result.message
    assert msg is not None
    assert (msg.user, msg.id, msg.seq, msg.type, msg.attempts) == (ALICE, "m1", 1, "note", 1)
    assert abs(msg.stored_at - before) < 60_000
    assert msg.next_due > msg.stored_at
    assert msg.expires_at > msg.next_due


async def test_frame_is_envelope_plus_seq(acks: AckStore) -> None:
    original = Envelope(type="note", payload={"s": 'quote " brace } ユ'}, id="m1",
                        requires_ack=True, expires_at=now_ms() + 3_600_000)
    await acks.store(ALICE, env("m0"))
    msg = (await acks.store(ALICE, original)).message
    assert msg is not None
    assert orjson.loads(msg.frame()) == {**original.to_wire(), "seq": 2}
    [pending] = [m for m in await acks.pending(ALICE) if m.id == "m1"]
    assert pending.frame() == msg.frame()


async def test_duplicate_while_pending(acks: AckStore) -> None:
    first = await acks.store(ALICE, env("m1"))
    again = await acks.store(ALICE, env("m1"))
    assert (again.duplicate, again.seq, again.state) == (True, first.seq, MsgState.PENDING)
    assert await ids(acks, ALICE) == ["m1"]
    assert (await acks.stats()).pending == 1
    assert (await acks.store(ALICE, env("m2"))).seq == 2


async def test_duplicate_after_ack(acks: AckStore) -> None:
    first = await acks.store(ALICE, env("m1"))
    assert await acks.settle(ALICE, MsgId("m1")) is MsgState.PENDING
    again = await acks.store(ALICE, env("m1"))
    assert (again.duplicate, again.seq, again.state) == (True, first.seq, MsgState.ACKED)
    assert await ids(acks, ALICE) == []


async def test_duplicate_after_dead(acks: AckStore) -> None:
    first = await acks.store(ALICE, env("m1"))
    for i in range(3):  # overflow kills m1
        await acks.store(ALICE, env(f"x{i}"))
    again = await acks.store(ALICE, env("m1"))
    assert (again.duplicate, again.seq, again.state) == (True, first.seq, MsgState.DEAD)
    assert await ids(acks, ALICE) == ["x0", "x1", "x2"]


async def test_ids_are_per_user(acks: AckStore) -> None:
    await acks.store(ALICE, env("m1"))
    assert not (await acks.store(BOB, env("m1"))).duplicate
    await acks.settle(BOB, MsgId("m1"))
    assert await acks.status(ALICE, MsgId("m1")) is MsgState.PENDING


async def test_odd_user_and_message_ids(acks: AckStore) -> None:
    user = UserId("ユーザー a b:c{d}")
    msg_id = "id:{x} ü/1"
    assert (await acks.store(user, env(msg_id))).seq == 1
    assert await ids(acks, user) == [msg_id]
    assert await acks.settle(user, MsgId(msg_id)) is MsgState.PENDING
    assert await acks.status(user, MsgId(msg_id)) is MsgState.ACKED


# -- pending ------------------------------------------------------------------


async def test_pending_in_seq_order(acks: AckStore) -> None:
    for i in range(3):
        await acks.store(ALICE, env(f"m{i}"))
    await acks.settle(ALICE, MsgId("m1"))
    assert [m.seq for m in await acks.pending(ALICE)] == [1, 3]
    assert await acks.pending(UserId("nobody")) == []


async def test_pending_since(acks: AckStore) -> None:
    await acks.store(ALICE, env("old"))
    [old] = await acks.pending(ALICE)
    stored = ["old"]

    async def store_next() -> int:
        msg_id = f"new{len(stored)}"
        stored.append(msg_id)
        result = await acks.store(ALICE, env(msg_id))
        assert result.message is not None
        return result.message.stored_at

    # store until the store's own clock has moved past "old"
    await eventually(store_next, lambda stored_at: stored_at > old.stored_at, interval=0.002)
    assert await ids(acks, ALICE, since_ms=old.stored_at + 1) == stored[-1:]
    assert await ids(acks, ALICE, since_ms=old.stored_at) == stored
    assert await ids(acks, ALICE, since_ms=0) == stored


# -- settle / status ----------------------------------------------------------


async def test_settle_and_status(acks: AckStore) -> None:
    await acks.store(ALICE, env("m1"))
    assert await acks.status(ALICE, MsgId("m1")) is MsgState.PENDING
    assert await acks.settle(ALICE, MsgId("m1")) is MsgState.PENDING
    assert await acks.status(ALICE, MsgId("m1")) is MsgState.ACKED
    assert await acks.settle(ALICE, MsgId("m1")) is MsgState.ACKED
    assert await acks.settle(ALICE, MsgId("nope")) is None
    assert await acks.status(ALICE, MsgId("nope")) is None
    assert await acks.settle(UserId("nobody"), MsgId("m1")) is None
    assert (await acks.stats()).pending == 0


# -- claim --------------------------------------------------------------------


async def test_claim_waits_before_due(acks: AckStore) -> None:
    stored = (await acks.store(ALICE, env("m1"))).message
    assert stored is not None
    claim = await acks.claim(ALICE, MsgId("m1"))
    assert claim.kind is ClaimKind.WAIT
    assert claim.message is not None
    assert claim.message.next_due == stored.next_due
    assert claim.message.attempts == 1


async def test_claim_gone_when_settled_or_unknown(acks: AckStore) -> None:
    await acks.store(ALICE, env("m1"))
    await acks.settle(ALICE, MsgId("m1"))
    assert (await acks.claim(ALICE, MsgId("m1"))).kind is ClaimKind.GONE
    assert (await acks.claim(ALICE, MsgId("never"))).kind is ClaimKind.GONE
    assert (await acks.claim(UserId("nobody"), MsgId("m1"))).kind is ClaimKind.GONE


async def test_resend_schedule_then_dead(make_acks: AcksFactory) -> None:
    acks = await make_acks(AckPolicy(retry_interval_ms=40, max_attempts=3))
    stored = (await acks.store(ALICE, env("m1"))).message
    assert stored is not None
    m1 = MsgId("m1")

    async def claim() -> Claim:
        return await acks.claim(ALICE, m1)

    first = await eventually(claim, lambda c: c.kind is not ClaimKind.WAIT)
    assert first.kind is ClaimKind.RESEND
    assert first.message is not None
    assert (first.message.attempts, first.message.seq, first.message.id) == (2, 1, "m1")
    assert first.message.next_due - stored.next_due >= 80  # the wait doubled
    assert first.message.frame() == stored.frame()  # the same frame: clients dedup

    second = await eventually(claim, lambda c: c.kind is not ClaimKind.WAIT)
    assert second.kind is ClaimKind.RESEND
    assert second.message is not None
    assert second.message.attempts == 3

    dead = await eventually(claim, lambda c: c.kind is not ClaimKind.WAIT)
    assert dead.kind is ClaimKind.DEAD
    assert dead.dead is not None
    assert dead.dead.reason is DeadReason.MAX_ATTEMPTS
    assert dead.dead.message.id == "m1"
    assert await acks.pending(ALICE) == []
    assert await acks.status(ALICE, m1) is MsgState.DEAD
    assert (await acks.claim(ALICE, m1)).kind is ClaimKind.GONE
    assert [d.reason for d in await acks.dead_letters(ALICE)] == [DeadReason.MAX_ATTEMPTS]


async def test_one_claimant_per_attempt(make_acks: AcksFactory) -> None:
    acks = await make_acks(AckPolicy(retry_interval_ms=40, max_attempts=5))
    await acks.store(ALICE, env("m1"))
    await eventually(lambda: acks.claim(ALICE, MsgId("m1")),
                     lambda c: c.kind is ClaimKind.RESEND)
    # the next attempt is due in 80 ms: racing claimants get one RESEND between them
    claims = await eventually(
        lambda: asyncio.gather(*(acks.claim(ALICE, MsgId("m1")) for _ in range(10))),
        lambda cs: any(c.kind is not ClaimKind.WAIT for c in cs))
    assert [c.kind for c in claims].count(ClaimKind.RESEND) == 1


# -- expiry, ttl, overflow ----------------------------------------------------


async def _swept(acks: AckStore) -> list[DeadLetter]:
    found: list[DeadLetter] = []

    async def sweep() -> list[DeadLetter]:
        found.extend(await acks.sweep())
        return found

    return await eventually(sweep, lambda rows: len(rows) > 0)


async def test_expires_at_dead_letters_on_sweep(acks: AckStore) -> None:
    await acks.store(ALICE, env("short", expires_at=now_ms() + 150))
    await acks.store(ALICE, env("long"))
    dead = await _swept(acks)
    assert [(d.message.id, d.reason) for d in dead] == [("short", DeadReason.EXPIRED)]
    assert await ids(acks, ALICE) == ["long"]
    assert await acks.status(ALICE, MsgId("short")) is MsgState.DEAD
    assert await acks.sweep() == []


async def test_expired_is_not_pending_even_before_sweep(acks: AckStore) -> None:
    await acks.store(ALICE, env("short", expires_at=now_ms() + 100))
    await eventually(lambda: acks.pending(ALICE), lambda rows: rows == [])
    dead = await _swept(acks)
    assert [d.message.id for d in dead] == ["short"]


async def test_ttl_dead_letters_on_sweep(make_acks: AcksFactory) -> None:
    acks = await make_acks(AckPolicy(retry_interval_ms=60_000, ttl_ms=150))
    await acks.store(ALICE, env("m1"))
    dead = await _swept(acks)
    assert [(d.message.id, d.reason) for d in dead] == [("m1", DeadReason.TTL)]
    assert (await acks.stats()).pending == 0


async def test_overflow_dead_letters_the_oldest(acks: AckStore) -> None:
    for i in range(4):
        await acks.store(ALICE, env(f"m{i}"))
    assert await ids(acks, ALICE) == ["m1", "m2", "m3"]
    dead = await acks.dead_letters(ALICE)
    assert [(d.message.id, d.reason) for d in dead] == [("m0", DeadReason.OVERFLOW)]
    assert await acks.status(ALICE, MsgId("m0")) is MsgState.DEAD
    stats = await acks.stats()
    assert (stats.pending, stats.dead) == (3, 1)


# -- dead letters -------------------------------------------------------------


async def _overflow(acks: AckStore, user: UserId, victim: str) -> None:
    """Dead-letter ``victim`` for ``user`` through overflow (no waiting)."""
    await acks.store(user, env(victim))
    for i in range(3):
        await acks.store(user, env(f"{victim}-filler{i}"))
    for i in range(3):
        await acks.settle(user, MsgId(f"{victim}-filler{i}"))


async def test_dead_letters_newest_first_by_user(acks: AckStore) -> None:
    await _overflow(acks, ALICE, "a1")
    await _overflow(acks, BOB, "b1")
    await _overflow(acks, ALICE, "a2")
    assert [d.message.id for d in await acks.dead_letters()] == ["a2", "b1", "a1"]
    assert [d.message.id for d in await acks.dead_letters(ALICE)] == ["a2", "a1"]
    assert [d.message.id for d in await acks.dead_letters(BOB)] == ["b1"]
    assert [d.message.id for d in await acks.dead_letters(limit=2)] == ["a2", "b1"]
    assert await acks.dead_letters(UserId("nobody")) == []
    row = (await acks.dead_letters(BOB))[0]
    assert (row.message.user, row.reason) == (BOB, DeadReason.OVERFLOW)
    doc = orjson.loads(orjson.dumps(row.to_json()))
    assert (doc["id"], doc["user"], doc["reason"]) == ("b1", "bob", "overflow")


async def test_revive_makes_a_dead_letter_pending_as_a_new_message(acks: AckStore) -> None:
    await _overflow(acks, ALICE, "m2")
    revived = await acks.revive(MsgId("m2"))
    assert [(m.id, m.user, m.seq, m.attempts) for m in revived] == [("m2", ALICE, 5, 1)]
    assert await acks.dead_letters() == []
    assert await acks.revive(MsgId("m2")) == []
    assert await acks.status(ALICE, MsgId("m2")) == MsgState.PENDING
    assert await ids(acks, ALICE) == ["m2"]
    assert (await acks.store(ALICE, env("m2"))).duplicate  # pending again: idempotent
    frame = orjson.loads(revived[0].frame())
    assert frame["id"] == "m2" and frame["seq"] == revived[0].seq
    assert "expiresAt" not in frame


async def test_revive_drops_an_old_expiry(acks: AckStore) -> None:
    await acks.store(BOB, env("late", expires_at=9_999_999_999_999))
    for i in range(3):
        await acks.store(BOB, env(f"f{i}"))
    revived = await acks.revive(MsgId("late"))
    assert [m.id for m in revived] == ["late"]
    assert "expiresAt" not in orjson.loads(revived[0].frame())


async def test_revive_of_one_user(acks: AckStore) -> None:
    await _overflow(acks, ALICE, "m1")
    await _overflow(acks, BOB, "m1")
    revived = await acks.revive(MsgId("m1"), BOB)
    assert [m.user for m in revived] == [BOB]
    assert [d.message.user for d in await acks.dead_letters()] == [ALICE]
    assert await acks.status(ALICE, MsgId("m1")) == MsgState.DEAD
    assert await acks.status(BOB, MsgId("m1")) == MsgState.PENDING


async def test_revive_of_every_user(acks: AckStore) -> None:
    await _overflow(acks, ALICE, "m1")
    await _overflow(acks, BOB, "m1")
    revived = await acks.revive(MsgId("m1"))
    assert sorted(m.user for m in revived) == [ALICE, BOB]
    assert await acks.dead_letters() == []


async def test_stats(acks: AckStore) -> None:
    assert (await acks.stats()).pending == 0
    assert (await acks.stats()).dead == 0
    await acks.store(ALICE, env("m1"))
    await acks.store(ALICE, env("m2"))
    await acks.store(BOB, env("m1"))
    await acks.store(BOB, env("m1"))
    assert (await acks.stats()).pending == 3
    await acks.settle(ALICE, MsgId("m1"))
    assert (await acks.stats()).pending == 2
