"""The issue's swarm: ``wsctl swarm`` for 60 s against 3 local pods (cluster
mode, real Redis and RabbitMQ, the chat example app) with 2,000 users.

Prints the swarm's summary as one JSON line (``wsctl swarm --json``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import cluster

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-swarm-secret-0123456789abcdef0123"
API_KEY = "bench-swarm-api-key-0123"


async def main(users: int, spawn_rate: int, seconds: int, processes: int | None) -> None:
    async with cluster(["swarm-a", "swarm-b", "swarm-c"], WSNODE_JWT_SECRET=SECRET,
                       WSNODE_API_KEY=API_KEY, WSNODE_RATE_LIMIT="20/10s") as pods:
        env = {**os.environ, "WSNODE_JWT_SECRET": SECRET, "WSNODE_API_KEY": API_KEY,
               "WSNODE_LOAD_ADMIN": ",".join(f"http://127.0.0.1:{p.admin_port}" for p in pods)}
        cmd = [str(Path(sys.executable).parent / "wsctl"), "swarm", "--host",
               ",".join(f"ws://127.0.0.1:{p.port}" for p in pods), "--users", str(users),
               "--spawn-rate", str(spawn_rate), "--run-time", f"{seconds}s", "--json"]
        if processes:
            cmd += ["--processes", str(processes)]
        done = await asyncio.to_thread(subprocess.run, cmd, cwd=ROOT, env=env,
                                       capture_output=True, text=True, timeout=seconds + 120)
        summary = orjson.loads(done.stdout) if done.stdout.strip() else {}
        summary.pop("requests", None)
        print(orjson.dumps({"bench": "swarm", "pods": 3, "exit": done.returncode,
                            **summary}).decode(), flush=True)
        if done.returncode:
            print(done.stderr[-2000:], file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--spawn-rate", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--processes", type=int, default=None)
    a = parser.parse_args()
    asyncio.run(main(a.users, a.spawn_rate, a.seconds, a.processes))
