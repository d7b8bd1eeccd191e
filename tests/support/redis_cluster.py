"""Private Redis topologies on loopback, for tests that kill Redis masters.

Never the shared Redis on 6379. Two topologies, each in a directory of its own
and every process stopped by its pid:

* :class:`RedisClusterServers`: a Redis Cluster of 3 masters with one replica
  each (6 ``redis-server --cluster-enabled yes``), created with
  ``redis-cli --cluster create ... --cluster-replicas 1``;
* :class:`SentinelServers`: one master, one replica and three sentinels.

Every data node runs with ``appendonly yes``, ``appendfsync always``, and a short
failure detection (``cluster-node-timeout`` / ``down-after-milliseconds``), so a
failover takes seconds, not the default 15 s or more. Ports come from
:func:`free_port` (the cluster bus port too: ``cluster-port``), never port+10000.

:class:`Unavailable` says why a topology cannot start here (redis-server or
redis-cli missing, a node that does not come up, a cluster that does not
converge); :func:`start_or_skip` turns it into a skip that says so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import NoReturn

from tests.support.pods import free_port
from tests.support.redis_server import answers_ping

REQUIRE_ENV = "WSNODE_TEST_REQUIRE_CLUSTERS"
"""Set to 1 (as a CI that installs Redis may) to fail instead of skipping."""


class Unavailable(RuntimeError):
    """The topology cannot run here; the message says why (for a skip)."""


def _binary(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise Unavailable(f"{name} is not installed (apt-get install redis-server)")
    return found


def command(port: int, *args: str, timeout: float = 5.0) -> str:
    """One command to ``127.0.0.1:port`` through ``redis-cli`` (its raw output)."""
    done = subprocess.run([_binary("redis-cli"), "-h", "127.0.0.1", "-p", str(port), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"redis-cli -p {port} {' '.join(args)}: "
                           f"{(done.stderr or done.stdout).strip()}")
    return done.stdout


def info(port: int, section: str) -> dict[str, str]:
    """``INFO section`` (or ``CLUSTER INFO`` for section ``cluster-info``) as a dict."""
    args = ["CLUSTER", "INFO"] if section == "cluster-info" else ["INFO", section]
    rows = (line.partition(":") for line in command(port, *args).splitlines())
    return {k.strip(): v.strip() for k, _, v in rows if v}


class RedisNode:
    """One ``redis-server`` process on a free port, in a directory of its own."""

    def __init__(self, workdir: Path, name: str, *, sentinel: bool = False) -> None:
        self.name = name
        self.port = free_port()
        self.bus_port = free_port()
        self.sentinel = sentinel
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.args: list[str] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def proc_pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self, *args: str) -> None:
        """Start the server (returns at once; :meth:`await_ping` waits). ``args``
        are remembered: :meth:`restart` uses them again."""
        self.args = list(args) or self.args
        base = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--logfile", str(self.dir / "redis.log"), "--protected-mode", "no"]
        if self.sentinel:
            argv = [_binary("redis-server"), str(self.dir / "sentinel.conf"), "--sentinel", *base]
        else:
            argv = [_binary("redis-server"), *base, "--save", "", "--appendonly", "yes",
                    "--appendfsync", "always", "--repl-diskless-sync", "yes",
                    "--repl-diskless-sync-delay", "0", *self.args]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def await_ping(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise Unavailable(f"redis node {self.name} exited {self.proc.returncode}: "
                                  f"{self.tail()}")
            if self._ping():
                return
            time.sleep(0.05)
        raise Unavailable(f"redis node {self.name} did not answer PING within {timeout:.0f}s")

    def _ping(self) -> bool:
        return answers_ping(self.port)

    def kill(self) -> None:
        """SIGKILL: what a crash of its machine looks like to the others."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.spawn()
        self.await_ping()

    def tail(self, lines: int = 10) -> str:
        log = self.dir / "redis.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:])


class RedisClusterServers:
    """A Redis Cluster of ``masters`` masters with one replica each (see the module)."""

    def __init__(self, workdir: Path, masters: int = 3, node_timeout_ms: int = 2000) -> None:
        self.dir = workdir
        self.node_timeout_ms = node_timeout_ms
        self.nodes = [RedisNode(workdir, f"node{i + 1}") for i in range(2 * masters)]
        self.masters_wanted = masters

    @property
    def url(self) -> str:
        """``redis+cluster://`` naming the first three nodes (the client finds the rest)."""
        return "redis+cluster://" + ",".join(n.address for n in self.nodes[:3])

    def start(self, timeout: float = 60.0) -> RedisClusterServers:
        try:
            self._start(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            node.spawn("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                       "--cluster-node-timeout", str(self.node_timeout_ms),
                       "--cluster-port", str(node.bus_port),
                       # A replica that lost its master for a while may still take over.
                       "--cluster-replica-validity-factor", "0")
        for node in self.nodes:
            node.await_ping(deadline - time.monotonic())
        try:
            done = subprocess.run(
                [_binary("redis-cli"), "--cluster", "create",
                 *(n.address for n in self.nodes), "--cluster-replicas", "1", "--cluster-yes"],
                capture_output=True, text=True, timeout=max(5.0, deadline - time.monotonic()),
                check=False)
        except subprocess.TimeoutExpired as exc:
            raise Unavailable(f"redis-cli --cluster create timed out: {exc}") from exc
        if done.returncode != 0:
            raise Unavailable(f"redis-cli --cluster create exited {done.returncode}: "
                              f"{(done.stderr or done.stdout).strip()[-500:]}")
        self.await_healthy(deadline - time.monotonic())

    def await_healthy(self, timeout: float = 60.0) -> None:
        """Wait until every node runs, sees ``cluster_state:ok``, knows every
        other node, and each master has a replica in sync."""
        deadline = time.monotonic() + timeout
        why = ""
        while time.monotonic() < deadline:
            try:
                why = self._unhealthy()
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                why = str(exc)
            if not why:
                return
            time.sleep(0.2)
        raise Unavailable(f"the Redis Cluster is not healthy within {timeout:.0f}s: {why}")

    def _unhealthy(self) -> str:
        for node in self.nodes:
            if not node.running:
                return f"{node.name} is not running"
            state = info(node.port, "cluster-info")
            if state.get("cluster_state") != "ok":
                return f"{node.name}: cluster_state {state.get('cluster_state')}"
            if state.get("cluster_known_nodes") != str(len(self.nodes)):
                return f"{node.name} knows {state.get('cluster_known_nodes')} nodes"
        masters = self.masters()
        if len(masters) != self.masters_wanted:
            return f"{len(masters)} masters"
        for master in masters:
            repl = info(master.port, "replication")
            if repl.get("connected_slaves") != "1" or "state=online" not in repl.get("slave0",
                                                                                     ""):
                return f"{master.name} has no replica online"
        return ""

    def role(self, node: RedisNode) -> str:
        return info(node.port, "replication").get("role", "?")

    def masters(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.running and self.role(n) == "master"]

    def master_of(self, key: str) -> RedisNode:
        """The node that serves ``key``'s slot now (as a running node sees it)."""
        from redis.crc import key_slot

        slot = key_slot(key.encode())
        for node in self.nodes:
            if not node.running:
                continue
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                for line in command(node.port, "CLUSTER", "NODES").splitlines():
                    fields = line.split()
                    if "master" not in fields[2] or "fail" in fields[2]:
                        continue
                    for span in fields[8:]:
                        lo, _, hi = span.partition("-")
                        if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                            return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no node serves {key!r}")

    def node_id(self, node: RedisNode) -> str:
        return command(node.port, "CLUSTER", "MYID").strip()

    def replica_of(self, master: RedisNode) -> RedisNode:
        """The node replicating ``master`` now."""
        port = int(info(master.port, "replication")["slave0"].split("port=")[1].split(",")[0])
        return next(n for n in self.nodes if n.port == port)

    def move_slot(self, key: str, to: RedisNode) -> None:
        """Move the slot of ``key``, with its keys, to master ``to``: the way
        ``redis-cli --cluster reshard`` does it (IMPORTING/MIGRATING, MIGRATE,
        then SETSLOT NODE on both ends). Clients with the old map get MOVED."""
        from redis.crc import key_slot

        slot, src = str(key_slot(key.encode())), self.master_of(key)
        src_id, dst_id = self.node_id(src), self.node_id(to)
        command(to.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        command(src.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while keys := command(src.port, "CLUSTER", "GETKEYSINSLOT", slot, "100").split():
            command(src.port, "MIGRATE", "127.0.0.1", str(to.port), "", "0", "5000",
                    "KEYS", *keys)
        for node in (to, src):
            command(node.port, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    def commandstats(self) -> dict[str, int]:
        """Calls per command summed over the running nodes (``INFO commandstats``)."""
        out: dict[str, int] = {}
        for node in self.nodes:
            if node.running:
                for name, value in info(node.port, "commandstats").items():
                    calls = int(value.split(",")[0].removeprefix("calls="))
                    out[name.removeprefix("cmdstat_")] = out.get(
                        name.removeprefix("cmdstat_"), 0) + calls
        return out

    def close(self) -> None:
        for node in self.nodes:
            node.kill()


class SentinelServers:
    """One master, one replica and three sentinels watching service ``name``."""

    def __init__(self, workdir: Path, name: str = "wsnode", down_after_ms: int = 2000) -> None:
        self.name = name
        self.master = RedisNode(workdir, "master")
        self.replica = RedisNode(workdir, "replica")
        self.sentinels = [RedisNode(workdir, f"sentinel{i + 1}", sentinel=True)
                          for i in range(3)]
        for s in self.sentinels:
            (s.dir / "sentinel.conf").write_text(
                f"sentinel monitor {name} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {name} {down_after_ms}\n"
                f"sentinel failover-timeout {name} 10000\n"
                f"sentinel parallel-syncs {name} 1\n")

    @property
    def url(self) -> str:
        return ("redis+sentinel://" + ",".join(s.address for s in self.sentinels)
                + f"/{self.name}")

    @property
    def data_nodes(self) -> list[RedisNode]:
        return [self.master, self.replica]

    def start(self, timeout: float = 60.0) -> SentinelServers:
        try:
            deadline = time.monotonic() + timeout
            self.master.spawn()
            self.replica.spawn("--replicaof", "127.0.0.1", str(self.master.port))
            for node in self.data_nodes:
                node.await_ping(deadline - time.monotonic())
            for s in self.sentinels:
                s.spawn()
            for s in self.sentinels:
                s.await_ping(deadline - time.monotonic())
            self.await_healthy(deadline - time.monotonic())
        except BaseException:
            self.close()
            raise
        return self

    def current_master(self) -> RedisNode:
        """The data node the sentinels name as master now."""
        for s in self.sentinels:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                out = command(s.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
                port = int(out.split()[1])
                return next(n for n in self.data_nodes if n.port == port)
        raise RuntimeError("no sentinel answers")

    def await_healthy(self, timeout: float = 60.0) -> None:
        """Every sentinel agrees on the master, knows the replica and the other
        sentinels; the replica is online."""
        deadline = time.monotonic() + timeout
        why = ""
        while time.monotonic() < deadline:
            try:
                why = self._unhealthy()
            except (RuntimeError, subprocess.TimeoutExpired, StopIteration, IndexError) as exc:
                why = repr(exc)
            if not why:
                return
            time.sleep(0.2)
        raise Unavailable(f"the Sentinel set is not healthy within {timeout:.0f}s: {why}")

    def _unhealthy(self) -> str:
        master = self.current_master()
        repl = info(master.port, "replication")
        if repl.get("role") != "master" or "state=online" not in repl.get("slave0", ""):
            return f"{master.name} has no replica online"
        for s in self.sentinels:
            state = info(s.port, "sentinel")
            row = state.get("master0", "")
            if "status=ok" not in row or f":{master.port}," not in row \
                    or "slaves=1" not in row or "sentinels=3" not in row:
                return f"{s.name}: {row}"
        return ""

    def close(self) -> None:
        for node in [*self.sentinels, *self.data_nodes]:
            node.kill()


def start_or_skip(make: type[RedisClusterServers] | type[SentinelServers],
                  workdir: Path) -> RedisClusterServers | SentinelServers:
    """A started topology, or a skip that says why not (a failure when
    ``WSNODE_TEST_REQUIRE_CLUSTERS=1``)."""
    try:
        return make(workdir).start()
    except Unavailable as exc:
        skip_or_fail(f"{make.__name__} cannot start on this machine: {exc}")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test for ``reason``, or fail it when ``WSNODE_TEST_REQUIRE_CLUSTERS=1``."""
    import pytest

    print(f"\nSKIP: {reason}")
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(reason)
    pytest.skip(reason)
