"""A chat app: ``wsnode serve --app wsnode.examples.chat``.

A client frame ``{"type": "chat_message", "payload": {"to": "bob", ...}}`` is
delivered to every connection of user ``bob`` as ``{"type": "chat_message",
"payload": {<the same payload>, "from": "<sender's user id>"}}``. Every field of
the sender's payload passes through unchanged (the load tests put a send
timestamp there). A frame with ``requiresAck`` and an ``id`` is delivered
ACK-required (stored, resent until bob acks, at least once), and the sender
gets an ``ack`` frame once it is stored and routed.

The handler sends on the sender's behalf (``node.send_to_user`` inside a
handler does): bob gets the message under the sender's id scoped to the sender
(``~<digest>.<id>``), so no client can take an id the server or another client
will use, and what clients can store this way is bounded per recipient and per
sender (``WSNODE_RELAYED_MAX_PENDING``, ``WSNODE_RELAYED_BUDGET``).

It also has rooms (``join``, ``leave``, ``room_message``, and SDK subscriptions
to ``room:<name>`` topics): see :mod:`wsnode.examples.rooms`.
"""

from __future__ import annotations

from wsnode.errors import ProtocolError
from wsnode.examples import rooms
from wsnode.hub import Conn
from wsnode.node import Node
from wsnode.protocol import Envelope, ErrorCode

CHAT = "chat_message"


def setup(node: Node) -> None:
    rooms.setup(node)

    @node.on(CHAT)
    async def chat_message(conn: Conn, env: Envelope) -> None:
        payload = env.payload
        if not isinstance(payload, dict) or not isinstance(payload.get("to"), str) \
                or not payload["to"]:
            raise ProtocolError(ErrorCode.BAD_ENVELOPE,
                                "chat_message needs payload.to (a user id)", env.id)
        await node.send_to_user(payload["to"], Envelope(
            type=CHAT, payload={**payload, "from": conn.user}, id=env.id,
            requires_ack=env.requires_ack))
