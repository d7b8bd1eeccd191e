"""Bench 1 — local push: one pod, N connections, ``send_to_user`` in process.

For each run, a server process (``push_server.py``) pushes M frames round-robin to
N users while this process counts them with the raw client of ``wsload.py``;
the same is done against a bare ``websockets`` server pushing the same frames,
so wsnode's cost is a ratio to the ceiling of the same machine in the same run.
Prints one JSON line per run and a summary line with medians and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wsload import latency_of, now, open_conns, percentiles

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def one_run(mode: str, n: int, m: int) -> dict[str, object]:
    port = free_port()
    server = subprocess.Popen([sys.executable, str(HERE / "push_server.py"), "--mode", mode,
                               "--port", str(port), "-n", str(n), "-m", str(m)],
                              stdout=subprocess.PIPE, text=True)
    try:
        extra = 2 if mode == "wsnode" else 0  # welcome + restore per connection
        for _ in range(200):
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        total = 0
        last = 0.0
        lat: list[float] = []
        done = asyncio.get_running_loop().create_future()

        def on_message(_conn: object, payload: bytes | None) -> None:
            nonlocal total, last
            total += 1
            t = now()
            got = latency_of(payload, t)
            if got is not None:
                lat.append(got)
            if total == n * extra + m:
                last = time.time()
                if not done.done():
                    done.set_result(None)

        conns = await open_conns("127.0.0.1", port, [f"/ws?user=u{i}" for i in range(n)],
                                 on_message, sample=20)
        await asyncio.wait_for(done, 120)
        for c in conns:
            if c.transport is not None:
                c.transport.close()
        out, _ = server.communicate(timeout=30)
        reply = orjson.loads(out.strip().splitlines()[-1])
        server_s = reply["server_push_s"]
        # From the first send to the last frame counted: the whole pipeline.
        elapsed = last - reply["push_started"]
        return {"bench": "local_push", "mode": mode, "connections": n, "messages": m,
                "msgs_per_s": round(m / elapsed), "server_push_s": server_s,
                **percentiles(lat)}
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=100, help="connections")
    parser.add_argument("-m", type=int, default=100_000, help="messages per run")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[int]] = {"wsnode": [], "bare": []}
    for _ in range(args.runs):
        for mode in ("bare", "wsnode"):
            row = await one_run(mode, args.n, args.m)
            print(orjson.dumps(row).decode(), flush=True)
            results[mode].append(int(row["msgs_per_s"]))  # type: ignore[call-overload]
    wsnode, bare = statistics.median(results["wsnode"]), statistics.median(results["bare"])
    print(orjson.dumps({"bench": "local_push", "summary": True, "wsnode_msgs_per_s": wsnode,
                        "bare_msgs_per_s": bare, "ratio": round(wsnode / bare, 3),
                        "runs": args.runs}).decode(), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
