"""Wire protocol v1: the envelope, reserved types, error and close codes.

Pure: no I/O. Frames are UTF-8 JSON objects (DESIGN §2); field names are those
of the Go ``engine/transport/ws`` package so its clients work unchanged.

Contract of :func:`parse_client_frame`: it either returns a valid
:class:`Envelope` or raises :class:`~wsnode.errors.ProtocolError` whose ``code``
is one of :class:`ErrorCode` and whose ``msg_id`` is the frame's ``id`` when one
could be read, so the error frame can name the offending message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import orjson

from wsnode.errors import ProtocolError

TYPE_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_GOOD_TYPES: set[str] = set()  # types that matched TYPE_PATTERN, for the hot path


def valid_type(typ: str) -> bool:
    """``TYPE_PATTERN.fullmatch(typ)``, remembered: a pod sees few distinct types,
    and checks one per frame in and per message out. Bounded: past 4,096 types
    it stops remembering new ones."""
    if typ in _GOOD_TYPES:
        return True
    if TYPE_PATTERN.fullmatch(typ) is None:
        return False
    if len(_GOOD_TYPES) < 4096:
        _GOOD_TYPES.add(typ)
    return True
MAX_ID_LENGTH = 128
# Ids the server sends may be longer: a message relayed from a client carries the
# client's id behind a prefix naming its sender (``wsnode.sender.relayed_id``).
# A client may ack any id it got.
MAX_SERVER_ID_LENGTH = 160
MAX_CLOSE_REASON_BYTES = 123


class ErrorCode(StrEnum):
    """``payload.code`` of an ``error`` frame."""

    BAD_JSON = "bad_json"
    BAD_ENVELOPE = "bad_envelope"
    UNKNOWN_TYPE = "unknown_type"
    # An ``ack`` naming an id this user has no record of (never stored, or its
    # record expired). Not in DESIGN §2's list: a duplicate ack of a settled id
    # is silent, but a client acking ids it never got deserves to hear so.
    UNKNOWN_ID = "unknown_id"
    # A ``ping`` frame too large to be echoed (frames over MAX_MESSAGE_BYTES
    # close the connection with 1009 instead).
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    HANDLER_ERROR = "handler_error"
    # A message relayed from a client was refused by a limit on what clients may
    # store (the recipient's pending messages from clients, or the sender's own).
    QUOTA_EXCEEDED = "quota_exceeded"
    # A ``subscribe`` or ``unsubscribe`` the server does not allow: the app
    # registered no authorizer (the default), or its authorizer said no.
    FORBIDDEN = "forbidden"
    INTERNAL = "internal"


class CloseCode(IntEnum):
    """WebSocket close codes used by the server."""

    NORMAL = 1000
    GOING_AWAY = 1001  # pod shutting down
    POLICY = 1008  # origin, abuse
    TOO_BIG = 1009
    INTERNAL = 1011
    DRAIN = 1012  # reconnect elsewhere
    TOKEN_EXPIRED = 4401
    SLOW_CONSUMER = 4408


class Reserved(StrEnum):
    """Types with a meaning in the protocol itself; handlers cannot take them."""

    WELCOME = "welcome"
    ACK = "ack"
    ERROR = "error"
    RESTORE = "restore"
    PING = "ping"
    PONG = "pong"
    RECONNECT = "reconnect"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"


RESERVED_TYPES = frozenset(t.value for t in Reserved)
# Client frames that the rate limiter never counts: they only settle or ask
# for what the server already owes the client.
UNCOUNTED_TYPES = frozenset({Reserved.ACK.value, Reserved.PING.value, Reserved.RESTORE.value})


@dataclass(slots=True)
class Envelope:
    """One message, as carried on the wire.

    ``seq`` is set by the server on ACK-required messages it delivers; it is
    ignored on client frames.
    """

    type: str
    payload: Any = None
    id: str | None = None
    requires_ack: bool = False
    expires_at: int | None = None
    seq: int | None = None

    def copy(self, *, id: str | None, requires_ack: bool, seq: int | None) -> Envelope:
        """A copy with these three fields: what ``dataclasses.replace`` makes at a
        fifth of its cost (the send path makes two per ACK-required message)."""
        return Envelope(self.type, self.payload, id, requires_ack, self.expires_at, seq)

    def to_wire(self) -> dict[str, Any]:
        """The envelope as a JSON-ready dict with wire field names."""
        out: dict[str, Any] = {"type": self.type, "payload": self.payload}
        if self.id is not None:
            out["id"] = self.id
        if self.requires_ack:
            out["requiresAck"] = True
        if self.expires_at is not None:
            out["expiresAt"] = self.expires_at
        if self.seq is not None:
            out["seq"] = self.seq
        return out

    def encode(self) -> bytes:
        """UTF-8 JSON bytes of :meth:`to_wire`."""
        return orjson.dumps(self.to_wire())

    @classmethod
    def from_wire(cls, obj: Any) -> Envelope:
        """Validate a decoded JSON value as an envelope (see module contract)."""
        if not isinstance(obj, dict):
            raise ProtocolError(ErrorCode.BAD_ENVELOPE, "a frame must be a JSON object")
        raw_id = obj.get("id")
        msg_id = raw_id if isinstance(raw_id, str) else None
        # An ack names an id the server sent, which may be longer than a client's own.
        longest = MAX_SERVER_ID_LENGTH if obj.get("type") == Reserved.ACK else MAX_ID_LENGTH
        if raw_id is not None and (
            not isinstance(raw_id, str) or not 0 < len(raw_id) <= longest
        ):
            raise ProtocolError(
                ErrorCode.BAD_ENVELOPE,
                f"'id' must be a non-empty string of at most {longest} characters",
            )
        typ = obj.get("type")
        if not isinstance(typ, str) or not valid_type(typ):
            raise ProtocolError(
                ErrorCode.BAD_ENVELOPE,
                "'type' must be 1-64 characters of [A-Za-z0-9_.:-]",
                msg_id,
            )
        requires_ack = obj.get("requiresAck", False)
        if not isinstance(requires_ack, bool):
            raise ProtocolError(ErrorCode.BAD_ENVELOPE, "'requiresAck' must be a boolean", msg_id)
        if requires_ack and msg_id is None:
            raise ProtocolError(ErrorCode.BAD_ENVELOPE, "'requiresAck' needs an 'id'")
        expires_at = obj.get("expiresAt")
        if expires_at is not None and (
            isinstance(expires_at, bool) or not isinstance(expires_at, int) or expires_at < 0
        ):
            raise ProtocolError(
                ErrorCode.BAD_ENVELOPE, "'expiresAt' must be epoch milliseconds", msg_id
            )
        return cls(
            type=typ,
            payload=obj.get("payload"),
            id=msg_id,
            requires_ack=requires_ack,
            expires_at=expires_at,
        )


def parse_client_frame(data: str | bytes) -> Envelope:
    """Decode and validate one text frame from a client."""
    if isinstance(data, bytes):
        raise ProtocolError(
            ErrorCode.BAD_ENVELOPE, "binary frames are not accepted: send UTF-8 JSON text"
        )
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"invalid JSON: {exc.msg}") from exc
    return Envelope.from_wire(obj)


def ack_target(env: Envelope) -> str | None:
    """The id a client ``ack`` settles: ``payload.id``, else the top-level ``id``."""
    payload = env.payload
    if isinstance(payload, dict):
        pid = payload.get("id")
        if isinstance(pid, str) and 0 < len(pid) <= MAX_SERVER_ID_LENGTH:
            return pid
    return env.id


def topic_of(env: Envelope) -> str:
    """``payload.topic`` of a client ``subscribe`` or ``unsubscribe`` (a string;
    the name itself is checked by the subscriptions)."""
    payload = env.payload
    topic = payload.get("topic") if isinstance(payload, dict) else None
    if not isinstance(topic, str):
        raise ProtocolError(ErrorCode.BAD_ENVELOPE,
                            f"'{env.type}' needs payload.topic (a string)", env.id)
    return topic


def restore_since(env: Envelope) -> int | None:
    """``payload.since`` of a client ``restore`` (epoch ms), if given and valid."""
    payload = env.payload
    if isinstance(payload, dict):
        since = payload.get("since")
        if isinstance(since, int) and not isinstance(since, bool):
            return since
        if since is not None:
            raise ProtocolError(
                ErrorCode.BAD_ENVELOPE, "'payload.since' must be epoch milliseconds", env.id
            )
    elif payload is not None:
        raise ProtocolError(ErrorCode.BAD_ENVELOPE, "'restore' payload must be an object", env.id)
    return None


def control_frame(typ: Reserved, payload: Any, msg_id: str | None = None) -> bytes:
    """Encode a server-originated frame of a reserved type."""
    out: dict[str, Any] = {"type": typ.value, "payload": payload}
    if msg_id is not None:
        out["id"] = msg_id
    return orjson.dumps(out)


def error_frame(
    code: str, message: str, msg_id: str | None = None, **extra: Any
) -> bytes:
    """Encode an ``error`` frame: ``{"type":"error","id":..,"payload":{code,message,..}}``."""
    return control_frame(Reserved.ERROR, {"code": code, "message": message, **extra}, msg_id)


_FRAME_START = b'{"type":"'


def deliverable(frame: bytes) -> bool:
    """Whether ``frame`` may go to a client from the bus: text a pod built (UTF-8
    JSON starting with a ``type`` that is not reserved). Every frame a pod
    publishes is ``Envelope.encode``'s, whose first key is ``type``; a reserved
    type can only be forged (``check_outgoing`` refuses them), and a client
    must never get a fake ``welcome`` or ``reconnect``. Cheap: no JSON parse."""
    if not frame.startswith(_FRAME_START):
        return False
    end = frame.find(b'"', len(_FRAME_START))
    if end < 0:
        return False
    typ = frame[len(_FRAME_START):end]
    try:
        name = typ.decode("ascii")
        frame.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return name not in RESERVED_TYPES and valid_type(name)


def close_reason(text: str) -> str:
    """Trim a close reason to the 123 bytes a close frame can carry."""
    raw = text.encode()
    if len(raw) <= MAX_CLOSE_REASON_BYTES:
        return text
    return raw[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")
