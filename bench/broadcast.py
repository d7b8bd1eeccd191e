"""Broadcast to every connection: 10,000 connections over 2 pods, real Redis and RabbitMQ.

Two ``wsnode serve`` pods in cluster mode (the chat example app) each hold half
of ``--connections`` idle connections of distinct users, opened from this
process with the raw client of ``wsload.py``. Then, ``--broadcasts`` times, one
``POST /v1/broadcast`` to pod A's admin API, and the time from that call to the
frame that reached the last connection (every connection counts its text
frames, so no frame is decoded), with the CPU time each pod spent meanwhile
(``/proc/<pid>/stat``). A broadcast that does not reach every connection
exactly once within ``--timeout`` seconds is reported as missing or doubled.
Bounded in time; the pods are killed by pid and the run's keys deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import Pod, cluster
from wsload import Conn, open_conns

API_KEY = "bench-broadcast-api-key-0123"
FIRST_FRAMES = 2  # welcome, then the replay's restore


async def run(a: Pod, b: Pod, *, connections: int, broadcasts: int,
              timeout: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    target = FIRST_FRAMES
    reached = 0
    last_at = 0.0
    everyone: asyncio.Future[None] = loop.create_future()

    def on_message(conn: Conn, _payload: bytes | None) -> None:
        nonlocal reached, last_at
        if conn.count == target:
            reached += 1
            if reached == connections:
                last_at = time.perf_counter()
                if not everyone.done():
                    everyone.set_result(None)

    half = connections // 2
    paths = [f"/ws?user=bc{i}" for i in range(connections)]
    opened = time.perf_counter()
    conns = [*await open_conns("127.0.0.1", a.port, paths[:half], on_message, sample=10**9,
                               parallel=500),
             *await open_conns("127.0.0.1", b.port, paths[half:], on_message,
                               sample=10**9, parallel=500)]
    await asyncio.wait_for(everyone, timeout)
    open_s = time.perf_counter() - opened
    await asyncio.sleep(2.0)  # presence and the pods' membership of the cluster settle

    rows: list[dict[str, float]] = []
    missing = doubled = 0
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for k in range(1, broadcasts + 1):
            target, reached = FIRST_FRAMES + k, 0
            everyone = loop.create_future()
            cpu = [a.cpu_seconds(), b.cpu_seconds()]
            started = time.perf_counter()
            async with http.post(f"{a.admin_url}/v1/broadcast", json={"envelope": {
                    "type": "bench_broadcast", "payload": {"n": k, "ts": time.time()}}}) as r:
                answer = await r.json()
                if r.status != 200:
                    raise RuntimeError(f"POST /v1/broadcast: {r.status} {answer}")
            api_s = time.perf_counter() - started
            try:
                await asyncio.wait_for(everyone, timeout)
            except TimeoutError:
                last_at = time.perf_counter()
            used = [a.cpu_seconds() - cpu[0], b.cpu_seconds() - cpu[1]]
            counts = [c.count - FIRST_FRAMES for c in conns]
            missing += sum(k - n for n in counts if n < k)
            doubled += sum(n - k for n in counts if n > k)
            rows.append({"last_ms": (last_at - started) * 1000, "api_ms": api_s * 1000,
                         "cpu_a_ms": used[0] * 1000, "cpu_b_ms": used[1] * 1000})
            await asyncio.sleep(1.0)  # the pods go idle again before the next one
    for c in conns:
        if c.transport is not None:
            c.transport.close()

    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 1)

    return {"bench": "broadcast", "pods": 2, "connections": connections,
            "broadcasts": broadcasts, "open_s": round(open_s, 2),
            "last_delivery_ms": med("last_ms"),
            "last_delivery_ms_max": round(max(r["last_ms"] for r in rows), 1),
            "api_ms": med("api_ms"), "cpu_ms_pod_a": med("cpu_a_ms"),
            "cpu_ms_pod_b": med("cpu_b_ms"), "missing": missing, "doubled": doubled}


async def one(args: argparse.Namespace) -> dict[str, object]:
    async with asyncio.timeout(args.deadline), \
            cluster(["bench-a", "bench-b"], WSNODE_API_KEY=API_KEY) as (a, b):
        return await run(a, b, connections=args.connections, broadcasts=args.broadcasts,
                         timeout=args.timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--connections", type=int, default=10_000)
    parser.add_argument("--broadcasts", type=int, default=5, help="broadcasts per run")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds one broadcast (or the opening) may take")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds per run, all in")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for _ in range(args.runs):
        row = asyncio.run(one(args))
        print(orjson.dumps(row).decode(), flush=True)
        rows.append(row)

    def med(key: str) -> float:
        return statistics.median(float(r[key]) for r in rows)  # type: ignore[arg-type]

    print(orjson.dumps({
        "bench": "broadcast", "summary": True, "runs": args.runs,
        "connections": args.connections, "last_delivery_ms_median": med("last_delivery_ms"),
        "api_ms_median": med("api_ms"), "cpu_ms_pod_a_median": med("cpu_ms_pod_a"),
        "cpu_ms_pod_b_median": med("cpu_ms_pod_b"),
        "missing": sum(int(r["missing"]) for r in rows),  # type: ignore[call-overload]
        "doubled": sum(int(r["doubled"]) for r in rows),  # type: ignore[call-overload]
    }).decode(), flush=True)


if __name__ == "__main__":
    main()
