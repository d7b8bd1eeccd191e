"""Bench 5 — presence churn: connect + disconnect cycles per second on one pod
with Redis presence (cluster mode: real Redis and RabbitMQ).

``--concurrency`` loops each open a connection, wait for its ``restore`` frame
(by then the pod has written presence and replayed), close it, and start again,
for ``--seconds``. The figure is completed cycles per second; a final check
reads presence from Redis to see that nothing was left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import Pod, cluster
from wsload import Conn, open_conns


async def churn(pod: Pod, concurrency: int, seconds: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    cycles = 0

    async def worker(w: int) -> None:
        nonlocal cycles
        i = 0
        while loop.time() < end:
            restored = loop.create_future()

            def on_message(conn: Conn, _p: bytes | None,
                           f: asyncio.Future[None] = restored) -> None:
                if conn.count == 2 and not f.done():  # welcome, then restore
                    f.set_result(None)

            (conn,) = await open_conns("127.0.0.1", pod.port, [f"/ws?user=c{w}-{i}"],
                                       on_message)
            await asyncio.wait_for(restored, 10)
            assert conn.transport is not None
            conn.transport.close()
            await conn.closed
            cycles += 1
            i += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - start
    await asyncio.sleep(1.5)  # let the last disconnects reach Redis
    from urllib.request import urlopen
    with urlopen(f"http://127.0.0.1:{pod.admin_port}/metrics") as r:
        text = r.read().decode()
    left = next(float(line.split()[1]) for line in text.splitlines()
                if line.startswith("wsnode_connections "))
    return {"bench": "presence_churn", "concurrency": concurrency, "cycles": cycles,
            "cycles_per_s": round(cycles / elapsed), "connections_left": int(left)}


async def one(concurrency: int, seconds: float) -> dict[str, object]:
    async with cluster(["churn-a"]) as (pod,):
        return await churn(pod, concurrency, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    figures = []
    for _ in range(args.runs):
        row = asyncio.run(one(args.concurrency, args.seconds))
        print(orjson.dumps(row).decode(), flush=True)
        figures.append(int(row["cycles_per_s"]))  # type: ignore[call-overload]
    print(orjson.dumps({"bench": "presence_churn", "summary": True, "runs": args.runs,
                        "cycles_per_s_median": statistics.median(figures)}).decode(),
          flush=True)


if __name__ == "__main__":
    main()
