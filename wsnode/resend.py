"""Resend timers for ACK-required messages delivered to this pod's connections,
and re-route timers for ACK-required deliveries that could not reach a pod.

Every pod that delivers an ACK-required message to one of its connections
tracks it here. When it falls due the pod asks the store to ``claim`` the
resend: the store decides atomically, so with a user on several pods exactly
one of them resends (to every pod of the user) and the others wait. Timers are
only an optimisation of who asks when; the store holds the truth, so a pod that
dies loses nothing but its timers, and the pod that next holds the user
(replay on connect) tracks the message again.

A delivery the bus could not take (broker down, queue gone) is routed again
with backoff while the store still has it pending; that does not count as a
delivery attempt, because no client saw it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Awaitable, Callable
from enum import IntEnum

from wsnode.acks import AckStore, ClaimKind, DeadLetter, MsgState, StoredMessage
from wsnode.bus import Delivery
from wsnode.clock import Clock, SystemClock
from wsnode.errors import BackendUnavailable
from wsnode.ids import MsgId, UserId
from wsnode.metrics import Metrics

log = logging.getLogger("wsnode.resend")

_BATCH = 256
_CONCURRENCY = 256
_BACKEND_RETRY_MS = 1000
_BUSY_RETRY_MS = 1000
_REROUTE_FIRST_MS = 250
_REROUTE_MAX_MS = 10_000
_MAX_UNROUTED = 50_000


class _Kind(IntEnum):
    CLAIM = 0
    REROUTE = 1


_Key = tuple[_Kind, UserId, MsgId]


class Resender:
    def __init__(
        self,
        acks: AckStore,
        metrics: Metrics,
        *,
        resend: Callable[[StoredMessage], Awaitable[object]],
        reroute: Callable[[Delivery], Awaitable[object]],
        holds: Callable[[UserId], bool],
        busy: Callable[[UserId], bool] = lambda user: False,
        on_dead: Callable[[DeadLetter], None] = lambda dead: None,
        clock: Clock | None = None,
    ) -> None:
        self._acks = acks
        self._metrics = metrics
        self._resend = resend
        self._reroute = reroute
        self._holds = holds
        self._busy = busy
        self._on_dead = on_dead
        self._clock = clock or SystemClock()
        self._heap: list[tuple[int, _Kind, UserId, MsgId]] = []
        self._due: dict[_Key, int] = {}
        self._unrouted: dict[tuple[UserId, MsgId], tuple[Delivery, int]] = {}
        self._wake = asyncio.Event()
        self._capped = False

    def track(self, user: UserId, msg_id: MsgId, due_ms: int) -> None:
        """Ask the store about ``(user, msg_id)`` at ``due_ms`` (the latest call wins)."""
        self._schedule((_Kind.CLAIM, user, msg_id), due_ms)

    def track_unrouted(self, delivery: Delivery) -> None:
        """Route ``delivery`` again soon, backing off while it keeps failing.
        Bounded: past ``_MAX_UNROUTED`` (a long bus outage) further ones are
        left to the store: they reach their users on reconnect or restore."""
        assert delivery.ack_id is not None
        key = (delivery.user, delivery.ack_id)
        previous = self._unrouted.get(key)
        if previous is None and len(self._unrouted) >= _MAX_UNROUTED:
            if not self._capped:
                self._capped = True
                log.warning("over %d ACK-required deliveries wait for the bus; further ones "
                            "wait in the store for their users' next connect", _MAX_UNROUTED)
            return
        self._capped = False
        wait = min(previous[1] * 2, _REROUTE_MAX_MS) if previous else _REROUTE_FIRST_MS
        self._unrouted[key] = (delivery, wait)
        self._schedule((_Kind.REROUTE, *key), self._clock.now_ms() + wait)

    def __len__(self) -> int:
        return len(self._due)

    async def run(self) -> None:
        """Fire timers forever (cancel to stop). Each due timer runs in a task of
        its own, at most ``_CONCURRENCY`` at once, so one slow backend call (a
        confirm that takes seconds) never holds back the others."""
        slots = asyncio.Semaphore(_CONCURRENCY)
        running: set[asyncio.Task[None]] = set()

        async def fire(key: _Key) -> None:
            try:
                await self._fire(key)
            finally:
                slots.release()

        try:
            while True:
                batch = self._pop_due()
                for key in batch:
                    await slots.acquire()
                    task = asyncio.get_running_loop().create_task(fire(key))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if batch:
                    continue
                await self._sleep()
        finally:
            for task in running:
                task.cancel()

    async def _sleep(self) -> None:
        """Until the earliest timer is due, or an earlier one is scheduled."""
        self._wake.clear()
        delay = None
        if self._heap:
            delay = max(0.0, (self._heap[0][0] - self._clock.now_ms()) / 1000)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    def _schedule(self, key: _Key, due_ms: int) -> None:
        if self._due.get(key) == due_ms:
            return
        self._due[key] = due_ms
        heapq.heappush(self._heap, (due_ms, *key))
        if self._heap[0][0] == due_ms:
            self._wake.set()

    def _pop_due(self) -> list[_Key]:
        now = self._clock.now_ms()
        out: list[_Key] = []
        while self._heap and self._heap[0][0] <= now and len(out) < _BATCH:
            due, kind, user, msg_id = heapq.heappop(self._heap)
            key = (kind, user, msg_id)
            if self._due.get(key) != due:
                continue  # superseded by a later schedule
            del self._due[key]
            out.append(key)
        return out

    async def _fire(self, key: _Key) -> None:
        kind, user, msg_id = key
        try:
            if kind is _Kind.REROUTE:
                await self._fire_reroute(user, msg_id)
            else:
                await self._fire_claim(user, msg_id)
        except BackendUnavailable:
            self._metrics.backend_errors.labels("acks").inc()
            self._schedule(key, self._clock.now_ms() + _BACKEND_RETRY_MS)
        except Exception:
            log.exception("resend of %s failed; it stays stored", msg_id, extra={"user": user})
            if kind is _Kind.REROUTE:
                self._unrouted.pop((user, msg_id), None)

    async def _fire_reroute(self, user: UserId, msg_id: MsgId) -> None:
        entry = self._unrouted.get((user, msg_id))
        if entry is None:
            return
        if await self._acks.status(user, msg_id) is not MsgState.PENDING:
            del self._unrouted[(user, msg_id)]
            return
        # A failure calls track_unrouted again (longer wait); success ends it here.
        delivery = entry[0]
        await self._reroute(delivery)
        if self._due.get((_Kind.REROUTE, user, msg_id)) is None:
            self._unrouted.pop((user, msg_id), None)

    async def _fire_claim(self, user: UserId, msg_id: MsgId) -> None:
        if not self._holds(user):
            return  # the user left this pod; whoever holds them now tracks it
        if self._busy(user):
            # The client has not read what it was sent yet: a resend would only
            # pile onto its send queue (and close it for slowness). Ask later,
            # without spending an attempt.
            self.track(user, msg_id, self._clock.now_ms() + _BUSY_RETRY_MS)
            return
        claim = await self._acks.claim(user, msg_id)
        if claim.kind is ClaimKind.RESEND and claim.message is not None:
            self._metrics.acks_resent.inc()
            self.track(user, msg_id, claim.message.next_due)
            await self._resend(claim.message)
        elif claim.kind is ClaimKind.WAIT and claim.message is not None:
            self.track(user, msg_id, claim.message.next_due)
        elif claim.kind is ClaimKind.DEAD and claim.dead is not None:
            self._metrics.acks_dead_lettered.labels(claim.dead.reason.value).inc()
            self._on_dead(claim.dead)
            log.info("message %s dead-lettered (%s)", msg_id, claim.dead.reason.value,
                     extra={"user": user})
