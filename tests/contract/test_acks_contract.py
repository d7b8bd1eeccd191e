"""Contract of :class:`wsnode.acks.AckBackend`, run against every backend.

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
from wsnode.acks import AckBackend, AckPolicy, Claimed, DeadLetter, DeadReason, MsgState
from wsnode.errors import QuotaExceeded
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
async def acks(make_acks: AcksFactory) -> AckBackend:
    return await make_acks(SLOW)


async def ids(store: AckBackend, user: UserId, since_ms: int | None = None) -> list[str]:
    return [m.id for m in await store.pending(user, since_ms)]


# -- store, seq, idempotency --------------------------------------------------


async def test_seq_per_user_from_one(acks: AckBackend) -> None:
    assert [(await acks.store(ALICE, env(f"a{i}"))).seq for i in range(3)] == [1, 2, 3]
    assert (await acks.store(BOB, env("b0"))).seq == 1


async def test_store_returns_the_message(acks: AckBackend) -> None:
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


async def test_frame_is_envelope_plus_seq(acks: AckBackend) -> None:
    original = Envelope(type="note", payload={"s": 'quote " brace } ユ'}, id="m1",
                        requires_ack=True, expires_at=now_ms() + 3_600_000)
    await acks.store(ALICE, env("m0"))
    msg = (await acks.store(ALICE, original)).message
    assert msg is not None
    assert orjson.loads(msg.frame()) == {**original.to_wire(), "seq": 2}
    [pending] = [m for m in await acks.pending(ALICE) if m.id == "m1"]
    assert pending.frame() == msg.frame()


async def test_duplicate_while_pending(acks: AckBackend) -> None:
    first = await acks.store(ALICE, env("m1"))
    again = await acks.store(ALICE, env("m1"))
    assert (again.duplicate, again.seq, again.state) == (True, first.seq, MsgState.PENDING)
    assert await ids(acks, ALICE) == ["m1"]
    assert (await acks.stats()).pending == 1
    assert (await acks.store(ALICE, env("m2"))).seq == 2


async def test_duplicate_after_ack(acks: AckBackend) -> None:
    first = await acks.store(ALICE, env("m1"))
    assert await acks.settle(ALICE, MsgId("m1")) is MsgState.PENDING
    again = await acks.store(ALICE, env("m1"))
    assert (again.duplicate, again.seq, again.state) == (True, first.seq, MsgState.ACKED)
    assert await ids(acks, ALICE) == []


async def test_duplicate_after_dead(acks: AckBackend) -> None:
    first = await acks.store(ALICE, env("m1"))
    for i in range(3):  # overflow kills m1
        await acks.store(ALICE, env(f"x{i}"))
    again = await acks.store(ALICE, env("m1"))
    assert (again.duplicate, again.seq, again.state) == (True, first.seq, MsgState.DEAD)
    assert await ids(acks, ALICE) == ["x0", "x1", "x2"]


async def test_ids_are_per_user(acks: AckBackend) -> None:
    await acks.store(ALICE, env("m1"))
    assert not (await acks.store(BOB, env("m1"))).duplicate
    await acks.settle(BOB, MsgId("m1"))
    assert await acks.status(ALICE, MsgId("m1")) is MsgState.PENDING


async def test_odd_user_and_message_ids(acks: AckBackend) -> None:
    user = UserId("ユーザー a b:c{d}")
    msg_id = "id:{x} ü/1"
    assert (await acks.store(user, env(msg_id))).seq == 1
    assert await ids(acks, user) == [msg_id]
    assert await acks.settle(user, MsgId(msg_id)) is MsgState.PENDING
    assert await acks.status(user, MsgId(msg_id)) is MsgState.ACKED


# -- pending ------------------------------------------------------------------


async def test_pending_in_seq_order(acks: AckBackend) -> None:
    for i in range(3):
        await acks.store(ALICE, env(f"m{i}"))
    await acks.settle(ALICE, MsgId("m1"))
    assert [m.seq for m in await acks.pending(ALICE)] == [1, 3]
    assert await acks.pending(UserId("nobody")) == []


async def test_pending_since(acks: AckBackend) -> None:
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


async def test_settle_and_status(acks: AckBackend) -> None:
    await acks.store(ALICE, env("m1"))
    assert await acks.status(ALICE, MsgId("m1")) is MsgState.PENDING
    assert await acks.settle(ALICE, MsgId("m1")) is MsgState.PENDING
    assert await acks.status(ALICE, MsgId("m1")) is MsgState.ACKED
    assert await acks.settle(ALICE, MsgId("m1")) is MsgState.ACKED
    assert await acks.settle(ALICE, MsgId("nope")) is None
    assert await acks.status(ALICE, MsgId("nope")) is None
    assert await acks.settle(UserId("nobody"), MsgId("m1")) is None
    assert (await acks.stats()).pending == 0


# -- the resend schedule -------------------------------------------------------


async def test_nothing_is_due_before_the_first_interval(acks: AckBackend) -> None:
    await acks.store(ALICE, env("m1"))
    scan = await acks.due()
    assert scan.users == []
    assert scan.next_in_ms is not None and 50_000 < scan.next_in_ms <= 60_000
    claimed = await acks.claim_due(ALICE)
    assert (claimed.resend, claimed.dead) == ([], [])
    assert (await acks.pending(ALICE))[0].attempts == 1


async def test_resend_schedule_then_dead(make_acks: AcksFactory) -> None:
    acks = await make_acks(AckPolicy(retry_interval_ms=40, max_attempts=3))
    stored = (await acks.store(ALICE, env("m1"))).message
    assert stored is not None
    m1 = MsgId("m1")

    async def claim() -> Claimed:
        return await acks.claim_due(ALICE)

    def got_any(c: Claimed) -> bool:
        return bool(c.resend or c.dead)

    scan = await eventually(acks.due, lambda s: bool(s.users))
    assert [u for u, _ in scan.users] == [ALICE]
    [first] = (await eventually(claim, got_any)).resend
    assert (first.attempts, first.seq, first.id) == (2, 1, "m1")
    assert first.next_due - stored.next_due >= 80  # the wait doubled
    assert first.frame() == stored.frame()  # the same frame: clients dedup

    [second] = (await eventually(claim, got_any)).resend
    assert second.attempts == 3

    last = await eventually(claim, got_any)
    assert last.resend == []
    [dead] = last.dead
    assert (dead.reason, dead.message.id) == (DeadReason.MAX_ATTEMPTS, "m1")
    assert await acks.pending(ALICE) == []
    assert await acks.status(ALICE, m1) is MsgState.DEAD
    assert [d.reason for d in await acks.dead_letters(ALICE)] == [DeadReason.MAX_ATTEMPTS]
    scan = await acks.due()
    assert (scan.users, scan.next_in_ms) == ([], None)


async def test_one_claimant_per_attempt(make_acks: AcksFactory) -> None:
    acks = await make_acks(AckPolicy(retry_interval_ms=40, max_attempts=5))
    stored = [(await acks.store(ALICE, env(f"m{i}"))).message for i in range(3)]
    last_due = max(m.next_due for m in stored if m is not None)
    # Due by the store's own clock (the due index may say so a moment early, and a
    # claim before then would hand out nothing).
    await eventually(acks.due, lambda s: bool(s.users) and s.now_ms >= last_due)
    # Ten pods holding the user claim at once: each message goes to one of them.
    claims = await asyncio.gather(*(acks.claim_due(ALICE) for _ in range(10)))
    resent = sorted(m.id for c in claims for m in c.resend)
    assert resent == ["m0", "m1", "m2"]


async def test_a_settled_message_is_not_resent(make_acks: AcksFactory) -> None:
    acks = await make_acks(AckPolicy(retry_interval_ms=40, max_attempts=5))
    await acks.store(ALICE, env("m1"))
    await acks.settle(ALICE, MsgId("m1"))
    await eventually(acks.due, lambda s: bool(s.users) or s.next_in_ms is None)
    claimed = await acks.claim_due(ALICE)
    assert (claimed.resend, claimed.dead) == ([], [])
    assert (await acks.due()).users == []  # the claim cleared the stale entry


async def test_forget_then_schedule(make_acks: AcksFactory) -> None:
    acks = await make_acks(AckPolicy(retry_interval_ms=40, max_attempts=5))
    await acks.store(ALICE, env("m1"))
    [(user, since)] = (await eventually(acks.due, lambda s: bool(s.users))).users
    assert user == ALICE
    assert not await acks.forget(ALICE, since - 1)  # changed meanwhile: kept
    assert await acks.forget(ALICE, since)
    assert (await acks.due()).users == []
    assert [m.id for m in await acks.pending(ALICE)] == ["m1"]  # the message stays
    await acks.schedule(ALICE)
    assert [u for u, _ in (await acks.due()).users] == [ALICE]


async def test_defer_gives_the_attempt_back(make_acks: AcksFactory) -> None:
    acks = await make_acks(AckPolicy(retry_interval_ms=60_000, max_attempts=5,
                                     reroute_first_ms=40, reroute_max_ms=40))
    await acks.store(ALICE, env("m1"))
    await acks.defer(ALICE, [MsgId("m1")])
    [msg] = (await _claim_soon(acks)).resend
    assert msg.attempts == 1  # the first delivery reached nobody: not counted
    await acks.defer(ALICE, [MsgId("unknown")])


async def _claim_soon(acks: AckBackend) -> Claimed:
    return await eventually(lambda: acks.claim_due(ALICE), lambda c: bool(c.resend))


async def test_a_replay_holds_off_the_next_resend(make_acks: AcksFactory) -> None:
    acks = await make_acks(AckPolicy(retry_interval_ms=40, max_attempts=5))
    await acks.store(ALICE, env("m1"))
    await eventually(acks.due, lambda s: bool(s.users))
    [msg] = await acks.pending(ALICE, hold_ms=60_000)
    assert msg.next_due - now_ms() > 50_000
    assert (await acks.claim_due(ALICE)).resend == []


async def test_store_reports_what_the_cap_evicted(acks: AckBackend) -> None:
    for i in range(3):
        assert (await acks.store(ALICE, env(f"m{i}"))).evicted == []
    result = await acks.store(ALICE, env("m3"))
    assert [(d.message.id, d.reason) for d in result.evicted] == [("m0", DeadReason.OVERFLOW)]
    again = await acks.store(ALICE, env("m3"))  # a duplicate evicts nothing more
    assert again.duplicate and again.evicted == []


# -- expiry, ttl, overflow ----------------------------------------------------


async def _swept(acks: AckBackend) -> list[DeadLetter]:
    found: list[DeadLetter] = []

    async def sweep() -> list[DeadLetter]:
        found.extend(await acks.sweep())
        return found

    return await eventually(sweep, lambda rows: len(rows) > 0)


async def test_expires_at_dead_letters_on_sweep(acks: AckBackend) -> None:
    await acks.store(ALICE, env("short", expires_at=now_ms() + 150))
    await acks.store(ALICE, env("long"))
    dead = await _swept(acks)
    assert [(d.message.id, d.reason) for d in dead] == [("short", DeadReason.EXPIRED)]
    assert await ids(acks, ALICE) == ["long"]
    assert await acks.status(ALICE, MsgId("short")) is MsgState.DEAD
    assert await acks.sweep() == []


async def test_expired_is_not_pending_even_before_sweep(acks: AckBackend) -> None:
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


async def test_overflow_dead_letters_the_oldest(acks: AckBackend) -> None:
    for i in range(4):
        await acks.store(ALICE, env(f"m{i}"))
    assert await ids(acks, ALICE) == ["m1", "m2", "m3"]
    dead = await acks.dead_letters(ALICE)
    assert [(d.message.id, d.reason) for d in dead] == [("m0", DeadReason.OVERFLOW)]
    assert await acks.status(ALICE, MsgId("m0")) is MsgState.DEAD
    stats = await acks.stats()
    assert (stats.pending, stats.dead) == (3, 1)


# -- dead letters -------------------------------------------------------------


async def _overflow(acks: AckBackend, user: UserId, victim: str) -> None:
    """Dead-letter ``victim`` for ``user`` through overflow (no waiting)."""
    await acks.store(user, env(victim))
    for i in range(3):
        await acks.store(user, env(f"{victim}-filler{i}"))
    for i in range(3):
        await acks.settle(user, MsgId(f"{victim}-filler{i}"))


async def test_dead_letters_newest_first_by_user(acks: AckBackend) -> None:
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


async def test_revive_makes_a_dead_letter_pending_as_a_new_message(acks: AckBackend) -> None:
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


async def test_revive_drops_an_old_expiry(acks: AckBackend) -> None:
    await acks.store(BOB, env("late", expires_at=9_999_999_999_999))
    for i in range(3):
        await acks.store(BOB, env(f"f{i}"))
    revived = await acks.revive(MsgId("late"))
    assert [m.id for m in revived] == ["late"]
    assert "expiresAt" not in orjson.loads(revived[0].frame())


async def test_revive_of_one_user(acks: AckBackend) -> None:
    await _overflow(acks, ALICE, "m1")
    await _overflow(acks, BOB, "m1")
    revived = await acks.revive(MsgId("m1"), BOB)
    assert [m.user for m in revived] == [BOB]
    assert [d.message.user for d in await acks.dead_letters()] == [ALICE]
    assert await acks.status(ALICE, MsgId("m1")) == MsgState.DEAD
    assert await acks.status(BOB, MsgId("m1")) == MsgState.PENDING


async def test_revive_of_every_user(acks: AckBackend) -> None:
    await _overflow(acks, ALICE, "m1")
    await _overflow(acks, BOB, "m1")
    revived = await acks.revive(MsgId("m1"))
    assert sorted(m.user for m in revived) == [ALICE, BOB]
    assert await acks.dead_letters() == []


async def test_stats(acks: AckBackend) -> None:
    assert (await acks.stats()).pending == 0
    assert (await acks.stats()).dead == 0
    await acks.store(ALICE, env("m1"))
    await acks.store(ALICE, env("m2"))
    await acks.store(BOB, env("m1"))
    await acks.store(BOB, env("m1"))
    assert (await acks.stats()).pending == 3
    await acks.settle(ALICE, MsgId("m1"))
    assert (await acks.stats()).pending == 2


# -- messages relayed from clients ----------------------------------------------

RELAY = AckPolicy(retry_interval_ms=60_000, max_attempts=5, ttl_ms=3_600_000,
                  relayed_max_pending=2, relayed_budget=3)
MALLORY = UserId("mallory")


async def test_a_recipient_holds_a_bounded_number_of_relayed_messages(
        make_acks: AcksFactory) -> None:
    acks = await make_acks(RELAY)
    await acks.store(ALICE, env("r1"), relayed_from=MALLORY)
    await acks.store(ALICE, env("r2"), relayed_from=BOB)
    with pytest.raises(QuotaExceeded) as full:
        await acks.store(ALICE, env("r3"), relayed_from=BOB)
    assert full.value.limit == "recipient"
    assert await acks.status(ALICE, MsgId("r3")) is None  # nothing stored
    await acks.store(ALICE, env("s1"))  # the server's own messages are not limited so
    await acks.settle(ALICE, MsgId("r1"))
    await acks.store(ALICE, env("r3"), relayed_from=BOB)  # a place is free again
    assert [m.id for m in await acks.pending(ALICE)] == ["r2", "s1", "r3"]


async def test_a_client_has_a_bounded_number_of_undelivered_messages(
        make_acks: AcksFactory) -> None:
    acks = await make_acks(RELAY)
    for n in range(3):  # to users that will never come: a flood of fake recipients
        await acks.store(UserId(f"ghost{n}"), env("x"), relayed_from=MALLORY)
    with pytest.raises(QuotaExceeded) as spent:
        await acks.store(UserId("ghost3"), env("x"), relayed_from=MALLORY)
    assert spent.value.limit == "sender"
    assert await acks.status(UserId("ghost3"), MsgId("x")) is None
    await acks.store(UserId("ghost3"), env("x"), relayed_from=BOB)  # per client
    # A repeat of a message already counted takes no new place.
    assert (await acks.store(UserId("ghost0"), env("x"), relayed_from=MALLORY)).duplicate
    # Delivered (acked), a message gives its place back.
    await acks.settle(UserId("ghost0"), MsgId("x"))
    await acks.store(UserId("ghost4"), env("x"), relayed_from=MALLORY)


async def test_a_dead_relayed_message_keeps_its_place(make_acks: AcksFactory) -> None:
    acks = await make_acks(AckPolicy(retry_interval_ms=60_000, relayed_budget=1))
    await acks.store(ALICE, env("short", expires_at=now_ms() + 100), relayed_from=MALLORY)
    await _swept(acks)
    with pytest.raises(QuotaExceeded):  # its dead letter is still stored
        await acks.store(BOB, env("next"), relayed_from=MALLORY)


# -- many users at once ------------------------------------------------------------

CAROL = UserId("carol")


async def test_store_many_is_a_store_for_each_user(acks: AckBackend) -> None:
    await acks.store(BOB, env("m1"))  # pending for bob already
    await acks.store(CAROL, env("m1"))
    await acks.settle(CAROL, MsgId("m1"))  # acked for carol
    odd = UserId("d a{v}/ユ")
    results = await acks.store_many([ALICE, BOB, CAROL, odd], env("m1"))
    assert all(not isinstance(r, QuotaExceeded) for r in results)
    alice, bob, carol, other = (r for r in results if not isinstance(r, QuotaExceeded))
    assert (alice.duplicate, alice.seq, alice.state) == (False, 1, MsgState.PENDING)
    assert alice.message is not None and alice.message.user == ALICE
    assert (bob.duplicate, bob.state) == (True, MsgState.PENDING)
    assert bob.message is not None and bob.message.id == "m1"
    assert (carol.duplicate, carol.state, carol.message) == (True, MsgState.ACKED, None)
    assert (other.duplicate, other.seq) == (False, 1)
    for user in (ALICE, BOB, odd):
        assert await ids(acks, user) == ["m1"]
    assert await ids(acks, CAROL) == []
    again = await acks.store_many([ALICE, odd], env("m1"))
    assert [(r.duplicate, r.seq) for r in again
            if not isinstance(r, QuotaExceeded)] == [(True, 1), (True, 1)]
    assert await acks.store_many([], env("m2")) == []


async def test_store_many_messages_are_resent_and_settled_per_user(
        make_acks: AcksFactory) -> None:
    acks = await make_acks(AckPolicy(retry_interval_ms=100, max_attempts=5))
    await acks.store_many([ALICE, BOB], env("m1"))
    await acks.settle(ALICE, MsgId("m1"))
    # Claimed when due by the store's clock (the due index may say so a moment early).
    await eventually(lambda: acks.claim_due(BOB), lambda c: [m.id for m in c.resend] == ["m1"])
    assert (await acks.claim_due(ALICE)).resend == []


async def test_store_many_refuses_only_the_users_past_a_relayed_limit(
        make_acks: AcksFactory) -> None:
    acks = await make_acks(RELAY)
    await acks.store(ALICE, env("r1"), relayed_from=BOB)
    await acks.store(ALICE, env("r2"), relayed_from=BOB)  # alice holds all she may
    ghosts = [UserId(f"ghost{n}") for n in range(4)]
    results = await acks.store_many([ALICE, *ghosts], env("x"), relayed_from=MALLORY)
    limits = [r.limit if isinstance(r, QuotaExceeded) else None for r in results]
    # alice: her limit; three ghosts take mallory's budget of 3; the fourth is refused
    assert limits == ["recipient", None, None, None, "sender"]
    assert await acks.status(ALICE, MsgId("x")) is None
    assert await acks.status(ghosts[3], MsgId("x")) is None
    assert [await acks.status(g, MsgId("x")) for g in ghosts[:3]] == [MsgState.PENDING] * 3
