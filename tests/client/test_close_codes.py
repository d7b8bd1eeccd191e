"""``wsnode.client.Client`` on the close codes no pod can be made to send on cue.

A pod never closes with 1008 today, and drains send one ``reconnect`` frame: a
scripted WebSocket peer on loopback plays the pod here, frame by frame, so the
client's reaction (tests/client/scenarios.json ``close``) is seen end to end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from wsnode.client import Client, Disconnected, State, StateChange

Script = Callable[[ServerConnection, int], Any]  # (connection, its 1-based number)


def frame(typ: str, payload: Any = None) -> str:
    return orjson.dumps({"type": typ, "payload": payload}).decode()


async def welcome(ws: ServerConnection, number: int) -> None:
    await ws.send(frame("welcome", {"connId": f"c{number}", "podId": "scripted",
                                    "userId": "u", "heartbeatMs": 20_000}))
    await ws.send(frame("restore", {"replayed": 0}))


@asynccontextmanager
async def scripted_pod(script: Script) -> AsyncIterator[tuple[str, list[int]]]:
    """A peer that runs ``script`` on every connection; yields its URL and the
    numbers of the connections it took."""
    taken: list[int] = []

    async def handler(ws: ServerConnection) -> None:
        taken.append(len(taken) + 1)
        await welcome(ws, taken[-1])
        await script(ws, taken[-1])

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws", taken


async def test_policy_close_stops_the_client_for_good() -> None:
    async def script(ws: ServerConnection, number: int) -> None:
        await ws.close(1008, "abuse")

    async with scripted_pod(script) as (url, taken):
        client = Client(url, token="t")
        changes: list[StateChange] = []
        client.on_state(changes.append)
        await client.connect()
        with pytest.raises(Disconnected) as stopped:
            async with asyncio.timeout(10):
                await client.recv()
        assert (stopped.value.code, stopped.value.reason) == (1008, "closed 1008 abuse")
        assert client.state is State.CLOSED and taken == [1]
        assert State.RECONNECTING not in {c.state for c in changes}
        await client.close()


async def test_a_repeated_reconnect_frame_is_not_a_message() -> None:
    async def script(ws: ServerConnection, number: int) -> None:
        if number == 1:
            for _ in range(2):
                await ws.send(frame("reconnect", {"reason": "drain", "retryAfterMs": 0}))
            await ws.send(frame("note", "after the drain notice"))
            await ws.close(1012, "pod draining: reconnect")
        else:
            await ws.send(frame("note", f"on connection {number}"))
            await ws.wait_closed()

    async with scripted_pod(script) as (url, taken):
        changes: list[StateChange] = []
        async with Client(url, token="t") as client:
            client.on_state(changes.append)
            async with asyncio.timeout(10):
                got = [(await client.recv()).payload for _ in range(2)]
        assert got == ["after the drain notice", "on connection 2"]
        assert taken == [1, 2]
        drained = [(c.reason, c.code) for c in changes if c.state is State.RECONNECTING]
        assert drained == [("drain", 1012)]
