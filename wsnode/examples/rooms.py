"""Chat rooms on topics: part of the chat example (``--app wsnode.examples.chat``).

A room ``NAME`` is the topic ``room:NAME``. Client frames:

* ``{"type": "join", "payload": {"room": "lobby"}}``: this connection joins the
  room (``node.subscribe``);
* ``{"type": "leave", "payload": {"room": "lobby"}}``: it leaves it;
* ``{"type": "room_message", "payload": {"room": "lobby", ...}}``: every
  connection in the room, on every pod, the sender's included, gets
  ``{"type": "room_message", "payload": {<the same payload>, "from": "<sender>"}}``
  (``node.publish``): at most once, like any publish; a connection that is
  not in the room gets ``forbidden``.

With ``requiresAck`` and an ``id`` each is answered ``ack`` once done (for a
``room_message``: published). SDK clients can call ``subscribe("room:lobby")``
instead of sending ``join``: the same rule authorizes it, and the SDK
subscribes again after a reconnect (a pod forgets a connection's rooms when it
closes; a raw client sends ``join`` again).

The rule (this example's own; an app writes its own ``authorize_subscribe``):

* a room name is 1-32 characters of ``[a-z0-9_-]`` (``bad_envelope``);
* when the token has a ``rooms`` claim (a list of names), only those rooms
  (``forbidden``); without one, any room;
* a connection is in at most :data:`MAX_ROOMS` rooms (``quota_exceeded``,
  ``limit`` ``rooms``);
* no other topic can be subscribed to by a client (``forbidden``).
"""

from __future__ import annotations

import re

from wsnode.errors import ProtocolError, QuotaExceeded, SubscribeError
from wsnode.hub import Conn
from wsnode.node import Node
from wsnode.protocol import Envelope, ErrorCode

JOIN, LEAVE, ROOM_MESSAGE = "join", "leave", "room_message"
ROOM_PREFIX = "room:"
ROOM_NAME = re.compile(r"[a-z0-9_-]{1,32}")
ROOM_RULE = "a room name is 1-32 characters of [a-z0-9_-]"
ROOMS_CLAIM = "rooms"
MAX_ROOMS = 10
"""Rooms one connection may be in at once."""


def room_topic(room: str) -> str:
    return ROOM_PREFIX + room


def rooms_of(node: Node, conn: Conn) -> set[str]:
    """The rooms ``conn`` is in (its ``room:*`` topics, however they were joined)."""
    return {t.removeprefix(ROOM_PREFIX) for t in node.subscriptions.topics_of(conn)
            if t.startswith(ROOM_PREFIX)}


def refusal(node: Node, conn: Conn, room: str) -> ProtocolError | QuotaExceeded | None:
    """Why ``conn`` may not join ``room`` (an error to raise), or None when it may."""
    if not ROOM_NAME.fullmatch(room):
        return ProtocolError(ErrorCode.BAD_ENVELOPE, f"{ROOM_RULE}: got {room!r:.40}")
    allowed = conn.claims.get(ROOMS_CLAIM)
    if allowed is not None and (not isinstance(allowed, list) or room not in allowed):
        return ProtocolError(ErrorCode.FORBIDDEN, f"the token does not allow room {room!r}")
    joined = rooms_of(node, conn)
    if room not in joined and len(joined) >= MAX_ROOMS:
        return QuotaExceeded("rooms", f"a connection may be in {MAX_ROOMS} rooms")
    return None


def setup(node: Node) -> None:
    @node.authorize_subscribe
    def may_subscribe(conn: Conn, topic: str) -> bool:
        """A client's ``subscribe``: room topics under the rule above, nothing else."""
        if not topic.startswith(ROOM_PREFIX):
            return False
        return refusal(node, conn, topic.removeprefix(ROOM_PREFIX)) is None

    @node.on(JOIN)
    async def join(conn: Conn, env: Envelope) -> None:
        room = _room(env)
        if (error := refusal(node, conn, room)) is not None:
            if isinstance(error, ProtocolError):
                error.msg_id = env.id
            raise error
        try:
            await node.subscribe(conn, room_topic(room))
        except SubscribeError as exc:  # the pod's own cap
            raise ProtocolError(exc.code, str(exc), env.id) from exc

    @node.on(LEAVE)
    async def leave(conn: Conn, env: Envelope) -> None:
        await node.unsubscribe(conn, room_topic(_room(env)))

    @node.on(ROOM_MESSAGE)
    async def room_message(conn: Conn, env: Envelope) -> None:
        room = _room(env)
        if room not in rooms_of(node, conn):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"join room {room!r} before posting "
                                "to it", env.id)
        assert isinstance(env.payload, dict)
        await node.publish(room_topic(room), Envelope(
            type=ROOM_MESSAGE, payload={**env.payload, "from": conn.user}))


def _room(env: Envelope) -> str:
    payload = env.payload
    room = payload.get("room") if isinstance(payload, dict) else None
    if not isinstance(room, str):
        raise ProtocolError(ErrorCode.BAD_ENVELOPE, f"'{env.type}' needs payload.room "
                            "(a room name)", env.id)
    return room
