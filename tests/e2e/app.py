"""Handlers for end-to-end tests: ``wsnode serve --app tests.e2e.app``."""

from __future__ import annotations

import asyncio

from wsnode import Conn, Envelope, Node
from wsnode.examples import chat


def setup(node: Node) -> None:
    chat.setup(node)

    @node.on("echo")
    async def echo(conn: Conn, env: Envelope) -> None:
        await conn.send(Envelope(type="echo", payload=env.payload))

    @node.on("boom")
    async def boom(conn: Conn, env: Envelope) -> None:
        raise RuntimeError("kaboom")

    @node.on("slow")
    async def slow(conn: Conn, env: Envelope) -> None:
        await asyncio.sleep(float(env.payload["seconds"]))
        await conn.send(Envelope(type="slow_done"))

    @node.on("flood")
    async def flood(conn: Conn, env: Envelope) -> None:
        """Queue ``n`` frames of ``size`` bytes to this connection as fast as possible."""
        blob = "x" * int(env.payload["size"])
        for i in range(int(env.payload["n"])):
            if not await conn.send(Envelope(type="blob", payload={"i": i, "data": blob})):
                return
            if i % 64 == 0:
                await asyncio.sleep(0)  # let the writer run, as real traffic would

    @node.on("burst")
    async def burst(conn: Conn, env: Envelope) -> None:
        """Send ``n`` messages to user ``to`` from this pod, ACK-required unless
        ``ack`` is false, with ids ``<prefix><i>``: as the server (a test's tool for
        traffic from a pod), not relayed on the client's behalf."""
        p = env.payload
        for i in range(int(p["n"])):
            await node.send_to_user(p["to"], Envelope(
                type="burst", id=f"{p['prefix']}{i}", requires_ack=bool(p.get("ack", True)),
                payload={"i": i}), on_behalf_of=None)
