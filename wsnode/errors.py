"""The exception tree of wsnode.

::

    WsnodeError                  root: catch this to catch everything we raise
    ├── SettingsError            a WSNODE_* value is invalid (message names it)
    ├── AuthError                a handshake is refused (has .status: 401 or 403)
    ├── ProtocolError            a client frame is invalid (has .code, .msg_id)
    ├── BackendUnavailable       Redis or RabbitMQ cannot be reached right now
    ├── NotFound                 the thing asked for does not exist (pod, user, message)
    └── SendError                a message could not be accepted for delivery

Third-party errors are translated at the boundary and re-raised ``from`` the
original, so callers never need to import redis or aio_pika exceptions.
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


class NotFound(WsnodeError):
    """The pod, user or message asked for does not exist."""


class SendError(WsnodeError):
    """A message was refused (bad envelope, reserved type, unroutable)."""
