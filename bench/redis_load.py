"""Redis load of a cluster of pods: commands (and Redis CPU) per delivered chat
message, per ACK-required message, per connection opened and closed, and when
idle, on one Redis master (Sentinel: a master and its replica) and on a Redis
Cluster of 3 masters (one replica each); ``single`` (one server, no replica,
so no ``WAIT``) is the baseline. Private servers started here
(tests/support/redis_cluster.py; the shared Redis's counters are other
people's too); the pods use the shared RabbitMQ under a prefix of the run.

Method: ``INFO commandstats`` (and ``INFO cpu``) of every master, read before
and after each phase; the difference, less the idle rate over the phase's
length (and the same for Redis CPU), divided by what the phase did. Phases,
in order, with ``--pods`` pods:

1. idle, no connection (``--idle`` s): commands per pod per second;
2. ``--users`` clients per pod connect (``?user=``, ``--insecure``): per connect;
3. idle with them connected: commands per pod per second;
4. chat, at most once: each client in turn writes to a user on the next pod at
   ``--rate`` messages/s for ``--seconds``: per delivered message;
5. the same, ACK-required (``requiresAck`` + ``id``; each recipient acks what
   it gets): per delivered message (first copies);
6. every client disconnects: per disconnect.

Redis counts the commands a script runs as commands (``commands_per_event``
includes them: that is the load); ``scripts_per_event`` counts the script calls
(EVALSHA) alone. Commands our own probes send (``INFO``) are not counted. The
pods trace ACK-required messages (``WSNODE_TRACE=ack``, the default): their
trail writes are part of the figures. JSON lines on stdout:
one per topology and phase, with the top commands per event and, on a
cluster, each master's share of the phase's commands.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from cluster import AMQP_URL, Pod, _cleanup  # noqa: E402
from wsload import Conn, open_conns  # noqa: E402

from tests.support.redis_cluster import (  # noqa: E402
    RedisClusterServers,
    SentinelServers,
    info,
)
from tests.support.redis_server import RedisServer  # noqa: E402

IGNORED = {"info"}


class Topology:
    """Private Redis servers of one kind: their URL and their masters now."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.sentinel: SentinelServers | None = None
        self.cluster: RedisClusterServers | None = None
        self.single: RedisServer | None = None
        if kind == "cluster":
            self.cluster = RedisClusterServers(workdir / "cluster").start()
            self.url = self.cluster.url
        elif kind == "sentinel":
            self.sentinel = SentinelServers(workdir / "sentinel").start()
            self.url = self.sentinel.url
        else:
            self.single = RedisServer(workdir / "single").start()
            self.url = self.single.url

    def master_ports(self) -> list[int]:
        if self.cluster is not None:
            return [n.port for n in self.cluster.masters()]
        if self.sentinel is not None:
            return [self.sentinel.current_master().port]
        assert self.single is not None
        return [self.single.port]

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
        if self.sentinel is not None:
            self.sentinel.close()
        if self.single is not None:
            self.single.stop()


class Snapshot:
    """Calls per command and CPU seconds of every master, at one moment."""

    def __init__(self, ports: list[int]) -> None:
        self.at = time.monotonic()
        self.calls: dict[int, Counter[str]] = {}
        self.cpu = 0.0
        for port in ports:
            stats = info(port, "commandstats")
            self.calls[port] = Counter({
                name.removeprefix("cmdstat_"): int(value.split(",")[0].removeprefix("calls="))
                for name, value in stats.items()})
            cpu = info(port, "cpu")
            self.cpu += float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])

    def since(self, before: Snapshot) -> tuple[Counter[str], dict[int, int], float, float]:
        """(calls per command, calls per master, Redis CPU s, seconds) since ``before``."""
        total: Counter[str] = Counter()
        per_master: dict[int, int] = {}
        for port, calls in self.calls.items():
            delta = calls - before.calls.get(port, Counter())
            for name in IGNORED:
                delta.pop(name, None)
            total += delta
            per_master[port] = sum(delta.values())
        return total, per_master, self.cpu - before.cpu, self.at - before.at


class Clients:
    """The clients of every pod; counts chat frames and acks ACK-required ones."""

    def __init__(self) -> None:
        self.conns: list[list[Conn]] = []
        self.chat = 0
        self.acked: set[str] = set()

    def on_message(self, conn: Conn, payload: bytes | None) -> None:
        if payload is None or b'"chat_message"' not in payload:
            return
        frame = orjson.loads(payload)
        if frame.get("type") != "chat_message":
            return
        self.chat += 1
        if frame.get("requiresAck") and frame.get("id"):
            self.acked.add(frame["id"])
            conn.send_json({"type": "ack", "payload": {"id": frame["id"]}})

    async def connect(self, pods: list[Pod], users: int) -> None:
        for k, pod in enumerate(pods):
            self.conns.append(await open_conns(
                "127.0.0.1", pod.port, [f"/ws?user=p{k}u{j}" for j in range(users)],
                self.on_message, sample=1))

    def open_count(self) -> int:
        return sum(1 for g in self.conns for c in g
                   if c.transport is not None and not c.transport.is_closing())

    async def close(self) -> None:
        for group in self.conns:
            for c in group:
                if c.transport is not None:
                    c.transport.close()
        for group in self.conns:
            for c in group:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.closed, 10)


def connections(pod: Pod) -> int:
    """The pod's open connections (its ``wsnode_connections`` gauge)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{pod.admin_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("wsnode_connections "):
                return int(float(line.split()[1]))
    return -1


async def chat(clients: Clients, rate: float, seconds: float, ack: bool, tag: str) -> None:
    """Each client in turn writes to a user on the next pod, ``rate`` per second."""
    pods_n, users = len(clients.conns), len(clients.conns[0])
    interval, i, owed = 0.01, 0, 0.0
    next_at = time.monotonic()
    deadline = next_at + seconds
    while time.monotonic() < deadline:
        owed += rate * interval
        while owed >= 1:
            owed -= 1
            k, j = i % pods_n, (i // pods_n) % users
            frame: dict[str, object] = {"type": "chat_message", "payload": {
                "to": f"p{(k + 1) % pods_n}u{(j * 7 + i) % users}", "text": "hello there"}}
            if ack:
                frame.update(id=f"{tag}{i}", requiresAck=True)
            clients.conns[k][j].send_json(frame)
            i += 1
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def settle(seconds: float = 1.5) -> None:
    await asyncio.sleep(seconds)


def row(topology: Topology, pods_n: int, phase: str, events: int, calls: Counter[str],
        per_master: dict[int, int], cpu: float, seconds: float,
        idle: tuple[float, float]) -> dict[str, object]:
    """One JSON line: the phase's commands and CPU less the idle rates (commands/s,
    CPU s/s) over its length."""
    total = sum(calls.values())
    net = max(0.0, total - idle[0] * seconds)
    net_cpu = max(0.0, cpu - idle[1] * seconds)
    out: dict[str, object] = {
        "bench": "redis_load", "topology": topology.kind, "masters": len(per_master),
        "pods": pods_n, "phase": phase, "events": events, "window_s": round(seconds, 1),
        "commands": total, "commands_per_s": round(total / seconds, 1)}
    if events:
        per = max(events, 1)
        out["commands_per_event"] = round(net / per, 2)
        out["redis_cpu_us_per_event"] = round(1e6 * net_cpu / per, 1)
        out["scripts_per_event"] = round(calls["evalsha"] / per, 2)
        out["waits_per_event"] = round(calls["wait"] / per, 3)
        out["top_per_event"] = {name: round(n / per, 2) for name, n in calls.most_common(10)}
    else:
        out["commands_per_pod_per_s"] = round(total / seconds / pods_n, 1)
        out["redis_cpu_pct"] = round(100 * cpu / seconds, 1)
        out["top_per_pod_per_s"] = {name: round(n / seconds / pods_n, 1)
                                    for name, n in calls.most_common(10)}
    if len(per_master) > 1 and total:
        out["master_shares"] = sorted(round(n / total, 2) for n in per_master.values())
    return out


async def run(topology: Topology, args: argparse.Namespace, log_dir: Path) -> None:
    prefix = f"benchrl{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSNODE_")}
    env.update(WSNODE_REDIS_URL=topology.url, WSNODE_AMQP_URL=AMQP_URL,
               WSNODE_KEY_PREFIX=prefix, WSNODE_RATE_LIMIT="0", WSNODE_LOG_LEVEL="WARNING",
               WSNODE_SEND_QUEUE_SIZE="8MiB", WSNODE_RELAYED_MAX_PENDING="1000000",
               WSNODE_RELAYED_BUDGET="1000000")
    pod_ids = [f"rl-{i}" for i in range(args.pods)]
    pods = [Pod(p, env, log_dir) for p in pod_ids]
    clients = Clients()
    ports = topology.master_ports()

    def emit(phase: str, events: int, before: Snapshot,
             idle: tuple[float, float]) -> tuple[float, float]:
        """Print the phase's line; its rates (commands/s, CPU s/s)."""
        calls, per_master, cpu, seconds = Snapshot(ports).since(before)
        line = row(topology, args.pods, phase, events, calls, per_master, cpu, seconds, idle)
        print(orjson.dumps(line).decode(), flush=True)
        return sum(calls.values()) / seconds, cpu / seconds

    try:
        for pod in pods:
            await asyncio.to_thread(pod.wait_ready, 60)
        await settle(3.0)  # first joins and scans done
        before = Snapshot(ports)
        await asyncio.sleep(args.idle)
        idle0 = emit("idle", 0, before, (0.0, 0.0))

        before = Snapshot(ports)
        await clients.connect(pods, args.users)
        await settle()
        emit("connect", args.pods * args.users, before, idle0)

        before = Snapshot(ports)
        await asyncio.sleep(args.idle)
        idle1 = emit("idle_connected", 0, before, (0.0, 0.0))

        for phase, ack in (("chat", False), ("chat_ack", True)):
            got0, acked0 = clients.chat, len(clients.acked)
            before = Snapshot(ports)
            await chat(clients, args.rate, args.seconds, ack, f"{phase}-")
            # Deliveries in flight and acks settled; after an ACK-required phase,
            # the resend scan's look at each user's due entry (one retry interval,
            # 5 s, after the store) falls inside the window too.
            await settle(7.0 if ack else 3.0)
            events = len(clients.acked) - acked0 if ack else clients.chat - got0
            emit(phase, events, before, idle1)

        print(f"# open before disconnect: {clients.open_count()} client side, "
              f"{[await asyncio.to_thread(connections, p) for p in pods]} pod side",
              file=sys.stderr)
        before = Snapshot(ports)
        await clients.close()
        await settle()
        emit("disconnect", args.pods * args.users, before, idle0)
    finally:
        await clients.close()
        for pod in pods:
            pod.stop()
        await _cleanup(prefix, pod_ids)


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="wsnode-bench-redis-"))
    for kind in args.topologies:
        topology = await asyncio.to_thread(Topology, kind, workdir / kind)
        try:
            await run(topology, args, workdir)
        finally:
            await asyncio.to_thread(topology.close)
    with contextlib.suppress(OSError):
        print(f"# logs in {workdir}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topologies", nargs="+", default=["single", "sentinel", "cluster"],
                        choices=["single", "sentinel", "cluster"])
    parser.add_argument("--pods", type=int, default=2)
    parser.add_argument("--users", type=int, default=200, help="clients per pod")
    parser.add_argument("--rate", type=float, default=300.0, help="chat messages/s in total")
    parser.add_argument("--seconds", type=float, default=10.0, help="of each chat phase")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of each idle phase")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
