"""A thin test client over ``websockets``: JSON frames, timeouts, typed waits."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

DEFAULT_TIMEOUT = 10.0


class Client:
    """One connected user. ``welcome`` and the first ``restore`` frame are read
    by :meth:`open` and kept as ``welcome``/``replayed``."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}
        self.replay: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, url: str, token: str | None = None, *, read_welcome: bool = True,
                   **kwargs: Any) -> Client:
        headers = kwargs.pop("additional_headers", {})
        if token is not None:
            headers = {**headers, "Authorization": f"Bearer {token}"}
        ws = await connect(url, additional_headers=headers, open_timeout=10, **kwargs)
        client = cls(ws)
        if read_welcome:
            client.welcome = await client.expect("welcome")
            while True:
                frame = await client.recv()
                if frame["type"] == "restore":
                    break
                client.replay.append(frame)
        return client

    @property
    def conn_id(self) -> str:
        return str(self.welcome["payload"]["connId"])

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        if isinstance(frame, dict):
            await self.ws.send(orjson.dumps(frame).decode())
        else:
            await self.ws.send(frame)

    async def recv(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            raw = await self.ws.recv()
        obj = orjson.loads(raw)
        assert isinstance(obj, dict)
        return obj

    async def expect(self, typ: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The next frame, which must be of type ``typ``."""
        frame = await self.recv(timeout)
        assert frame["type"] == typ, f"expected {typ!r}, got {frame}"
        return frame

    async def ack(self, msg_id: str) -> None:
        await self.send({"type": "ack", "payload": {"id": msg_id}})

    async def nothing_within(self, seconds: float) -> None:
        """Assert that no frame arrives for ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                frame = await self.ws.recv()
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame: {frame!r}")

    async def close(self) -> None:
        await self.ws.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
