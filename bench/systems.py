"""The systems ``bench/closed_loop.py`` compares, as processes it starts and stops by pid.

- ``wsnode``: ``wsnode serve`` pods in cluster mode (the chat example app, rate
  limit off), a key prefix of the run's own.
- ``socketio``: ``node bench/peers/sio_server.js`` processes, socket.io 4.8 with
  ``@socket.io/redis-adapter`` (``make peers-deps`` installs it).
- ``pysocketio``: ``bench/peers/pysio_server.py`` processes, python-socketio with
  ``AsyncRedisManager``.

:class:`Brokers` are a private ``redis-server`` (no persistence: the peers' pub/sub
needs none, and wsnode's at-most-once path writes none) and a private one-node
RabbitMQ, so that their CPU time is this run's alone. ``shared`` uses the
machine's Redis and RabbitMQ instead; their CPU then includes whatever else
uses them. :class:`CpuMeter` reads the CPU time of process trees from ``/proc``
(psutil): a server's figure is its own, never the load client's.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "bench" / "peers"
SYSTEMS = ("wsnode", "socketio", "pysocketio")
SHARED_REDIS = "redis://127.0.0.1:6379/0"
SHARED_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
_LISTENING = re.compile(rb"(?:listening |serving ws://[^ ]+:)(\d+)")
_ADMIN = re.compile(rb"\(admin :(\d+)")  # wsnode's line: "serving ws://h:p/ws (admin :N, ...)"


class Unavailable(RuntimeError):
    """A system cannot run on this machine (its message says why)."""


class Proc:
    """One server process, its output in ``log``; ``port`` (and a wsnode pod's
    ``admin_port``) read from its log line."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        self.offset = log.stat().st_size if log.exists() else 0  # an earlier run's lines
        with log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=ROOT)
        self.port = self.admin_port = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_port(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"{self.name} exited {self.proc.returncode}: "
                                  + self.log.read_text(errors="replace")[-600:])
            with self.log.open("rb") as f:
                f.seek(self.offset)
                text = f.read()
            found = _LISTENING.search(text)
            if found:
                self.port = int(found.group(1))
                admin = _ADMIN.search(text)
                self.admin_port = int(admin.group(1)) if admin else 0
                return self.port
            time.sleep(0.05)
        raise Unavailable(f"{self.name} did not listen within {timeout:.0f}s")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL of its process group (by pid). Safe twice."""
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


class Brokers:
    """Redis and RabbitMQ for a run: private (started here) or the shared ones."""

    def __init__(self, workdir: Path, *, shared: bool, rabbit: bool = True) -> None:
        self.workdir, self.shared = workdir, shared
        self.redis_url, self.amqp_url = SHARED_REDIS, SHARED_AMQP
        self._redis: Proc | None = None
        self._rabbit: object | None = None  # tests.support's RabbitCluster of one node
        self.want_rabbit = rabbit

    def start(self) -> Brokers:
        if self.shared:
            return self
        port = _free_port()
        binary = shutil.which("redis-server")
        if binary is None:
            raise Unavailable("redis-server is not installed")
        rdir = self.workdir / f"redis-{port}"
        rdir.mkdir(parents=True)
        self._redis = Proc("redis", [binary, "--port", str(port), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no", "--dir", str(rdir),
                                     "--loglevel", "notice"], dict(os.environ),
                           self.workdir / "redis.log")
        _wait_connect(port, self._redis)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        if self.want_rabbit:
            sys.path.insert(0, str(ROOT))
            from tests.support.rabbit_cluster import RabbitCluster
            from tests.support.rabbit_cluster import Unavailable as RabbitUnavailable
            try:
                self._rabbit = RabbitCluster(self.workdir, size=1, name="wsnode-bench").start(120)
            except RabbitUnavailable as exc:
                raise Unavailable(str(exc)) from exc
            self.amqp_url = self._rabbit.urls[0]
        return self

    def cpu_groups(self) -> dict[str, list[int]]:
        """Pids (and their children) whose CPU time is the brokers'."""
        if self.shared:
            return {"redis": _pids_named("redis-server", ":6379"),
                    "rabbitmq": _pids_named("beam.smp", "")}
        groups = {"redis": [self._redis.pid] if self._redis else []}
        if self._rabbit is not None:
            node = self._rabbit.nodes[0]  # type: ignore[attr-defined]
            epmd = self._rabbit._epmd  # type: ignore[attr-defined]
            groups["rabbitmq"] = [node.proc.pid, *([epmd.pid] if epmd else [])]
        return groups

    def close(self) -> None:
        if self._rabbit is not None:
            self._rabbit.close()  # type: ignore[attr-defined]
            self._rabbit = None
        if self._redis is not None:
            self._redis.stop()
            self._redis = None


class System:
    """``pods`` server processes of one kind on the brokers; ``ports`` in pod order."""

    def __init__(self, kind: str, pods: int, brokers: Brokers, workdir: Path,
                 **settings: str) -> None:
        if kind not in SYSTEMS:
            raise ValueError(f"unknown system {kind!r} (one of {', '.join(SYSTEMS)})")
        self.kind, self.brokers = kind, brokers
        self.prefix = f"cl{uuid.uuid4().hex[:8]}"
        self.names = [f"pod-{chr(ord('a') + i)}" for i in range(pods)]
        self.procs = [Proc(n, self._command(n), self._env(settings), workdir / f"{kind}-{n}.log")
                      for n in self.names]
        self.proto = "wsnode" if kind == "wsnode" else "socketio"

    def _command(self, name: str) -> list[str]:
        if self.kind == "wsnode":
            return [sys.executable, "-m", "wsnode", "serve", "--insecure", "--pod-id",
                    f"{self.prefix}-{name}", "--host", "127.0.0.1", "--port", "0",
                    "--admin-port", "0", "--app", "wsnode.examples.chat"]
        if self.kind == "socketio":
            node = shutil.which("node")
            if node is None or not (PEERS / "node_modules" / "socket.io").is_dir():
                raise Unavailable("the socket.io peer needs node and `make peers-deps`")
            return [node, str(PEERS / "sio_server.js"), "--redis", self.brokers.redis_url,
                    "--key", self.prefix]
        return [sys.executable, str(PEERS / "pysio_server.py"), "--redis",
                self.brokers.redis_url, "--channel", self.prefix]

    def _env(self, settings: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WSNODE_")}
        if self.kind == "wsnode":
            env.update(WSNODE_REDIS_URL=self.brokers.redis_url,
                       WSNODE_AMQP_URL=self.brokers.amqp_url, WSNODE_KEY_PREFIX=self.prefix,
                       WSNODE_RATE_LIMIT="0", WSNODE_LOG_LEVEL="INFO",
                       WSNODE_SEND_QUEUE_SIZE="8MiB",
                       # The load client is trusted: the limits on what a client may
                       # store through the chat app must not throttle ACK runs.
                       WSNODE_RELAYED_MAX_PENDING="1000000", WSNODE_RELAYED_BUDGET="1000000")
            env.update(settings)
            # WSNODE_BENCH_POD_<NAME>=value: a pod setting for an A/B run, as in
            # bench/cluster.py (e.g. WSNODE_BENCH_POD_RATE_LIMIT=1000000/10s: the
            # limiter on, never refusing).
            env.update({f"WSNODE_{k[len('WSNODE_BENCH_POD_'):]}": v
                        for k, v in os.environ.items() if k.startswith("WSNODE_BENCH_POD_")})
        return env

    def wait_ready(self) -> list[int]:
        return [p.wait_port() for p in self.procs]

    @property
    def ports(self) -> list[int]:
        return [p.port for p in self.procs]

    @property
    def admin_ports(self) -> list[int]:
        """wsnode pods' admin ports (``/metrics``); empty for the peers."""
        return [p.admin_port for p in self.procs if p.admin_port]

    def cpu_groups(self) -> dict[str, list[int]]:
        groups = {p.name: [p.pid] for p in self.procs}
        for name, pids in self.brokers.cpu_groups().items():
            if name == "redis" or self.kind == "wsnode":  # the peers use no RabbitMQ
                groups[name] = pids
        return groups

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


@contextlib.contextmanager
def running(kind: str, pods: int, brokers: Brokers, workdir: Path,
            **settings: str) -> Iterator[System]:
    system = System(kind, pods, brokers, workdir, **settings)
    try:
        system.wait_ready()
        yield system
    finally:
        system.stop()


class CpuMeter:
    """CPU seconds (user + system) of process trees, read at two instants."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = {name: [psutil.Process(pid) for pid in pids]
                       for name, pids in groups.items()}

    def read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, procs in self.groups.items():
            total = 0.0
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    for p in [proc, *proc.children(recursive=True)]:
                        with contextlib.suppress(psutil.Error):
                            t = p.cpu_times()
                            total += t.user + t.system
            out[name] = total
        return out


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (every core), since boot."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_connect(port: int, proc: Proc, timeout: float = 10) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise Unavailable(f"{proc.name} exited {proc.proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.02)
    raise Unavailable(f"{proc.name} did not listen on {port}")


def _pids_named(name: str, needle: str) -> list[int]:
    return [p.pid for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] == name and needle in " ".join(p.info["cmdline"] or [])]


def workdir() -> Path:
    base = Path(os.environ.get("WSNODE_BENCH_LOGS", tempfile.gettempdir()))
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="closed-loop-", dir=base))
