"""Admission: how many connections one user, and the pod, may hold.

Contract:

* A handshake that passed authentication takes a **slot** of its user and of
  the pod (:meth:`Admission.admit`) before the upgrade, and gives it back when
  its TCP connection is lost, whatever ends it: the connection closing, a
  handshake that websockets refuses after us, a client that never completes
  it (``open_timeout``). So handshakes in progress count (a burst cannot slip
  past the check) and no reservation outlives its connection.
* Past ``MAX_CONNECTIONS_PER_USER`` slots of a user on this pod a handshake
  gets **429**; past ``MAX_CONNECTIONS`` slots of the pod, **503** with
  ``Retry-After``. The newest handshake is refused rather than the oldest
  connection closed: a stolen token then cannot push the user's devices off.
* A user's handshakes are admitted at most at ``HANDSHAKE_RATE`` on this pod
  (a token bucket per user, in memory): past it, **429** with ``Retry-After``
  (the seconds until one more is admitted). Every admitted handshake costs the
  pod a welcome, a replay of the user's pending messages and two presence
  writes, and a burst of them runs in the same loop iterations: without a
  rate, one token could reconnect for a fresh replay of its whole backlog as
  fast as the per-connection ``restore`` rate is spent, and open its 64
  connections in one burst that stalls every other connection of the pod.
  Refused handshakes cost nothing more: only admitted ones take a token.
* Descriptors: ``wsnode serve`` raises its soft ``RLIMIT_NOFILE`` to the hard
  limit (:func:`raise_fd_limit`); ``MAX_CONNECTIONS`` defaults to that limit
  minus a reserve for Redis, RabbitMQ, the admin port and handshakes that sent
  no request yet (:func:`connection_limits`). TCP connections of the public
  port past ``MAX_CONNECTIONS`` plus a headroom (``Limits.max_transports``)
  are aborted as they are accepted (``wsnode.intake``), so that even a flood
  of raw TCP connections leaves the reserve to the admin port and the backends.
* The event loop's ``socket.accept() out of system resource`` (descriptors
  exhausted anyway, e.g. by another process) is logged once a minute with a
  count of the lines held back (:func:`quiet_accept_errors`), not per accept.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import time
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import ServerConnection

from wsnode.budget import TokenBucket
from wsnode.errors import SettingsError
from wsnode.ids import UserId
from wsnode.outage import LogThrottle
from wsnode.settings import Rate

log = logging.getLogger("wsnode.admission")

# Without a limit (RLIM_INFINITY) the kernel's own cap applies; count with this.
_UNLIMITED_FDS = 1 << 20
RETRY_AFTER_FULL_S = 2
_PRUNE_FIRST = 1024  # users in the handshake-rate map before its first sweep


def fd_limit() -> int:
    """The soft descriptor limit of this process."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _UNLIMITED_FDS if soft == resource.RLIM_INFINITY else soft


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one (to the kernel's usual cap
    when the hard one is unlimited); the soft limit afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_FDS if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the descriptor limit from %d to %d: %s", soft, target, exc)
    return fd_limit()


@dataclass(frozen=True, slots=True)
class Limits:
    """The connection limits of one pod."""

    max_connections: int
    per_user: int  # 0: no limit
    max_transports: int  # TCP connections of the public port, handshakes included
    fds: int  # the descriptor limit they were computed from
    handshake_rate: Rate | None = None  # admitted handshakes per user; None: no limit

    def __str__(self) -> str:
        per_user = str(self.per_user) if self.per_user else "no limit"
        rate = str(self.handshake_rate) if self.handshake_rate else "no limit"
        return (f"at most {self.max_connections} connections ({per_user} per user, "
                f"handshakes per user {rate}), descriptor limit {self.fds}")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a handshake is refused: which limit (``full``, ``per_user``,
    ``rate``), its HTTP status, a one-line reason, and the ``Retry-After``
    seconds (None: no header)."""

    limit: str
    status: int
    reason: str
    retry_after: int | None = None


def reserve_for(fds: int) -> int:
    """Descriptors kept from connections: Redis's pool (64), RabbitMQ, the admin
    port's clients, logs, and handshakes that sent no request yet."""
    return min(4096, max(128, fds // 10))


def connection_limits(max_connections: int | None, per_user: int, fds: int,
                      handshake_rate: Rate | None = None) -> Limits:
    """The limits from the settings and the descriptor limit ``fds``; a
    :class:`SettingsError` naming the setting when they cannot hold."""
    reserve = reserve_for(fds)
    room = fds - reserve
    if room < 1:
        raise SettingsError(
            f"the descriptor limit (ulimit -n) is {fds}: a pod needs more than {reserve} "
            "(kept for Redis, RabbitMQ and the admin port); raise it")
    if max_connections is not None and max_connections > room:
        raise SettingsError(
            f"invalid setting WSNODE_MAX_CONNECTIONS={max_connections}: the descriptor limit "
            f"(ulimit -n) {fds} allows at most {room} ({reserve} are kept for Redis, "
            "RabbitMQ and the admin port); raise the limit or lower the setting")
    chosen = max_connections if max_connections is not None else room
    return Limits(chosen, per_user, chosen + reserve // 4, fds, handshake_rate)


class Admission:
    """Slots of users and of the pod (see the module). One event loop."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._users: dict[UserId, int] = {}
        self._rates: dict[UserId, TokenBucket] = {}
        self._prune_at = _PRUNE_FIRST
        self.slots = 0

    def full(self) -> bool:
        """True when the pod has no slot left (checked before authentication:
        a pod at its limit spends nothing on a token)."""
        return self.slots >= self.limits.max_connections

    def admit(self, ws: ServerConnection, user: UserId,
              now: float | None = None) -> Refusal | None:
        """Take a slot for this handshake, given back when its connection is lost
        (and a token of the user's handshake rate); or why there is none.
        ``now``: monotonic seconds (tests)."""
        if self.full():
            return Refusal("full", 503, "pod at its connection limit "
                           f"({self.limits.max_connections}): connect to another pod",
                           RETRY_AFTER_FULL_S)
        per_user = self.limits.per_user
        held = self._users.get(user, 0)
        if per_user and held >= per_user:
            return Refusal("per_user", 429, "too many connections for this user on this pod "
                           f"(limit {per_user}): close one first")
        wait = self._handshake_wait(user, time.monotonic() if now is None else now)
        if wait:
            return Refusal("rate", 429, "too many handshakes for this user on this pod "
                           f"(limit {self.limits.handshake_rate}): retry later", wait)
        self._users[user] = held + 1
        self.slots += 1
        ws.connection_lost_waiter.add_done_callback(lambda _: self._release(user))
        return None

    def _handshake_wait(self, user: UserId, now: float) -> int:
        """0 when ``user`` may have one more handshake now (and it is counted),
        else the whole seconds until it may."""
        rate = self.limits.handshake_rate
        if rate is None:
            return 0
        bucket = self._rates.get(user)
        if bucket is None:
            bucket = self._rates[user] = TokenBucket(rate, now)
        wait = bucket.take(1, now)
        if len(self._rates) > self._prune_at:
            # Forget the users whose bucket refilled: the map holds only those
            # that had a handshake within the last period.
            for known in [u for u, b in self._rates.items() if b.full(now)]:
                del self._rates[known]
            self._prune_at = max(_PRUNE_FIRST, 2 * len(self._rates))
        return 0 if not wait else max(1, math.ceil(wait))

    def held(self, user: UserId) -> int:
        return self._users.get(user, 0)

    def _release(self, user: UserId) -> None:
        self.slots -= 1
        left = self._users.get(user, 0) - 1
        if left > 0:
            self._users[user] = left
        else:
            self._users.pop(user, None)


_ACCEPT_FAILED = "socket.accept() out of system resource"


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log the loop's accept failures once a minute (with a count), not per
    accept; every other loop error as before. Leaves a loop that already has
    its own exception handler alone."""
    if loop.get_exception_handler() is not None:
        return
    throttle = LogThrottle(log)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith(_ACCEPT_FAILED):
            throttle.warn("accept", "cannot accept connections: %s (descriptor limit %d); "
                          "lower WSNODE_MAX_CONNECTIONS or raise ulimit -n",
                          context.get("exception"), fd_limit())
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
