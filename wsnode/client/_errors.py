"""Errors raised by :class:`wsnode.client.Client` (tree in the package docstring)."""

from __future__ import annotations

from typing import Any

from wsnode.errors import WsnodeError


class ClientError(WsnodeError):
    """Root of every error the client raises."""


class ConnectError(ClientError):
    """No connection could be made: every URL failed once on the first connect.

    ``__cause__`` is the last failure (``OSError``, ``TimeoutError``, a
    websockets handshake error).
    """


class HandshakeRefused(ConnectError):
    """A pod answered the handshake with an HTTP status instead of upgrading.

    401 (no, bad or expired token) and 403 (origin refused) are final: retrying
    cannot help. Other statuses (503 from a draining pod, 502 from a balancer)
    are retried and only surface from the first connect.
    """

    def __init__(self, status: int, url: str, body: str = "") -> None:
        detail = f": {body.strip()}" if body.strip() else ""
        super().__init__(f"handshake refused by {url} with HTTP {status}{detail}")
        self.status = status
        self.url = url
        self.body = body


class ServerError(ClientError):
    """An ``error`` frame from the server (DESIGN §2).

    ``code`` is ``payload.code`` (``unknown_type``, ``handler_error``, ...),
    ``id`` the id of the offending client message when the server named one,
    ``payload`` the whole error payload (extra fields such as ``retryAfterMs``).
    """

    def __init__(self, code: str, message: str, id: str | None = None,
                 payload: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (id {id!r})" if id else ""))
        self.code = code
        self.message = message
        self.id = id
        self.payload: dict[str, Any] = payload or {}

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> ServerError:
        payload = frame.get("payload")
        body = payload if isinstance(payload, dict) else {}
        code = str(body.get("code", "internal"))
        message = str(body.get("message", ""))
        raw_id = frame.get("id")
        msg_id = raw_id if isinstance(raw_id, str) else None
        if code == "rate_limited":
            return RateLimited(code, message, msg_id, body)
        return cls(code, message, msg_id, body)


class RateLimited(ServerError):
    """``rate_limited``: wait ``retry_after`` seconds before sending again."""

    @property
    def retry_after(self) -> float:
        raw = self.payload.get("retryAfterMs", 0)
        return max(0.0, float(raw)) / 1000 if isinstance(raw, int | float) else 0.0


class AckTimeout(ClientError):
    """``send(..., require_ack=True)`` saw no ``ack`` from the server in time.

    The message may still have been handled: a later resend with the same
    ``id`` is how to retry without guessing.
    """

    def __init__(self, msg_id: str, timeout: float) -> None:
        super().__init__(f"no ack for {msg_id!r} within {timeout:g}s")
        self.id = msg_id
        self.timeout = timeout


class Disconnected(ClientError):
    """The server closed the connection for a reason no reconnect can fix (1008:
    policy, such as abuse); the client stopped. ``code`` and ``reason`` are the
    close frame's, ``url`` the connection's."""

    def __init__(self, code: int | None, reason: str, url: str | None = None) -> None:
        where = f" by {url}" if url else ""
        super().__init__(f"disconnected for good{where}: {reason}")
        self.code = code
        self.reason = reason
        self.url = url


class ClientClosed(ClientError):
    """The client was closed (by :meth:`Client.close`) before the call finished."""


class NotConnected(ClientError):
    """A message without ACK could not be written: no connection within the timeout."""
