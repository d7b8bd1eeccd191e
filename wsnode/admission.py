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
* Descriptors: ``wsnode serve`` raises its soft ``RLIMIT_NOFILE`` to the hard
  limit (:func:`raise_fd_limit`); ``MAX_CONNECTIONS`` defaults to that limit
  minus a reserve for Redis, RabbitMQ, the admin port and handshakes that sent
  no request yet (:func:`connection_limits`). TCP connections of the public
  port past ``MAX_CONNECTIONS`` plus a headroom are aborted as they are
  accepted (:meth:`Admission.connection_class`), so that even a flood of raw
  TCP connections leaves the reserve to the admin port and the backends.
* The event loop's ``socket.accept() out of system resource`` (descriptors
  exhausted anyway, e.g. by another process) is logged once a minute with a
  count of the lines held back (:func:`quiet_accept_errors`), not per accept.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from typing import Any, cast

from websockets.asyncio.server import ServerConnection

from wsnode.errors import SettingsError
from wsnode.ids import UserId
from wsnode.outage import LogThrottle

log = logging.getLogger("wsnode.admission")

# Without a limit (RLIM_INFINITY) the kernel's own cap applies; count with this.
_UNLIMITED_FDS = 1 << 20
RETRY_AFTER_FULL_S = 2


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

    def __str__(self) -> str:
        per_user = str(self.per_user) if self.per_user else "no limit"
        return (f"at most {self.max_connections} connections ({per_user} per user), "
                f"descriptor limit {self.fds}")


def reserve_for(fds: int) -> int:
    """Descriptors kept from connections: Redis's pool (64), RabbitMQ, the admin
    port's clients, logs, and handshakes that sent no request yet."""
    return min(4096, max(128, fds // 10))


def connection_limits(max_connections: int | None, per_user: int, fds: int) -> Limits:
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
    return Limits(chosen, per_user, chosen + reserve // 4, fds)


class Admission:
    """Slots of users and of the pod (see the module). One event loop."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._users: dict[UserId, int] = {}
        self.slots = 0
        self.transports = 0
        self.transports_aborted = 0

    def full(self) -> bool:
        """True when the pod has no slot left (checked before authentication:
        a pod at its limit spends nothing on a token)."""
        return self.slots >= self.limits.max_connections

    def admit(self, ws: ServerConnection, user: UserId) -> tuple[int, str] | None:
        """Take a slot for this handshake, given back when its connection is lost;
        or ``(status, reason)`` when there is none."""
        if self.full():
            return 503, (f"pod at its connection limit ({self.limits.max_connections}): "
                         "connect to another pod")
        per_user = self.limits.per_user
        held = self._users.get(user, 0)
        if per_user and held >= per_user:
            return 429, (f"too many connections for this user on this pod (limit {per_user}): "
                         "close one first")
        self._users[user] = held + 1
        self.slots += 1
        ws.connection_lost_waiter.add_done_callback(lambda _: self._release(user))
        return None

    def held(self, user: UserId) -> int:
        return self._users.get(user, 0)

    def _release(self, user: UserId) -> None:
        self.slots -= 1
        left = self._users.get(user, 0) - 1
        if left > 0:
            self._users[user] = left
        else:
            self._users.pop(user, None)

    def connection_class(self) -> type[ServerConnection]:
        """The connection class of the public port: it counts TCP connections and
        aborts those past ``max_transports`` at once."""
        admission = self

        class CountedConnection(ServerConnection):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                admission.transports += 1
                super().connection_made(transport)
                if admission.transports > admission.limits.max_transports:
                    admission.transports_aborted += 1
                    cast(asyncio.Transport, transport).abort()

            def connection_lost(self, exc: Exception | None) -> None:
                admission.transports -= 1
                super().connection_lost(exc)

        return CountedConnection


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
