"""Server side of ``local_push.py``: push M frames round-robin to N connected users.

``--mode wsnode``: a real Node (embedded backends, ``--insecure`` identity) and
``node.send_to_user`` in process. ``--mode bare``: a plain ``websockets`` server
that JSON-encodes and ``send``s the same frames, the machine's ceiling.
Both start pushing once N connections are open and print one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection, serve

from wsnode import Envelope, Node, load_settings


async def run_wsnode(port: int, n: int, m: int) -> tuple[float, float]:
    settings = load_settings(port=port, admin_port=0, rate_limit="0", log_level="WARNING",
                             send_queue_size="16MiB", pod_id="bench")
    async with Node(settings, insecure=True) as node:
        while len(node.hub) < n:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        users = [f"u{i}" for i in range(n)]
        wall, start = time.time(), time.perf_counter()
        for i in range(m):
            await node.send_to_user(users[i % n], Envelope(
                type="bench", payload={"i": i, "ts": time.time()}))
        elapsed = time.perf_counter() - start
        while any(c.queued_bytes for c in node.hub):
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)  # let the client finish counting before closing
        return wall, elapsed


async def run_bare(port: int, n: int, m: int) -> tuple[float, float]:
    conns: dict[str, ServerConnection] = {}
    ready = asyncio.Event()
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        user = parse_qs(urlsplit(ws.request.path).query)["user"][0]
        conns[user] = ws
        if len(conns) >= n:
            ready.set()
        await done.wait()

    async with serve(handler, "127.0.0.1", port, compression=None, max_size=65536):
        await ready.wait()
        await asyncio.sleep(0.5)
        users = [f"u{i}" for i in range(n)]
        wall, start = time.time(), time.perf_counter()
        for i in range(m):
            frame = orjson.dumps({"type": "bench", "payload": {"i": i, "ts": time.time()}})
            await conns[users[i % n]].send(frame, text=True)
        elapsed = time.perf_counter() - start
        await asyncio.sleep(1.0)
        done.set()
        return wall, elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["wsnode", "bare"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("-m", type=int, default=100_000)
    args = parser.parse_args()
    runner = run_wsnode if args.mode == "wsnode" else run_bare
    wall, elapsed = asyncio.run(runner(args.port, args.n, args.m))
    sys.stdout.write(orjson.dumps({"push_started": wall, "server_push_s": round(elapsed, 3)})
                     .decode() + "\n")


if __name__ == "__main__":
    main()
