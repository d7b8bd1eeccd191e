"""The checker: was every accepted ACK-required message delivered or dead-lettered?

After the faults stop and the cluster is healed, :func:`settle` waits (bounded)
until every *accepted* ACK-required message (a call for it answered 200) was
received by some device of its user, or is in the dead-letter store with a
reason. What is neither when the bound is reached is **lost**. Sends never
accepted are not owed to anyone (they are counted, and so are those delivered
anyway). The bound exceeds a message's whole resend schedule, so nothing still
in flight counts as lost: on the soak's settings a pending message is resent
within 16 s and dead-lettered about 79 s after it was stored (the default
bound is 120 s, counted from when every send has ended and the cluster is healed).

Each lost message is then inspected for the report: its state in the store
(``/v1/messages``), its store record and trail, the faults around its send,
and whether a fresh connection of its user replays it (stuck pending, vs gone).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from redis.exceptions import RedisError

from bench.chaos.devices import Device
from bench.chaos.faults import FaultEvent, FaultInjector
from bench.chaos.traffic import AckMessage, Ledger
from bench.chaos.world import World
from tests.support.pods import SECRET
from wsnode.auth import mint_token
from wsnode.client import Client, ClientError
from wsnode.keys import RedisKeys

Clock = Callable[[], float]
# Faults active in the NEAR_BEFORE seconds before a message's first call, or
# while it was being sent, are listed with it in the report.
NEAR_BEFORE = 10.0


@dataclass(slots=True)
class Lost:
    msg: AckMessage
    state: str | None = None  # pending / acked / dead in the store; None: unknown to it
    store: dict[str, str] = field(default_factory=dict)
    trail: list[Any] = field(default_factory=list)
    faults: list[FaultEvent] = field(default_factory=list)
    replayed: bool | None = None  # by a fresh connection of the user after the check
    overdue: float | None = None  # seconds past its next resend (store time) when inspected
    why: str = ""  # see :func:`explain`


@dataclass(slots=True)
class Verdict:
    accepted: int = 0
    delivered: int = 0
    dead: dict[str, str] = field(default_factory=dict)  # accepted, undelivered: id -> reason
    delivered_and_dead: int = 0
    not_accepted: int = 0
    not_accepted_delivered: int = 0
    lost: list[Lost] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # first call -> first receipt
    settle_seconds: float = 0.0
    received_still_pending: int = 0
    problems: list[str] = field(default_factory=list)


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def received_by_user(devices: list[Device]) -> dict[str, dict[str, float]]:
    """user -> id -> first time any device of the user got it."""
    out: dict[str, dict[str, float]] = {}
    for device in devices:
        seen = out.setdefault(device.user, {})
        for msg_id, at in device.first_seen.items():
            if msg_id not in seen or at < seen[msg_id]:
                seen[msg_id] = at
    return out


def unresolved(ledger: Ledger, received: dict[str, dict[str, float]],
               dead: dict[str, str]) -> list[AckMessage]:
    """Accepted messages neither received by their user nor dead-lettered."""
    return [m for m in ledger.acks.values()
            if m.accepted and m.id not in received.get(m.user, {}) and m.id not in dead]


async def dead_letters(world: World, users: set[str]) -> dict[str, str]:
    """id -> reason of the dead letters of ``users`` (the 1000 newest of each)."""
    out: dict[str, str] = {}
    for user in sorted(users):
        answer = await world.ask("GET", f"/v1/dlq?user={quote(user, safe='')}&limit=1000")
        for row in (answer or {}).get("messages", []):
            out[str(row.get("id"))] = str(row.get("reason"))
    return out


async def settle(world: World, ledger: Ledger, devices: list[Device], clock: Clock,
                 bound: float) -> Verdict:
    """Wait up to ``bound`` seconds for every accepted message to resolve, then judge."""
    start = clock()
    dead: dict[str, str] = {}
    problem = ""
    while True:
        received = received_by_user(devices)
        waiting = unresolved(ledger, received, dead)
        if waiting:
            try:
                dead.update(await dead_letters(world, {m.user for m in waiting}))
            except RuntimeError as exc:  # no pod answers now: ask again until the bound
                problem = f"reading dead letters while settling: {exc}"
            else:
                problem = ""
            waiting = unresolved(ledger, received, dead)
        if not waiting or clock() - start >= bound:
            break
        await asyncio.sleep(2.0)
    verdict = Verdict(settle_seconds=clock() - start)
    if problem:
        verdict.problems.append(problem)
    # Every user once more: dead letters of delivered messages are counted too.
    dead.update(await dead_letters(world, {m.user for m in ledger.acks.values()}))
    received = received_by_user(devices)
    for msg in ledger.acks.values():
        got = received.get(msg.user, {}).get(msg.id)
        if not msg.accepted:
            verdict.not_accepted += 1
            verdict.not_accepted_delivered += got is not None
            continue
        verdict.accepted += 1
        if got is not None:
            verdict.delivered += 1
            verdict.delivered_and_dead += msg.id in dead
            verdict.latencies.append(max(0.0, got - msg.created))
        elif msg.id in dead:
            verdict.dead[msg.id] = dead[msg.id]
    verdict.lost = [Lost(m) for m in unresolved(ledger, received, dead)]
    verdict.received_still_pending = await _received_still_pending(world, ledger, received,
                                                                   verdict)
    return verdict


async def _received_still_pending(world: World, ledger: Ledger,
                                  received: dict[str, dict[str, float]],
                                  verdict: Verdict) -> int:
    """Delivered messages the store still holds pending (an ack that did not land)."""
    keys = RedisKeys(world.prefix)
    count = 0
    try:
        for user in {m.user for m in ledger.acks.values()}:
            async with world.redis_client() as client:
                pending = await client.zrange(keys.user_pending(user), 0, -1)
            got = received.get(user, {})
            count += sum(unquote(_text(raw)) in got for raw in pending)
    except (RedisError, OSError) as exc:
        verdict.problems.append(f"reading pending sets: {exc!r}")
    return count


def explain(lost: Lost, now_ms: int | None) -> str:
    """A short account of a lost message, from its store record and the
    answer to its accepted send, for grouping losses in the report."""
    if lost.state != "pending":
        return f"store state {lost.state or 'unknown'}"
    expires = lost.store.get("expires_at", "")
    if now_ms is not None and expires.isdigit() and lost.msg.expires_at is not None \
            and int(expires) <= now_ms:
        return "pending past expiresAt, not dead-lettered"
    report = lost.msg.report or {}
    if report.get("duplicate"):
        return "pending, accepted as a duplicate"
    if report.get("local"):
        return "pending, delivered locally, never received"
    if report.get("pods") or report.get("failedPods"):
        return "pending, published to a pod, never received"
    return "pending, routed to nobody"


async def inspect(world: World, faults: FaultInjector, verdict: Verdict,
                  limit: int = 1000) -> None:
    """Fill in what the store, the trail and the timeline say about each lost
    message (the first ``limit``; the faults near every one). One the store
    calls dead was only missed by the DLQ listing (1000 newest per user): it
    moves to the dead letters."""
    keys = RedisKeys(world.prefix)
    now_ms: int | None = None
    with contextlib.suppress(RedisError, OSError):
        async with world.redis_client() as client:
            seconds, micros = await client.time()
            now_ms = seconds * 1000 + micros // 1000
    slots = asyncio.Semaphore(16)

    async def one(lost: Lost) -> None:
        msg = lost.msg
        user, msg_id = quote(msg.user, safe=""), quote(msg.id, safe="")
        async with slots:
            try:
                answer = await world.ask("GET", f"/v1/messages/{user}/{msg_id}")
                lost.state = answer.get("state") if isinstance(answer, dict) else None
                trail = await world.ask("GET", f"/v1/trace/{msg_id}?user={user}")
                lost.trail = trail.get("events", []) if isinstance(trail, dict) else []
                async with world.redis_client() as client:
                    raw = await client.hgetall(keys.user_msg(msg.user, msg.id))
            except (RuntimeError, RedisError, OSError) as exc:
                verdict.problems.append(f"inspecting {msg.id}: {exc!r}")
                return
        lost.store = {_text(k): _text(v) for k, v in raw.items() if _text(k) != "body"}
        due = lost.store.get("next_due", "")
        if now_ms is not None and due.isdigit():
            lost.overdue = round((now_ms - int(due)) / 1000, 1)
        lost.why = explain(lost, now_ms)

    for lost in verdict.lost:
        end = lost.msg.accepted_at if lost.msg.accepted_at is not None else lost.msg.created
        lost.faults = faults.near(lost.msg.created - NEAR_BEFORE, end)
    await asyncio.gather(*(one(lost) for lost in verdict.lost[:limit]))
    for lost in [x for x in verdict.lost if x.state == "dead"]:
        verdict.lost.remove(lost)
        verdict.dead[lost.msg.id] = lost.store.get("reason", "?")


async def probe(world: World, verdict: Verdict, wait: float = 5.0) -> None:
    """Connect once more as each user with lost messages (without acking) and
    note which lost ones the replay or a resend brings: stuck pending messages
    that a reconnect would have saved, as opposed to messages gone for good."""
    by_user: dict[str, list[Lost]] = {}
    for lost in verdict.lost:
        by_user.setdefault(lost.msg.user, []).append(lost)
    urls = [world.pods[p].ws_url for p in world.pod_ids if world.alive(p)]

    async def one(user: str, losts: list[Lost]) -> None:
        seen: set[str] = set()
        client = Client(urls, token=mint_token(SECRET, user, 600), auto_ack=False,
                        open_timeout=5.0)
        try:
            await client.connect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    async for msg in client:
                        if msg.id is not None:
                            seen.add(msg.id)
        except ClientError as exc:
            verdict.problems.append(f"probe of {user}: {exc!r}")
            return
        finally:
            await client.close()
        for lost in losts:
            lost.replayed = lost.msg.id in seen

    await asyncio.gather(*(one(user, losts) for user, losts in by_user.items()))


async def amo_repeats(world: World, ledger: Ledger, devices: list[Device],
                      limit: int = 20) -> list[dict[str, Any]]:
    """At-most-once messages a device was given more than once, with their
    sends and trails (the first ``limit``): each one breaks at-most-once."""
    out: list[dict[str, Any]] = []
    for device in devices:
        for msg_id, copies in device.copies.items():
            msg = ledger.amos.get(msg_id)
            if msg is None or copies < 2 or len(out) >= limit:
                continue
            trail: Any = None
            with contextlib.suppress(RuntimeError):
                trail = await world.ask(
                    "GET", f"/v1/trace/{quote(msg_id, safe='')}?user={quote(msg.user, safe='')}")
            out.append({"device": device.name, "id": msg_id, "copies": copies,
                        "call": msg.call.to_json() if msg.call else None,
                        "trail": (trail or {}).get("events", [])[-30:]})
    return out
