"""Handlers for the topics end-to-end tests: ``wsnode serve --app tests.e2e.topics_app``.

No ``authorize_subscribe`` on purpose: clients' own subscribe frames are
refused, and topics come from the token's ``topics`` claim or from the app.
"""

from __future__ import annotations

from wsnode import Conn, Envelope, Node


def setup(node: Node) -> None:
    @node.on("leave")
    async def leave(conn: Conn, env: Envelope) -> None:
        """The app's own rule: a client may leave any topic it is in."""
        await node.unsubscribe(conn, str(env.payload["topic"]))
