"""Bench 4 — idle connections: RSS per connection and the time to open them.

One embedded pod (``wsnode serve --insecure``, compression off as by default)
and, as the ceiling, a bare ``websockets`` server holding idle connections.
For each N: open N connections from this process (the raw client of
``wsload.py``, 500 handshakes in flight), wait until each got its first frames,
then read the server's RSS. RSS per connection = (RSS with N - RSS idle) / N.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import free_port
from wsload import open_conns

HERE = Path(__file__).resolve().parent


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def start(mode: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSNODE_")}
    if mode == "wsnode":
        admin = free_port()
        cmd = [sys.executable, "-m", "wsnode", "serve", "--insecure", "--pod-id", "bench",
               "--port", str(port), "--admin-port", str(admin)]
        env.update(WSNODE_LOG_LEVEL="WARNING", WSNODE_RATE_LIMIT="0")
    else:
        cmd = [sys.executable, str(HERE / "idle_server.py"), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            if mode == "wsnode":
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1).close()
            else:
                import socket
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    time.sleep(0.5)
    return proc, port


async def measure(mode: str, n: int) -> dict[str, object]:
    proc, port = start(mode)
    try:
        base = rss_kib(proc.pid)
        first = 2 if mode == "wsnode" else 0  # welcome + restore
        seen: dict[int, int] = {}
        everyone = asyncio.get_running_loop().create_future()

        def on_message(conn: object, _payload: bytes | None) -> None:
            key = id(conn)
            seen[key] = seen.get(key, 0) + 1
            if len(seen) == n and not everyone.done():
                everyone.set_result(None)

        t0 = time.perf_counter()
        conns = await open_conns("127.0.0.1", port, [f"/ws?user=u{i}" for i in range(n)],
                                 on_message, parallel=500)
        if first:
            await asyncio.wait_for(everyone, 60)
        opened = time.perf_counter() - t0
        await asyncio.sleep(1.0)
        rss = rss_kib(proc.pid)
        for c in conns:
            if c.transport is not None:
                c.transport.close()
        return {"bench": "connections", "mode": mode, "connections": n,
                "open_s": round(opened, 2), "rss_idle_mib": round(base / 1024, 1),
                "rss_mib": round(rss / 1024, 1),
                "kib_per_connection": round((rss - base) / n, 2)}
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    per: dict[tuple[str, int], list[dict[str, object]]] = {}
    for _ in range(args.runs):
        for n in sizes:
            for mode in ("bare", "wsnode"):
                row = asyncio.run(measure(mode, n))
                print(orjson.dumps(row).decode(), flush=True)
                per.setdefault((mode, n), []).append(row)
    for (mode, n), rows in per.items():
        print(orjson.dumps({
            "bench": "connections", "summary": True, "mode": mode, "connections": n,
            "kib_per_connection_median": statistics.median(
                float(r["kib_per_connection"]) for r in rows),  # type: ignore[arg-type]
            "open_s_median": statistics.median(float(r["open_s"]) for r in rows),  # type: ignore[arg-type]
        }).decode(), flush=True)


if __name__ == "__main__":
    main()
