"""Bench — what an acked chat message leaves in Redis (issue 12, the growth of an account).

``RELAYED_BUDGET`` caps what a client can keep stored through an app handler,
but a place comes back when the recipient acks: an attacker whose recipient is
its own second account sends at the rate limit instead. What each such message
leaves behind once acked is its idempotency record (an hour) and its trail
(``TRACE_TTL``); this measures both::

    .venv/bin/python bench/abuse_acked.py [--messages 500] [--text-bytes 100]

One pod (``wsnode serve --app wsnode.examples.chat``, cluster mode on the shared
Redis and RabbitMQ under a key prefix of this run alone, deleted at the end):
``mallory`` sends ``--messages`` ACK-required chat messages to ``bob``, who acks
each one; then the Redis bytes added under the prefix (``MEMORY USAGE``), split
into trails and the rest, per message. One JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from abuse_pod import PodProcess, cleanup
from cluster import AMQP_URL, REDIS_URL

ROOT = Path(__file__).resolve().parents[1]


async def usage(prefix: str) -> dict[str, int]:
    """Bytes (``MEMORY USAGE``) and keys under ``prefix``: trails apart."""
    import redis.asyncio as aioredis
    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
        sizes = [int(n or 0) for n in await pipe.execute()] if keys else []
    finally:
        await client.aclose()
    trail = [s for k, s in zip(keys, sizes, strict=True) if b"{tr:" in k]
    return {"keys": len(keys), "bytes": sum(sizes), "trail_keys": len(trail),
            "trail_bytes": sum(trail)}


async def run(args: argparse.Namespace) -> dict[str, object]:
    import jwt
    from websockets.asyncio.client import connect

    run_id = secrets.token_hex(4)
    prefix, secret = f"abuseack{run_id}", secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSNODE_")}
    env.update(WSNODE_POD_ID=f"{prefix}-pod", WSNODE_REDIS_URL=REDIS_URL,
               WSNODE_AMQP_URL=AMQP_URL, WSNODE_KEY_PREFIX=prefix, WSNODE_JWT_SECRET=secret,
               WSNODE_CLUSTER_SECRET=secrets.token_hex(32), WSNODE_RATE_LIMIT="0")
    log = Path(os.environ.get("WSNODE_BENCH_LOGS", "/tmp/wsnode-bench")) / f"{prefix}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    pod = PodProcess(ROOT, env, 1024, log)

    def url(user: str) -> str:
        token = jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, secret, "HS256")
        return f"ws://127.0.0.1:{pod.port}/ws?token={token}"

    try:
        await pod.ready()
        async with connect(url("mallory")) as mallory, connect(url("bob")) as bob:
            for ws in (mallory, bob):  # welcome, then the end of the (empty) replay
                while orjson.loads(await ws.recv())["type"] != "restore":
                    pass
            before = await usage(prefix)
            text = "t" * args.text_bytes

            async def send() -> None:
                for i in range(args.messages):
                    await mallory.send(orjson.dumps({
                        "type": "chat_message", "id": f"m-{i}", "requiresAck": True,
                        "payload": {"to": "bob", "text": text}}).decode())
                    if i % 16 == 15:  # within the pod's frame budget of stored ones
                        await asyncio.sleep(0.01)

            async def ack() -> None:
                acked = 0
                while acked < args.messages:
                    frame = orjson.loads(await bob.recv())
                    if frame["type"] == "chat_message":
                        await bob.send(orjson.dumps(
                            {"type": "ack", "payload": {"id": frame["id"]}}).decode())
                        acked += 1

            await asyncio.wait_for(asyncio.gather(send(), ack()), 120)
            await asyncio.sleep(2.0)  # the trail flusher writes within a second
            after = await usage(prefix)
    finally:
        pod.stop()
        await cleanup(prefix, f"{prefix}-pod")
        log.unlink(missing_ok=True)
    n = args.messages
    grown = {k: after[k] - before[k] for k in after}
    return {"bench": "abuse_acked", "messages": n, "text_bytes": args.text_bytes, **grown,
            "bytes_per_message": round(grown["bytes"] / n),
            "trail_bytes_per_message": round(grown["trail_bytes"] / n),
            "other_bytes_per_message": round((grown["bytes"] - grown["trail_bytes"]) / n)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--text-bytes", type=int, default=100)
    print(orjson.dumps(asyncio.run(run(parser.parse_args()))).decode())


if __name__ == "__main__":
    main()
