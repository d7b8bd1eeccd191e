"""A cluster-mode pod holding idle connections: memory, descriptors and idle load
against the number of connections, and the cost of opening and closing them.

One ``wsnode serve`` pod (the chat example app, cluster mode) on a private
``redis-server`` and a private one-node RabbitMQ (``bench/systems.py``: their CPU
and counters are this run's alone). Connections are opened in steps up to each
of ``--sizes`` (``?user=``, ``--insecure``, each its own user, ``--parallel``
handshakes in flight; one the pod resets or closes is tried again, and counted:
the machine's accept-queue overflows are reported beside), each step
waiting until every new connection got its ``welcome``. At
every size, after ``--settle`` s:

- the pod's RSS (``VmRSS``) and open descriptors (``/proc/<pid>/fd``);
- an idle window of ``--idle`` s (60: every connection is pinged, every 20 s,
  and its user re-read by the resend reconcile, every 30 s, a whole number of
  times in it): CPU % of the pod, of Redis and of RabbitMQ, Redis commands per
  second and the most called ones.

Each step also gives the cost of a connect (pod CPU µs and Redis commands per new
connection, less the idle rate over the step); closing them all at the end gives
a disconnect's. The summary fits a line through (connections, RSS) and
(connections, idle pod CPU): ``kib_per_connection`` and ``idle_cpu_pct_per_1k``
are the slopes. JSON lines on stdout (and ``--out``). Bounded by ``--deadline``;
every process started is stopped by pid. ``WSNODE_BENCH_POD_<NAME>=value`` sets
a pod setting (``bench/systems.py``), e.g. ``PING_INTERVAL=1h`` to see the cost
of the pings apart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.counters import pod_metrics, redis_stats  # noqa: E402
from bench.systems import Brokers, CpuMeter, machine_busy, running, workdir  # noqa: E402
from bench.wsload import Conn  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def listen_overflows() -> int:
    """The machine's ``TcpExt ListenOverflows`` (connections dropped because an
    accept queue was full): machine-wide, so other work on the host counts too."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            return int(dict(zip(head.split(), values.split(), strict=True))["ListenOverflows"])
    return 0


async def open_retrying(port: int, users: range, on_message: Callable[[Conn, bytes | None],
                        None], parallel: int) -> tuple[list[Conn], int]:
    """Open one connection per user, ``parallel`` handshakes at a time; a handshake
    the pod resets or closes before its 101 is tried again (up to 5 times): seen
    when the burst overflows the pod's accept queue. Returns them and the retries."""
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(parallel)
    retries = 0

    async def one(user: int) -> Conn:
        nonlocal retries
        async with sem:
            for attempt in range(5):
                try:
                    _, conn = await loop.create_connection(
                        lambda: Conn(f"127.0.0.1:{port}", f"/ws?user=u{user}", on_message, 1),
                        "127.0.0.1", port)
                    await conn.open
                    return conn
                except ConnectionError:  # reset, or closed before the 101
                    if attempt == 4:
                        raise
                    retries += 1
                    await asyncio.sleep(0.2 * (attempt + 1))
            raise AssertionError("unreachable")

    conns = list(await asyncio.gather(*(one(u) for u in users)))
    return conns, retries


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Probe:
    """CPU seconds of the pod, Redis and RabbitMQ, Redis commands, wall clock."""

    def __init__(self, groups: dict[str, list[int]], redis_url: str) -> None:
        self.meter, self.redis_url = CpuMeter(groups), redis_url

    def read(self) -> dict[str, float]:
        cpu = self.meter.read()
        return {**cpu, "redis_commands": redis_stats(self.redis_url)["commands"],
                "t": time.monotonic(), "busy": machine_busy()}

    def commandstats(self) -> dict[str, int]:
        """Calls per Redis command since the server started."""
        import redis

        client = redis.Redis.from_url(self.redis_url)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def rates(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Per second between two reads: CPU as % of a core, commands per second."""
    span = b["t"] - a["t"]
    out = {f"{k}_cpu_pct": round(100 * (b[k] - a[k]) / span, 2)
           for k in a if k not in ("redis_commands", "t", "busy")}
    out["redis_cmds_per_s"] = round((b["redis_commands"] - a["redis_commands"]) / span, 1)
    out["machine_busy_pct"] = round(100 * (b["busy"] - a["busy"]) / span, 1)
    return out


def event_cost(a: dict[str, float], b: dict[str, float], idle: dict[str, Any],
               n: int, pod: str) -> dict[str, float]:
    """Pod CPU µs and Redis commands per event over a step, less the idle rates."""
    span = b["t"] - a["t"]
    pod_s = b[pod] - a[pod] - idle[f"{pod}_cpu_pct"] / 100 * span
    cmds = b["redis_commands"] - a["redis_commands"] - idle["redis_cmds_per_s"] * span
    redis_s = b["redis"] - a["redis"] - idle["redis_cpu_pct"] / 100 * span
    return {"pod_cpu_us": round(pod_s / n * 1e6, 1), "redis_cmds": round(cmds / n, 2),
            "redis_cpu_us": round(redis_s / n * 1e6, 1), "seconds": round(span, 2)}


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return slope, my - slope * mx


def emit(row: dict[str, Any], out: Path | None) -> None:
    line = orjson.dumps(row).decode()
    print(line, flush=True)
    if out is not None:
        with out.open("a") as f:
            f.write(line + "\n")


async def measure(args: argparse.Namespace, brokers: Brokers, wdir: Path) -> None:
    with running("wsnode", 1, brokers, wdir) as system:
        pod_name, pid, port = system.names[0], system.procs[0].pid, system.ports[0]
        admin = system.admin_ports[0]
        probe = Probe(system.cpu_groups(), brokers.redis_url)
        conns: list[Conn] = []
        welcomed: set[int] = set()
        rows: list[dict[str, Any]] = []

        def on_message(conn: Conn, _payload: bytes | None) -> None:
            welcomed.add(id(conn))

        async def idle_window(n: int) -> dict[str, Any]:
            await asyncio.sleep(args.settle)
            a, s0 = probe.read(), probe.commandstats()
            await asyncio.sleep(args.idle)
            b, s1 = probe.read(), probe.commandstats()
            span = b["t"] - a["t"]
            top = sorted(((s1[k] - s0.get(k, 0)) / span, k) for k in s1)[::-1][:6]
            return {**rates(a, b), "redis_top_per_s": {k: round(v, 1) for v, k in top if v}}

        idle = await idle_window(0)
        rows.append({"connections": 0, "rss_kib": rss_kib(pid), "fds": fds(pid), **idle})
        emit({"bench": "pod_idle", **rows[-1]}, args.out)
        for size in args.sizes:
            new = size - len(conns)
            a, overflows = probe.read(), listen_overflows()
            opened, retries = await open_retrying(port, range(len(conns), size), on_message,
                                                  args.parallel)
            conns += opened
            deadline = time.monotonic() + 120
            while len(welcomed) < size:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{size - len(welcomed)} connections got no welcome")
                await asyncio.sleep(0.1)
            connect = event_cost(a, probe.read(), idle, new, pod_name)
            idle = await idle_window(size)
            rows.append({"connections": size, "rss_kib": rss_kib(pid), "fds": fds(pid),
                         **idle})
            connect.update(new=new, handshake_retries=retries,
                           listen_overflows=listen_overflows() - overflows)
            emit({"bench": "pod_idle", **rows[-1], "connect": connect,
                  "load_avg_1m": round(os.getloadavg()[0], 2)}, args.out)
        a = probe.read()
        for c in conns:
            if c.transport is not None:
                c.transport.close()
        # Done when the pod counts no connection and Redis is back to its idle
        # rate (the last disconnects' writes are in).
        # A pod closing thousands at once stalls its loop for seconds: a scrape
        # that times out means "not yet".
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if pod_metrics(admin, ("wsnode_connections",))["wsnode_connections"] == 0:
                    break
            except OSError:
                pass
            await asyncio.sleep(0.2)
        while time.monotonic() < deadline:
            c0 = redis_stats(brokers.redis_url)["commands"]
            await asyncio.sleep(1.0)
            if redis_stats(brokers.redis_url)["commands"] - c0 < 2 * idle["redis_cmds_per_s"]:
                break
        disconnect = event_cost(a, probe.read(), idle, len(conns), pod_name)
        emit({"bench": "pod_idle", "disconnect": {"closed": len(conns), **disconnect},
              "fds_after": fds(pid), "rss_kib_after": rss_kib(pid)}, args.out)
    rss_slope, rss0 = fit([(r["connections"], r["rss_kib"]) for r in rows])
    cpu_slope, cpu0 = fit([(r["connections"], r[f"{pod_name}_cpu_pct"]) for r in rows])
    cmd_slope, cmd0 = fit([(r["connections"], r["redis_cmds_per_s"]) for r in rows])
    fd_slope, _ = fit([(r["connections"], r["fds"]) for r in rows])
    emit({"bench": "pod_idle", "summary": True, "sizes": [r["connections"] for r in rows],
          "kib_per_connection": round(rss_slope, 2), "rss_base_mib": round(rss0 / 1024, 1),
          "fds_per_connection": round(fd_slope, 3),
          "idle_pod_cpu_pct": round(cpu0, 2),
          "idle_cpu_pct_per_1k": round(cpu_slope * 1000, 3),
          "idle_redis_cmds_per_s": round(cmd0, 1),
          "idle_redis_cmds_per_s_per_1k": round(cmd_slope * 1000, 2),
          "idle_s": args.idle, "load_avg": [round(x, 2) for x in os.getloadavg()],
          "pod_settings": {k[len("WSNODE_BENCH_POD_"):]: v for k, v in os.environ.items()
                           if k.startswith("WSNODE_BENCH_POD_")}}, args.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,5000,10000",
                        help="connection counts, ascending (the client and the pod each "
                        "need one descriptor per connection: mind `ulimit -n`)")
    parser.add_argument("--idle", type=float, default=60.0,
                        help="idle window per size, s: a multiple of the ping interval "
                        "(20 s) and of the resend reconcile (30 s: a read per held user)")
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--parallel", type=int, default=100, help="handshakes in flight")
    parser.add_argument("--deadline", type=float, default=900.0, help="whole run, s")
    parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    args = parser.parse_args()
    args.sizes = sorted(int(s) for s in args.sizes.split(","))
    wdir = workdir()
    brokers = Brokers(wdir, shared=False)
    try:
        brokers.start()
        asyncio.run(asyncio.wait_for(measure(args, brokers, wdir), args.deadline))
    finally:
        brokers.close()
    shutil.rmtree(wdir, ignore_errors=True)


if __name__ == "__main__":
    main()
