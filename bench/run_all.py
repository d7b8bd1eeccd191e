"""``make bench``: every benchmark, one after the other, JSON lines on stdout.

Each script prints a line per run and a summary line with medians (3 runs
unless ``--runs``); the swarm and the abuse bench (a line per flood) run
once. Nothing else should run on the machine meanwhile: the figures are
CPU-bound on 2 cores.

The closed loop against the peers (``closed_loop.py``: wsnode, socket.io on
Node.js, python-socketio; then 2 vs 4 pods; then wsnode and socket.io with
their windows interleaved, 4 rounds) runs once in the full suite (its figures
are ratios within one run); ``--only peers`` runs just it, ``--runs`` times
(``make peers``; the interleaved step always takes its 4 rounds).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=["peers"], help="run only these benchmarks")
    args = parser.parse_args()
    runs = str(args.runs)
    peers = [
        ["closed_loop.py", "--systems", "wsnode,socketio,pysocketio",
         "--modes", "closed,rate,ack,burst", "-m", "20000",
         "--runs", runs if args.only else "1"],
        ["closed_loop.py", "--systems", "wsnode,socketio", "--modes", "closed",
         "--pods", "2,4", "--spread", "--runs", runs if args.only else "1"],
        # The same ratios with the windows interleaved (the host's drift within
        # minutes skews those of runs taken one system after the other).
        ["closed_loop.py", "--systems", "wsnode,socketio", "--modes", "closed,ack",
         "--interleave", "4", "--seconds", "8"],
    ]
    steps = peers if args.only else [
        ["local_push.py", "-n", "100", "-m", "100000", "--runs", runs],
        ["cross_pod.py", "--runs", runs],
        ["cross_pod.py", "--ack", "-m", "20000", "--runs", runs],
        ["connections.py", "--runs", runs],
        ["presence_churn.py", "--runs", runs],
        ["broadcast.py", "--runs", runs],
        ["topics.py", "--runs", runs],
        ["swarm.py"],
        ["abuse.py", "--json"],
        *peers,
    ]
    import os
    print(orjson.dumps({"bench": "machine", "python": platform.python_version(),
                        "cpus": os.cpu_count(), "platform": platform.platform(),
                        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                       ).decode(), flush=True)
    failed = 0
    for step in steps:
        done = subprocess.run([sys.executable, str(HERE / step[0]), *step[1:]], check=False)
        failed += done.returncode != 0
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
