"""Bench 2 (and 3 with ``--ack``) — cross-pod chat: 2 pods, real Redis and RabbitMQ.

50 senders on pod A send ``chat_message`` to 1,000 receivers on pod B (the chat
example app). Full load: every sender writes its share of M messages at once
and the pods take them as fast as they can (backpressure paces the senders);
the figure is messages delivered per second. Fixed rate: R messages/s for D
seconds; the figures are delivery latencies (send timestamp in the payload).
With ``--ack`` the client frames carry ``requiresAck`` and an ``id``, so the
chat example stores and delivers them ACK-required; receivers ack each one and
the figure is acked messages per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import Pod, cluster
from wsload import Conn, latency_of, open_conns, percentiles


async def run(a: Pod, b: Pod, *, senders: int, receivers: int, messages: int,
              rate: float | None, ack: bool) -> dict[str, object]:
    received = 0
    lat: list[float] = []
    target = messages
    done = asyncio.get_running_loop().create_future()
    last = 0.0

    def on_message(conn: Conn, payload: bytes | None) -> None:
        nonlocal received, last
        if payload is None:
            return
        obj = orjson.loads(payload)
        if obj.get("type") != "chat_message":
            return
        received += 1
        t = time.time()
        got = latency_of(payload, t)
        if got is not None:
            lat.append(got)
        if ack:
            conn.send_json({"type": "ack", "payload": {"id": obj["id"]}})
        elif obj.get("requiresAck"):
            return
        last = t
        if received >= target and not done.done():
            done.set_result(None)

    rx = await open_conns("127.0.0.1", b.port, [f"/ws?user=r{j}" for j in range(receivers)],
                          on_message, sample=1)
    tx = await open_conns("127.0.0.1", a.port, [f"/ws?user=s{i}" for i in range(senders)],
                          lambda c, p: None, sample=10**9)
    await asyncio.sleep(1.0)  # presence settles, welcome frames are in

    def frame(i: int) -> dict[str, object]:
        out: dict[str, object] = {"type": "chat_message",
                                  "payload": {"to": f"r{i % receivers}", "ts": time.time()}}
        if ack:
            out.update(id=f"m{i}", requiresAck=True)
        return out

    start = time.time()
    if rate is None:
        for i in range(messages):
            tx[i % senders].send_json(frame(i))
            if i % 500 == 0:
                await asyncio.sleep(0)
    else:
        interval = 0.01
        per_tick = max(1, int(rate * interval))
        i = 0
        next_at = time.monotonic()
        while i < messages:
            for _ in range(per_tick):
                if i >= messages:
                    break
                tx[i % senders].send_json(frame(i))
                i += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    with contextlib.suppress(TimeoutError):  # what did not arrive counts as lost
        await asyncio.wait_for(done, 120)
    elapsed = last - start
    for c in rx + tx:
        if c.transport is not None:
            c.transport.close()
    row: dict[str, object] = {
        "bench": "cross_pod_ack" if ack else "cross_pod", "mode": "fixed" if rate else "full",
        "senders": senders, "receivers": receivers, "messages": messages,
        "delivered": received, "lost": messages - received,
        "msgs_per_s": round(received / elapsed) if elapsed > 0 else 0, **percentiles(lat)}
    if rate:
        row["offered_per_s"] = rate
    return row


async def one(args: argparse.Namespace, rate: float | None, messages: int) -> dict[str, object]:
    # Full load offers every message at once and queues for seconds: with the
    # default 5 s retry interval that backlog would turn into resends, a cost of
    # the bench's own overload rather than of the ACK path. Resends are off the
    # clock here; they are measured by the ACK tests, not by throughput.
    settings = {"WSNODE_ACK_RETRY_INTERVAL": "60s"} if args.ack else {}
    async with cluster(["bench-a", "bench-b"], **settings) as (a, b):
        return await run(a, b, senders=args.senders, receivers=args.receivers,
                         messages=messages, rate=rate, ack=args.ack)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--senders", type=int, default=50)
    parser.add_argument("--receivers", type=int, default=1000)
    parser.add_argument("-m", "--messages", type=int, default=40_000)
    parser.add_argument("--rate", type=float, default=2000.0, help="fixed offered rate")
    parser.add_argument("--seconds", type=float, default=10.0, help="fixed-rate duration")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ack", action="store_true", help="ACK-required messages, acked")
    args = parser.parse_args()
    full, fixed_p99 = [], []
    for _ in range(args.runs):
        row = asyncio.run(one(args, None, args.messages))
        print(orjson.dumps(row).decode(), flush=True)
        full.append(int(row["msgs_per_s"]))  # type: ignore[call-overload]
        if not args.ack:
            row = asyncio.run(one(args, args.rate, int(args.rate * args.seconds)))
            print(orjson.dumps(row).decode(), flush=True)
            fixed_p99.append(float(row["p99_ms"]))  # type: ignore[arg-type]
    summary: dict[str, object] = {"bench": "cross_pod_ack" if args.ack else "cross_pod",
                                  "summary": True, "runs": args.runs,
                                  "msgs_per_s_median": statistics.median(full)}
    if fixed_p99:
        summary["p99_ms_at_rate_median"] = statistics.median(fixed_p99)
        summary["offered_per_s"] = args.rate
    print(orjson.dumps(summary).decode(), flush=True)


if __name__ == "__main__":
    main()
