"""Publish to a topic: 1,000 subscribers over 2 pods, real Redis and RabbitMQ.

Two ``wsnode serve`` pods in cluster mode (the chat example app, which lets a
connection subscribe to ``room:<name>`` topics) each hold half of
``--subscribers`` connections, opened from this process with the raw client of
``wsload.py``; each sends a ``subscribe`` frame for ``room:bench`` and waits for
its answer. Then a closed loop publishes with ``POST /v1/publish`` to the pods'
admin APIs in turn, at most ``--in-flight`` publishes not yet delivered
everywhere at any moment, for ``--seconds``. A publish is delivered when every
subscriber has received as many frames as there were publishes up to it
(frames are counted, not decoded). Figures: publishes per second delivered to
every subscriber (and the deliveries per second that makes), the time from a
publish's call to its last delivery, the CPU time of each pod (and with
``--breakdown``, single calls timed by where the subscribers are). At most once by
design: a publish that misses a subscriber stalls the loop, which then ends
at ``--timeout`` and reports it. Bounded in time; pods killed by pid.
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
from wsload import Conn, open_conns, percentiles

API_KEY = "bench-topics-api-key-0123"
TOPIC = "room:bench"
FIRST_FRAMES = 3  # welcome, the replay's restore, the pod's answer to the subscribe


async def api_breakdown(http: aiohttp.ClientSession, pod: Pod, conns: list[Conn],
                        calls: int = 10) -> dict[str, float]:
    """Median time of one ``POST /v1/publish`` to ``pod``, one call at a time, for
    a topic whose subscribers are all on ``pod``, all on the other pod, both,
    or nobody: what the call itself costs, apart from the loop's queueing."""
    half = len(conns) // 2
    for i, c in enumerate(conns):
        c.send_json({"type": "subscribe", "id": f"b{i}",
                     "payload": {"topic": f"{TOPIC}-{'a' if i < half else 'b'}"}})
    await asyncio.sleep(2.0)
    out: dict[str, float] = {}
    for name, topic in (("none", f"{TOPIC}-none"), ("local", f"{TOPIC}-a"),
                        ("remote", f"{TOPIC}-b"), ("both", TOPIC)):
        took = []
        for _ in range(calls):
            started = time.perf_counter()
            async with http.post(f"{pod.admin_url}/v1/publish", json={
                    "topic": topic, "envelope": {"type": "bench_probe"}}) as r:
                await r.read()
            took.append(time.perf_counter() - started)
            await asyncio.sleep(0.05)
        out[f"api_ms_{name}"] = round(statistics.median(took) * 1000, 1)
    return out


async def run(pods: list[Pod], *, subscribers: int, in_flight: int, seconds: float,
              timeout: float, breakdown: bool = False) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    # at_least[n]: subscribers that have received n publishes or more
    at_least = [0] * 1024
    completed = 0
    progressed = asyncio.Event()
    ready = 0
    all_ready: asyncio.Future[None] = loop.create_future()

    def on_message(conn: Conn, _payload: bytes | None) -> None:
        nonlocal completed, ready
        n = conn.count - FIRST_FRAMES
        if n < 0:
            return
        if n == 0:
            ready += 1
            if ready == subscribers and not all_ready.done():
                all_ready.set_result(None)
            return
        while n >= len(at_least):
            at_least.extend([0] * len(at_least))
        at_least[n] += 1
        if at_least[n] == subscribers:  # every count below n is complete already
            completed = n
            done_at[n] = time.perf_counter()
            progressed.set()

    done_at: dict[int, float] = {}
    half = subscribers // 2
    paths = [f"/ws?user=tp{i}" for i in range(subscribers)]
    conns = [*await open_conns("127.0.0.1", pods[0].port, paths[:half], on_message,
                               sample=10**9, parallel=200),
             *await open_conns("127.0.0.1", pods[1].port, paths[half:], on_message,
                               sample=10**9, parallel=200)]
    for i, c in enumerate(conns):
        c.send_json({"type": "subscribe", "id": f"s{i}", "payload": {"topic": TOPIC}})
    await asyncio.wait_for(all_ready, timeout)
    await asyncio.sleep(2.0)  # the pods' topic membership settles

    started_at: dict[int, float] = {}
    api_s: list[float] = []
    published = 0
    errors: list[str] = []
    headers = {"Authorization": f"Bearer {API_KEY}"}
    cpu = [p.cpu_seconds() for p in pods]
    bench_cpu = time.process_time()
    async with aiohttp.ClientSession(headers=headers) as http:

        async def publish(n: int) -> None:
            url = f"{pods[n % len(pods)].admin_url}/v1/publish"
            async with http.post(url, json={"topic": TOPIC, "envelope": {
                    "type": "bench_tick", "payload": {"n": n, "ts": time.time()}}}) as r:
                if r.status != 200:
                    errors.append(f"{r.status} {await r.text()}")
            api_s.append(time.perf_counter() - started_at[n])

        tasks: set[asyncio.Task[None]] = set()
        begin = time.perf_counter()
        stop = begin + seconds
        stalled = False
        while time.perf_counter() < stop and not errors:
            if published - completed >= in_flight:
                progressed.clear()
                try:
                    await asyncio.wait_for(progressed.wait(), timeout)
                except TimeoutError:
                    stalled = True
                    break
                continue
            published += 1
            started_at[published] = time.perf_counter()
            task = loop.create_task(publish(published))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        end = time.perf_counter()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        used = [p.cpu_seconds() - c for p, c in zip(pods, cpu, strict=True)]
        bench_cpu = time.process_time() - bench_cpu
        extra = await api_breakdown(http, pods[0], conns) if breakdown else {}
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    lat = [done_at[n] - started_at[n] for n in range(1, completed + 1)
           if n in done_at and done_at[n] <= end]
    delivered = sum(1 for n in range(1, completed + 1) if done_at[n] <= end)
    elapsed = end - begin
    return {"bench": "topic_publish", "pods": 2, "subscribers": subscribers,
            "in_flight": in_flight, "seconds": round(elapsed, 2), "published": published,
            "delivered_everywhere": delivered,
            "publishes_per_s": round(delivered / elapsed, 1),
            "deliveries_per_s": round(delivered * subscribers / elapsed),
            **percentiles(lat),
            "api_p50_ms": percentiles(api_s)["p50_ms"], "cpu_s_bench": round(bench_cpu, 2),
            "cpu_s_pod_a": round(used[0], 2),
            "cpu_s_pod_b": round(used[1], 2), "stalled": stalled, "errors": errors[:3],
            **extra}


async def one(args: argparse.Namespace) -> dict[str, object]:
    async with asyncio.timeout(args.seconds + 3 * args.timeout + 60), \
            cluster(["bench-a", "bench-b"], WSNODE_API_KEY=API_KEY) as pods:
        return await run(pods, subscribers=args.subscribers, in_flight=args.in_flight,
                         seconds=args.seconds, timeout=args.timeout, breakdown=args.breakdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-s", "--subscribers", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=8,
                        help="publishes not yet delivered everywhere, at most")
    parser.add_argument("--seconds", type=float, default=10.0, help="publishing time per run")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds without progress before a run gives up")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--breakdown", action="store_true",
                        help="after the loop, time single publish calls: subscribers on the "
                        "called pod, on the other, on both, nowhere")
    args = parser.parse_args()
    rows = []
    for _ in range(args.runs):
        row = asyncio.run(one(args))
        print(orjson.dumps(row).decode(), flush=True)
        rows.append(row)

    def med(key: str) -> float:
        return statistics.median(float(r[key]) for r in rows)  # type: ignore[arg-type]

    print(orjson.dumps({
        "bench": "topic_publish", "summary": True, "runs": args.runs,
        "subscribers": args.subscribers, "in_flight": args.in_flight,
        "publishes_per_s_median": med("publishes_per_s"),
        "deliveries_per_s_median": med("deliveries_per_s"), "p50_ms_median": med("p50_ms"),
        "p99_ms_median": med("p99_ms"), "cpu_s_pod_a_median": med("cpu_s_pod_a"),
        "cpu_s_pod_b_median": med("cpu_s_pod_b"),
        "stalled_runs": sum(bool(r["stalled"]) for r in rows)}).decode(), flush=True)


if __name__ == "__main__":
    main()
