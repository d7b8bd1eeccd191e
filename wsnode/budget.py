"""Per-connection budgets for what the per-user rate limiter does not count.

The rate limiter (Redis, per user) counts the messages that reach handlers.
Everything else a client can send costs the pod too: ``ping`` (echoed),
``ack`` (a store call), ``restore`` (a replay of the whole backlog), and
frames the pod refuses (bad JSON, unknown types, frames over the rate limit),
each answered with an error frame. A :class:`ConnBudget` bounds them per
connection, in memory, for a few arithmetic operations per frame:

* every frame is charged (one frame, its size in bytes) as it arrives; a frame
  the rate limiter lets through, and an ``ack`` that settles a pending
  message, are refunded: they are paid for by the rate limit, or by the
  message they settle (a client acking a replay of 10,000 messages is fine);
* past the frame or byte budget the connection is closed with 1008;
* ``restore`` has a rate of its own, answered ``rate_limited`` past it.

Budgets are token buckets: ``COUNT/PERIOD`` allows a burst of ``COUNT``,
refilled at ``COUNT`` per ``PERIOD``.
"""

from __future__ import annotations

from wsnode.settings import Rate


class TokenBucket:
    """``rate.count`` tokens at most, refilled at ``rate.count / rate.period`` per
    second. Times are monotonic seconds given by the caller."""

    __slots__ = ("_per_s", "_stamp", "capacity", "tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self.capacity = float(rate.count)
        self._per_s = rate.count / rate.period
        self.tokens = self.capacity
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self._stamp) * self._per_s)
            self._stamp = now

    def take(self, amount: float, now: float) -> float:
        """Take ``amount`` tokens: 0.0 when taken, else the seconds until they
        would be there (nothing is taken then)."""
        self._refill(now)
        if self.tokens >= amount:
            self.tokens -= amount
            return 0.0
        return (amount - self.tokens) / self._per_s

    def full(self, now: float) -> bool:
        """True when the bucket has refilled to its burst (forgetting it then
        changes nothing)."""
        self._refill(now)
        return self.tokens >= self.capacity

    def give(self, amount: float) -> None:
        """Give back tokens taken for something that turned out to be paid for."""
        self.tokens = min(self.capacity, self.tokens + amount)


class ConnBudget:
    """The budgets of one connection (see the module); a ``None`` rate is no limit."""

    __slots__ = ("_bytes", "_frames", "_restores", "spent")

    def __init__(self, frames: Rate | None, size: Rate | None, restores: Rate | None,
                 now: float) -> None:
        self._frames = TokenBucket(frames, now) if frames is not None else None
        self._bytes = TokenBucket(size, now) if size is not None else None
        self._restores = TokenBucket(restores, now) if restores is not None else None
        self.spent = False  # set once over budget: the connection is being closed

    def charge(self, size: int, now: float) -> bool:
        """Charge one frame of ``size`` bytes; False (and :attr:`spent`) when over
        the frame or byte budget. A frame larger than the whole byte budget is
        over it."""
        if self.spent:
            return False
        over_frames = self._frames is not None and self._frames.take(1, now) > 0
        over_bytes = not over_frames and self._bytes is not None \
            and self._bytes.take(size, now) > 0
        self.spent = over_frames or over_bytes
        return not self.spent

    def refund(self, size: int) -> None:
        """Give back the charge of a frame that was paid for otherwise."""
        if self._frames is not None:
            self._frames.give(1)
        if self._bytes is not None:
            self._bytes.give(size)

    def restore_wait_ms(self, now: float) -> int:
        """0 when a ``restore`` may run now (and it is counted), else the
        milliseconds until one may."""
        if self._restores is None:
            return 0
        wait = self._restores.take(1, now)
        return 0 if not wait else max(1, int(wait * 1000 + 0.999))
