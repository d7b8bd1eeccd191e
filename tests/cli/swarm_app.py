"""A pod app for swarm tests: ``--app tests.cli.swarm_app``.

``chat_message`` is handled (no ``unknown_type`` error) but goes nowhere, so
every chat message of the swarm is lost: what a broken route looks like.
"""

from __future__ import annotations

from wsnode import Conn, Envelope, Node


def setup(node: Node) -> None:
    @node.on("chat_message")
    async def swallow(conn: Conn, env: Envelope) -> None:
        return None
