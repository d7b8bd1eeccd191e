"""The exception tree of wsnode.

::

    WsnodeError                  root: catch this to catch everything we raise
    ├── SettingsError            a WSNODE_* value is invalid (message names it)
    ├── AuthError                a handshake is refused (has .status: 401 or 403)
    ├── ProtocolError            a client frame is invalid (has .code, .msg_id)
    ├── BackendUnavailable       Redis or RabbitMQ cannot serve right now (unreachable,
    │                            read-only after a failover, out of memory, loading...)
    ├── BackendError             the backend refused a call for a reason a retry will not fix
    │   └── CorruptRecord        one stored record cannot be read (has .key); quarantine it
    ├── NotFound                 the thing asked for does not exist (pod, user, message)
    ├── SendError                a message could not be accepted for delivery
    │   └── QuotaExceeded        a limit on what clients may store refused it (has .limit)
    └── SubscribeError           a subscription was refused (has .code: the error frame's)

The Redis and RabbitMQ backends translate every error of their client library
at the boundary (``redis_conn.translated``, the bus's publish and session
code) and re-raise it ``from`` the original, so callers catch these classes
and never redis or aio_pika exceptions.
"""

from __future__ import annotations


class WsnodeError(Exception):
    """Root of every error raised by wsnode."""


class SettingsError(WsnodeError):
    """A setting has an invalid value. ``str(err)`` is one line naming it."""


class AuthError(WsnodeError):
    """A WebSocket handshake is refused before the upgrade."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ProtocolError(WsnodeError):
    """A client frame breaks the wire protocol; answered with an ``error`` frame."""

    def __init__(self, code: str, message: str, msg_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.msg_id = msg_id

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BackendUnavailable(WsnodeError):
    """A backend (Redis, RabbitMQ) is unreachable; the caller may retry later."""


class BackendError(WsnodeError):
    """A backend answered with an error that retrying the same call will not fix
    (a script bug, a command the server refuses). Background loops log it with
    its traceback and go on."""


class CorruptRecord(BackendError):
    """A stored record has the wrong type or unreadable fields. ``key`` names it,
    so the caller can move it aside (quarantine) and carry on without it."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"corrupt record {key}: {detail}")
        self.key = key
        self.detail = detail


class NotFound(WsnodeError):
    """The pod, user or message asked for does not exist."""


class SendError(WsnodeError):
    """A message was refused (bad envelope, reserved type, unroutable)."""


class QuotaExceeded(SendError):
    """A message relayed from a client was refused by a limit: ``limit`` is
    ``recipient`` (the recipient has too many pending messages from clients) or
    ``sender`` (the client has too many undelivered messages of its own)."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


class SubscribeError(WsnodeError):
    """A subscription to a topic was refused. ``code`` is the error code a client
    frame gets for it: ``bad_envelope`` (not a topic name), ``quota_exceeded``
    (the connection has MAX_SUBSCRIPTIONS_PER_CONNECTION topics), ``forbidden``
    (no authorizer, or it said no)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
