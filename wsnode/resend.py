"""The timed duties of the ACK store on a pod: resends, expiry, reconciliation.

The store owns the schedule (``wsnode.acks.ResendSchedule``); a pod only does
the work for the users it holds. Three supervised loops (``wsnode.supervisor``):

* **resend** scans the store's due index on the store's clock. For each due
  user this pod holds it claims the user's due messages (atomic per user, so a
  user on several pods gets one resend per attempt) and delivers them to every
  pod of the user. A user nobody holds any more (due for longer than
  ``grace``, and presence shows no pod) is dropped from the index: they get
  their messages in the replay of their next connect. A user whose client has
  not read what it was sent yet is skipped (a resend would only pile onto its
  queue); one user whose claim fails does not hold back the others.
* **sweep** dead-letters pending messages whose expiry passed, whoever holds
  them (an offline user's too).
* **reconcile**, every ``RECONCILE_S``, puts every user this pod holds back
  into the due index with their earliest due message: the repair for index
  entries lost to a crash between two writes.

Every message that becomes dead on this pod is counted, traced and logged
once (``Sender.dead_lettered``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from wsnode import failpoints
from wsnode.acks import AckBackend
from wsnode.errors import BackendUnavailable
from wsnode.ids import UserId
from wsnode.metrics import Metrics
from wsnode.outage import LogThrottle
from wsnode.presence import PresenceReader
from wsnode.sender import Sender

log = logging.getLogger("wsnode.resend")

SCAN_LIMIT = 2000
SWEEP_LIMIT = 1000
RECONCILE_S = 30.0
_CONCURRENCY = 64


def scan_interval(retry_interval: float) -> float:
    """How often a pod scans the due index: a quarter of the first resend delay
    (so resends are at most that late), between 50 ms and 1 s."""
    return min(1.0, max(0.05, retry_interval / 4))


class Resender:
    """The resend and reconcile loops of one pod (see the module)."""

    def __init__(
        self,
        acks: AckBackend,
        presence: PresenceReader,
        sender: Sender,
        metrics: Metrics,
        *,
        holds: Callable[[UserId], bool],
        held: Callable[[], Iterable[UserId]],
        busy: Callable[[UserId], bool] = lambda user: False,
        interval: float = 1.0,
    ) -> None:
        self._acks = acks
        self._presence = presence
        self._sender = sender
        self._metrics = metrics
        self._holds = holds
        self._held = held
        self._busy = busy
        self.interval = interval
        self.grace_ms = int(1000 * max(2.0, 4 * interval))
        self._elsewhere: dict[UserId, float] = {}  # held by another pod, as seen at
        self._throttle = LogThrottle(log)
        self.problem: str | None = None  # users whose claims failed in the last round

    async def resend_step(self) -> float:
        """One scan of the due index; returns when to scan again."""
        scan = await self._acks.due(SCAN_LIMIT)
        mine = [u for u, _ in scan.users if self._holds(u) and not self._busy(u)]
        failed = await self._claim_all(mine)
        self.problem = f"resend claims failing for {failed} user(s)" if failed else None
        stale = [(u, since) for u, since in scan.users
                 if since <= scan.now_ms - self.grace_ms and not self._holds(u)]
        if stale:
            await self._forget_unheld(stale)
        if len(scan.users) >= SCAN_LIMIT:
            return 0.0
        if scan.next_in_ms is not None:
            return min(self.interval, scan.next_in_ms / 1000)
        return self.interval

    async def _claim_all(self, users: list[UserId]) -> int:
        slots = asyncio.Semaphore(_CONCURRENCY)

        async def one(user: UserId) -> None:
            async with slots:
                await self._claim(user)

        outcomes = await asyncio.gather(*(one(u) for u in users), return_exceptions=True)
        failed = 0
        for user, outcome in zip(users, outcomes, strict=True):
            if isinstance(outcome, BackendUnavailable):
                raise outcome  # the store is down: the whole round failed
            if isinstance(outcome, BaseException):
                failed += 1
                self._throttle.warn("claim", "resend claim for user %r failed: %r", user,
                                    outcome, exc_info=outcome)
        return failed

    async def _claim(self, user: UserId) -> None:
        if failpoints.ACTIVE:
            await failpoints.hit("resend.claim")
        self._metrics.acks_claims.inc()
        claimed = await self._acks.claim_due(user)
        for dead in claimed.dead:
            self._sender.dead_lettered(dead)
        for msg in claimed.resend:
            self._metrics.acks_resent.inc()
            await self._sender.redeliver(msg)

    async def _forget_unheld(self, stale: list[tuple[UserId, int]]) -> None:
        now = time.monotonic()
        for user, seen in list(self._elsewhere.items()):
            if now - seen > self.grace_ms / 1000:
                del self._elsewhere[user]
        ask = [u for u, _ in stale if u not in self._elsewhere]
        if not ask:
            return
        where = await self._presence.pods_of(ask)
        for user, since in stale:
            if user in where:
                self._elsewhere[user] = now  # its pod claims it; do not ask each round
            elif user in ask:
                await self._acks.forget(user, since)

    async def reconcile_step(self) -> None:
        """Every held user back into the due index (see the module)."""
        users = list(self._held())
        for start in range(0, len(users), 500):
            chunk = users[start:start + 500]
            await asyncio.gather(*(self._acks.schedule(u) for u in chunk))


class Sweeper:
    """The expiry loop of one pod (see the module)."""

    def __init__(self, acks: AckBackend, sender: Sender) -> None:
        self._acks = acks
        self._sender = sender

    async def step(self) -> float | None:
        dead = await self._acks.sweep(SWEEP_LIMIT)
        for d in dead:
            self._sender.dead_lettered(d)
        return 0.0 if len(dead) >= SWEEP_LIMIT else None
