"""The client's pure parts: messages, states, the dedup window, backoff, frames.

No I/O here; :mod:`wsnode.client._client` is the asyncio adapter around them.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

import orjson

DEFAULT_DEDUP_WINDOW = 1024

# Close codes the client reacts to (DESIGN §2).
CLOSE_ABNORMAL = 1006  # what a connection lost without a close frame reports
CLOSE_POLICY = 1008
CLOSE_DRAIN = 1012
CLOSE_TOKEN_EXPIRED = 4401


class State(StrEnum):
    """Where a client is; every change is reported as a :class:`StateChange`."""

    IDLE = "idle"                  # made, not connected yet
    CONNECTING = "connecting"      # handshake and welcome in progress
    CONNECTED = "connected"        # welcome and the replay's ``restore`` frame seen
    RECONNECTING = "reconnecting"  # lost a connection; waiting ``delay`` before the next try
    CLOSED = "closed"              # closed by the app, or stopped by a final error


@dataclass(frozen=True, slots=True)
class StateChange:
    """One state transition.

    ``reason`` says why a connection ended (``"drain"``, ``"closed 1001 ..."``,
    ``"refused 503"``, ``"token expired"``, ...); ``code`` is the close code or
    HTTP status behind it. ``delay`` is the wait before the next attempt
    (RECONNECTING), ``attempt`` the count of consecutive failures, ``replayed``
    how many pending messages the pod replayed on connect (CONNECTED).
    """

    state: State
    url: str | None = None
    pod: str | None = None
    conn_id: str | None = None
    reason: str = ""
    code: int | None = None
    delay: float | None = None
    attempt: int = 0
    replayed: int | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """A message from the server to this user.

    ACK-required messages (``requires_ack``) carry ``id`` and the per-user
    ``seq``; they are acked for the app (see :class:`~wsnode.client.Client`).
    """

    type: str
    payload: Any = None
    id: str | None = None
    seq: int | None = None
    requires_ack: bool = False
    expires_at: int | None = None

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> Message:
        raw_id, seq, expires = frame.get("id"), frame.get("seq"), frame.get("expiresAt")
        return cls(
            type=str(frame.get("type")),
            payload=frame.get("payload"),
            id=raw_id if isinstance(raw_id, str) else None,
            seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
            requires_ack=frame.get("requiresAck") is True and isinstance(raw_id, str),
            expires_at=expires if isinstance(expires, int) and not isinstance(expires, bool)
            else None,
        )


class Verdict(Enum):
    """What to do with an ACK-required message, by its id."""

    NEW = "new"        # deliver to the app
    REACK = "reack"    # already handled: ack again (the first ack may be lost), do not deliver
    HOLD = "hold"      # the app has it and has not finished: drop this copy silently


class DedupWindow:
    """The ids of the last ``size`` ACK-required messages given to the app.

    The server resends an unacked message with the same ``id`` (on a timer,
    on reconnect, on ``restore``); the window makes the app see it once.
    """

    def __init__(self, size: int = DEFAULT_DEDUP_WINDOW) -> None:
        if size < 1:
            raise ValueError("the dedup window holds at least one id")
        self.size = size
        self._ids: OrderedDict[str, bool] = OrderedDict()  # id -> handled

    def check(self, msg_id: str) -> Verdict:
        """Classify a delivery of ``msg_id``; a NEW id is remembered as in progress."""
        handled = self._ids.get(msg_id)
        if handled is None:
            self._ids[msg_id] = False
            while len(self._ids) > self.size:
                self._ids.popitem(last=False)
            return Verdict.NEW
        return Verdict.REACK if handled else Verdict.HOLD

    def handled(self, msg_id: str) -> None:
        """The app is done with ``msg_id`` (it was acked)."""
        if msg_id in self._ids:
            self._ids[msg_id] = True

    def forget(self, msg_id: str) -> None:
        """Drop ``msg_id`` so that its next delivery counts as new."""
        self._ids.pop(msg_id, None)

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


class Subscriptions:
    """The topics a client wants on every connection, in the order first asked.

    A server forgets a connection's subscriptions when it closes, so the client
    subscribes to every wanted topic again on each new connection (after
    ``welcome``). A topic is wanted from :meth:`add` until :meth:`remove`, or
    until the server refuses it (``forbidden``...): then the client removes it.
    """

    def __init__(self) -> None:
        self._topics: dict[str, None] = {}  # insertion order is the order to re-send

    def add(self, topic: str) -> bool:
        """Want ``topic``; True when it was not wanted yet (a frame is due).

        Raises ValueError unless ``topic`` is a non-empty string: what else
        a name may hold is the server's rule, and a bad one is refused by it.
        """
        if not isinstance(topic, str) or not topic:
            raise ValueError("a topic is a non-empty string")
        if topic in self._topics:
            return False
        self._topics[topic] = None
        return True

    def remove(self, topic: str) -> bool:
        """Stop wanting ``topic``; True when it was wanted."""
        if topic not in self._topics:
            return False
        del self._topics[topic]
        return True

    @property
    def topics(self) -> tuple[str, ...]:
        """Every wanted topic, oldest first: what a new connection subscribes to."""
        return tuple(self._topics)

    def __contains__(self, topic: object) -> bool:
        return topic in self._topics

    def __len__(self) -> int:
        return len(self._topics)


def topic_frame(op: str, topic: str, frame_id: str) -> str:
    """A ``subscribe`` or ``unsubscribe`` frame; the pod answers with a frame of the
    same type, or an ``error``, naming ``frame_id``."""
    return encode({"type": op, "id": frame_id, "payload": {"topic": topic}})


class Backoff:
    """Exponential backoff with full jitter: ``uniform(0, min(cap, base * 2**attempt))``."""

    def __init__(self, base: float = 0.2, cap: float = 10.0,
                 rng: Callable[[], float] = random.random) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self._rng = rng

    def ceiling(self, attempt: int) -> float:
        return min(self.cap, self.base * 2.0 ** min(attempt, 32))

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (0-based) is retried."""
        return self._rng() * self.ceiling(attempt)


def encode(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


def decode(raw: str | bytes) -> dict[str, Any] | None:
    """A server frame as a dict, or None when it is not a JSON object with a type."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        return None
    return obj


def ack_frame(msg_id: str) -> str:
    return encode({"type": "ack", "payload": {"id": msg_id}})


def message_frame(typ: str, payload: Any, msg_id: str | None, require_ack: bool,
                  expires_at: int | None = None) -> str:
    frame: dict[str, Any] = {"type": typ, "payload": payload}
    if msg_id is not None:
        frame["id"] = msg_id
    if require_ack:
        frame["requiresAck"] = True
    if expires_at is not None:
        frame["expiresAt"] = expires_at
    return encode(frame)


@dataclass(frozen=True, slots=True)
class DrainHint:
    """A pod's ``reconnect`` frame: move to the next URL after ``delay`` seconds."""

    reason: str
    delay: float

    @classmethod
    def from_payload(cls, payload: Any) -> DrainHint:
        """``reason`` is a non-empty string (else ``"drain"``); ``retryAfterMs`` a
        number (else 0), never below 0."""
        body = payload if isinstance(payload, dict) else {}
        reason, retry = body.get("reason"), body.get("retryAfterMs")
        if not isinstance(retry, int | float) or isinstance(retry, bool) or retry != retry:
            retry = 0
        return cls(reason if isinstance(reason, str) and reason else "drain",
                   max(0.0, float(retry)) / 1000)


@dataclass(frozen=True, slots=True)
class Ending:
    """What the end of a connection means to the client.

    ``reason`` and ``code`` (None when no close frame came) are reported in the
    state change. A drain (``drain_delay`` set, seconds) moves to the next URL
    after that delay and starts the attempt count over; a ``final`` end stops
    the client; any other end reconnects after a backoff delay.
    """

    reason: str
    code: int | None
    drain_delay: float | None = None
    final: bool = False


def ending(code: int | None, reason: str, hint: DrainHint | None) -> Ending:
    """How a connection closed with ``code`` and ``reason`` ends, after the pod's
    ``reconnect`` frame ``hint`` if one came (DESIGN §2 close codes).

    1008 (policy: origin, abuse) is final, as the 403 of a refused origin is at
    the handshake: reconnecting cannot help and would only repeat the offence.
    Every other end reconnects: 4401 with a fresh token from the provider (a
    fixed token is then refused with a final 401), 4408 and 1001 elsewhere.
    """
    if code == CLOSE_ABNORMAL:
        code = None
    if hint is not None:
        return Ending(hint.reason, code, hint.delay)
    if code == CLOSE_DRAIN:
        return Ending("drain", code, 0.0)
    if code == CLOSE_TOKEN_EXPIRED:
        return Ending("token expired", code)
    if code is None:
        return Ending("connection lost", None)
    return Ending(f"closed {code}" + (f" {reason}" if reason else ""), code,
                  final=code == CLOSE_POLICY)
