"""Time sources.

The limiter and the ACK store take a :class:`Clock` so that unit tests can move
time by hand instead of sleeping. Production code uses :class:`SystemClock`.
Scheduling that several processes share (resends, expiry) runs on the Redis
server's clock, never on a pod's: pods' clocks may disagree.
"""

from __future__ import annotations

import time
from typing import Protocol

_skew_ns = 0


def set_skew(ms: int) -> None:
    """Shift :class:`SystemClock` by ``ms`` (failpoint ``clock.skew``; tests only)."""
    global _skew_ns
    _skew_ns = ms * 1_000_000


class Clock(Protocol):
    """Wall-clock time in integer milliseconds since the epoch."""

    def now_ms(self) -> int: ...


class SystemClock:
    """The real clock."""

    def now_ms(self) -> int:
        return (time.time_ns() + _skew_ns) // 1_000_000


class ManualClock:
    """A clock that only moves when told to (for tests and simulations)."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now = start_ms

    def now_ms(self) -> int:
        return self._now

    def advance(self, ms: int) -> None:
        self._now += ms
