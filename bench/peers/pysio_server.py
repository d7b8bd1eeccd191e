"""The python-socketio peer of ``bench/closed_loop.py``: one process of a cluster
sharing rooms through ``AsyncRedisManager``, the setup python-socketio documents
for several servers (aiohttp, the asyncio server it supports without extras).

    python bench/peers/pysio_server.py --redis redis://127.0.0.1:6379/0 --channel C

A client connects with ``?user=NAME`` and joins the room NAME; an event
``["chat_message", {to, ...}]`` goes to every connection of user ``to`` on any
process as ``["chat_message", {...the same payload, "from": <sender>}]``.
Prints ``listening PORT`` once it serves.

Tuning, so that the peer is measured at its best rather than at its defaults:
the manager's Redis client draws from a *blocking* pool of ``--pool``
connections (the default pool opens a new connection for every concurrent
publish under load, hundreds of them), and JSON goes through orjson.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any
from urllib.parse import parse_qs

import orjson
import redis.asyncio as aioredis
import socketio
from aiohttp import web


class OrjsonModule:
    """The ``json`` module interface python-socketio calls (``dumps`` -> str)."""

    @staticmethod
    def dumps(obj: Any, **_: Any) -> str:
        return orjson.dumps(obj).decode()

    @staticmethod
    def loads(text: str | bytes, **_: Any) -> Any:
        return orjson.loads(text)


class PooledRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    """``AsyncRedisManager`` on a blocking pool of ``pool`` connections (its
    ``redis_options`` cannot choose the pool class of the asyncio client)."""

    def __init__(self, url: str, channel: str, pool: int) -> None:
        super().__init__(url, channel=channel)
        self.pool_size = pool

    def _redis_connect(self) -> None:
        self.redis = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            self.redis_url, max_connections=self.pool_size))
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.connected = True


async def serve(args: argparse.Namespace) -> None:
    # "none": one process alone, rooms in memory (the load client's own tests).
    manager = (PooledRedisManager(args.redis, args.channel, args.pool)
               if args.redis != "none" else None)
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=manager,
                               transports=["websocket"], json=OrjsonModule,
                               cors_allowed_origins="*")
    users: dict[str, str] = {}

    @sio.event  # type: ignore[untyped-decorator]
    async def connect(sid: str, environ: dict[str, Any]) -> None:
        user = parse_qs(environ.get("QUERY_STRING", "")).get("user", [""])[0]
        users[sid] = user
        await sio.enter_room(sid, user)

    @sio.event  # type: ignore[untyped-decorator]
    async def disconnect(sid: str, *_: Any) -> None:
        users.pop(sid, None)

    @sio.event  # type: ignore[untyped-decorator]
    async def chat_message(sid: str, payload: Any) -> None:
        if isinstance(payload, dict) and isinstance(payload.get("to"), str) and payload["to"]:
            await sio.emit("chat_message", {**payload, "from": users.get(sid, "")},
                           to=payload["to"])

    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    port = runner.addresses[0][1]
    print(f"listening {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0",
                        help="Redis URL, or none for one process alone")
    parser.add_argument("--channel", default="socketio")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--pool", type=int, default=32, help="Redis connections per process")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
