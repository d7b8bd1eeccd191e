"""Per-user rate limiting: the :class:`RateLimiter` interface and its memory backend.

The algorithm is GCRA (the generic cell rate algorithm, a token bucket stored as
one timestamp): ``count`` messages per ``period`` with a burst of ``count``. The
Redis backend runs the same arithmetic in one Lua call (``lua/limiter.lua``), so
both backends give the same answers for the same sequence of hits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from wsnode.clock import Clock, SystemClock
from wsnode.ids import UserId
from wsnode.settings import Rate


@dataclass(frozen=True, slots=True)
class Decision:
    """Outcome of one hit: allowed, or refused with a wait before the next try."""

    allowed: bool
    retry_after_ms: int = 0


ALLOW = Decision(True)


class RateLimiter(Protocol):
    """Counts messages per user against one shared rate.

    ``hit`` is atomic per user: concurrent hits from several connections (and,
    for shared backends, several pods) never admit more than the rate allows.
    A backend that cannot reach its store fails open (allows) and says so in
    metrics, because refusing every message during an outage is worse.
    """

    async def hit(self, user: UserId) -> Decision: ...


def gcra(tat_ms: float, now_ms: int, rate: Rate) -> tuple[bool, float, int]:
    """One GCRA step: ``(allowed, new_tat_ms, retry_after_ms)``.

    ``tat_ms`` is the stored theoretical arrival time (0 when none).
    """
    period_ms = rate.period * 1000.0
    interval = period_ms / rate.count
    new_tat = max(tat_ms, float(now_ms)) + interval
    overshoot = new_tat - now_ms - period_ms
    if overshoot > 0:
        return False, tat_ms, max(1, math.ceil(overshoot))
    return True, new_tat, 0


class MemoryLimiter:
    """GCRA in a dict; for the embedded pod."""

    _PRUNE_EVERY = 4096

    def __init__(self, rate: Rate, clock: Clock | None = None) -> None:
        self.rate = rate
        self._clock = clock or SystemClock()
        self._tat: dict[UserId, float] = {}
        self._hits = 0

    async def hit(self, user: UserId) -> Decision:
        now = self._clock.now_ms()
        allowed, tat, retry = gcra(self._tat.get(user, 0.0), now, self.rate)
        if not allowed:
            return Decision(False, retry)
        self._tat[user] = tat
        self._hits += 1
        if self._hits % self._PRUNE_EVERY == 0:
            self._prune(now)
        return ALLOW

    def _prune(self, now: int) -> None:
        # A user whose TAT is in the past has a full bucket: forgetting them is exact.
        for user in [u for u, t in self._tat.items() if t <= now]:
            del self._tat[user]


class NoLimiter:
    """The limiter used when ``RATE_LIMIT=0``."""

    async def hit(self, user: UserId) -> Decision:
        return ALLOW
