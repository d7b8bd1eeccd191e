"""Resend timers for ACK-required messages delivered to this pod's connections.

Every pod that delivers an ACK-required message to one of its connections
tracks it here. When it falls due the pod asks the store to ``claim`` the
resend: the store decides atomically, so with a user on several pods exactly
one of them resends (to every pod of the user) and the others wait. Timers are
only an optimisation of who asks when; the store holds the truth, so a pod that
dies loses nothing but its timers, and the pod that next holds the user
(replay on connect) tracks the message again.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Awaitable, Callable

from wsnode.acks import AckStore, ClaimKind, StoredMessage
from wsnode.clock import Clock, SystemClock
from wsnode.errors import BackendUnavailable
from wsnode.ids import MsgId, UserId
from wsnode.metrics import Metrics

log = logging.getLogger("wsnode.resend")

_BATCH = 256
_BACKEND_RETRY_MS = 1000


class Resender:
    def __init__(
        self,
        acks: AckStore,
        metrics: Metrics,
        *,
        resend: Callable[[StoredMessage], Awaitable[object]],
        holds: Callable[[UserId], bool],
        clock: Clock | None = None,
    ) -> None:
        self._acks = acks
        self._metrics = metrics
        self._resend = resend
        self._holds = holds
        self._clock = clock or SystemClock()
        self._heap: list[tuple[int, UserId, MsgId]] = []
        self._due: dict[tuple[UserId, MsgId], int] = {}
        self._wake = asyncio.Event()

    def track(self, user: UserId, msg_id: MsgId, due_ms: int) -> None:
        """Ask the store about ``(user, msg_id)`` at ``due_ms`` (the latest call wins)."""
        key = (user, msg_id)
        if self._due.get(key) == due_ms:
            return
        self._due[key] = due_ms
        heapq.heappush(self._heap, (due_ms, user, msg_id))
        if self._heap[0][0] == due_ms:
            self._wake.set()

    def __len__(self) -> int:
        return len(self._due)

    async def run(self) -> None:
        """Fire timers forever (cancel to stop)."""
        while True:
            batch = self._pop_due()
            if batch:
                await asyncio.gather(*(self._fire(u, m) for u, m in batch))
                continue
            self._wake.clear()
            delay = None
            if self._heap:
                delay = max(0.0, (self._heap[0][0] - self._clock.now_ms()) / 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _pop_due(self) -> list[tuple[UserId, MsgId]]:
        now = self._clock.now_ms()
        out: list[tuple[UserId, MsgId]] = []
        while self._heap and self._heap[0][0] <= now and len(out) < _BATCH:
            due, user, msg_id = heapq.heappop(self._heap)
            if self._due.get((user, msg_id)) != due:
                continue  # superseded by a later track()
            del self._due[(user, msg_id)]
            out.append((user, msg_id))
        return out

    async def _fire(self, user: UserId, msg_id: MsgId) -> None:
        if not self._holds(user):
            return  # the user left this pod; whoever holds them now tracks it
        try:
            claim = await self._acks.claim(user, msg_id)
        except BackendUnavailable:
            self._metrics.backend_errors.labels("acks").inc()
            self.track(user, msg_id, self._clock.now_ms() + _BACKEND_RETRY_MS)
            return
        if claim.kind is ClaimKind.RESEND and claim.message is not None:
            self._metrics.acks_resent.inc()
            self.track(user, msg_id, claim.message.next_due)
            try:
                await self._resend(claim.message)
            except Exception:
                log.exception("resend of %s failed; it stays stored", msg_id,
                              extra={"user": user})
        elif claim.kind is ClaimKind.WAIT and claim.message is not None:
            self.track(user, msg_id, claim.message.next_due)
        elif claim.kind is ClaimKind.DEAD and claim.dead is not None:
            self._metrics.acks_dead_lettered.labels(claim.dead.reason.value).inc()
            log.info("message %s dead-lettered (%s)", msg_id, claim.dead.reason.value,
                     extra={"user": user})
