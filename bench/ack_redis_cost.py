"""What Redis spends on the ACK path, per message, without pods or clients.

On a private ``redis-server`` (its own port, so its ``INFO commandstats`` are
this run's alone), the ACK store of a pod stores ``--messages`` messages
relayed from 50 clients to 1,000 users (``RedisAcks.store``, 50 in flight,
coalesced as in a pod), settles them (``RedisAcks.settle``), and writes their
trails as two pods would: the sending pod's ``stored`` and ``routed`` events,
then the delivering pod's ``delivered`` and ``acked`` (``RedisTracer``). For
each phase: Redis's own time per message in the scripts (``EVALSHA``, which
includes the commands they run), in the commands, the difference (what the
Lua calls around the commands cost), and the commands per message. Redis's
networking (reading requests, writing replies) is not in these figures; the
closed loop's ``redis`` CPU has it. JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wsnode.acks import AckPolicy  # noqa: E402
from wsnode.acks_redis import RedisAcks  # noqa: E402
from wsnode.ids import MsgId, PodId, UserId  # noqa: E402
from wsnode.keys import RedisKeys  # noqa: E402
from wsnode.protocol import Envelope  # noqa: E402
from wsnode.trace_redis import RedisTracer  # noqa: E402

CHUNK = 1000


def figures(phase: str, stats: dict[str, Any], n: int) -> dict[str, Any]:
    script = stats.get("cmdstat_evalsha", {"usec": 0, "calls": 0})
    others = {k: v for k, v in stats.items() if k != "cmdstat_evalsha"
              and not k.startswith(("cmdstat_config", "cmdstat_script", "cmdstat_hello"))}
    commands = sum(v["usec"] for v in others.values())
    return {"bench": "ack_redis_cost", "phase": phase, "messages": n,
            "scripts_us_per_msg": round(script["usec"] / n, 1),
            "commands_us_per_msg": round(commands / n, 1),
            "lua_calls_us_per_msg": round((script["usec"] - commands) / n, 1),
            "scripts_per_msg": round(script["calls"] / n, 2),
            "commands_per_msg": round(sum(v["calls"] for v in others.values()) / n, 1)}


async def measure(port: int, n: int) -> list[dict[str, Any]]:
    r = aioredis.Redis(port=port, max_connections=200)
    keys = RedisKeys("bench")
    acks = RedisAcks(r, keys, AckPolicy(relayed_budget=10**6, relayed_max_pending=10**6))
    pod_a, pod_b = RedisTracer(r, keys), RedisTracer(r, keys)
    gate = asyncio.Semaphore(50)

    def user(i: int) -> UserId:
        return UserId(f"u{i % 1000}")

    def msg(i: int) -> MsgId:
        return MsgId(f"~bench.m{i}")

    async def store(i: int) -> None:
        async with gate:
            env = Envelope(type="chat_message", payload={"to": user(i), "text": "x" * 150},
                           id=msg(i), requires_ack=True)
            await acks.store(user(i), env, relayed_from=UserId(f"s{i % 50}"))

    async def settle(i: int) -> None:
        async with gate:
            await acks.settle(user(i), msg(i))

    rows = []
    for phase, step in (("store", store), ("settle", settle)):
        await r.config_resetstat()
        for at in range(0, n, CHUNK):
            await asyncio.gather(*(step(i) for i in range(at, at + CHUNK)))
        rows.append(figures(phase, await r.info("commandstats"), n))
    await r.config_resetstat()
    for at in range(0, n, CHUNK):
        for i in range(at, at + CHUNK):
            pod_a.record(msg(i), user(i), "stored", PodId("pod-a"), seq=i)
            pod_a.record(msg(i), user(i), "routed", PodId("pod-a"), pods=["pod-b"])
        await pod_a.flush()
        for i in range(at, at + CHUNK):
            pod_b.record(msg(i), user(i), "delivered", PodId("pod-b"), conn="c1")
            pod_b.record(msg(i), user(i), "acked", PodId("pod-b"), conn="c1")
        await pod_b.flush()
    rows.append(figures("trails", await r.info("commandstats"), n))
    await r.aclose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--messages", type=int, default=20_000)
    args = parser.parse_args()
    n = max(CHUNK, args.messages // CHUNK * CHUNK)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no", "--dir", tmp],
                                  stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            for row in asyncio.run(measure(port, n)):
                print(orjson.dumps(row).decode(), flush=True)
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
