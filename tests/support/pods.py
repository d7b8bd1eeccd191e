"""Real ``wsnode serve`` processes for end-to-end tests.

A :class:`PodProcess` runs ``python -m wsnode serve`` on free loopback ports with
its own environment, waits until the admin ``/healthz`` answers, and is always
stopped by pid (SIGTERM, then SIGKILL) by the fixture that made it.
"""

from __future__ import annotations

import os
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from wsnode.auth import mint_token

SECRET = "test-secret-" + "0123456789abcdef" * 3
API_KEY = "test-api-key-0123456789"


def _below_ephemeral() -> tuple[int, int]:
    """Ports below the kernel's ephemeral range (Linux: 32768-60999), this
    process's share of them: pytest-xdist workers (``make test``) each take a
    slice of their own, so two workers never hand out the same port (a port
    probed free by one could be bound by the other's server a moment later)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    first, last = max(1024, low - 12_000), low - 1
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if worker.startswith("gw") and worker[2:].isdigit() and count > 1:
        share = (last - first + 1) // count
        first += int(worker[2:]) % count * share
        last = first + share - 1
    return first, last


_RANGE = _below_ephemeral()
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port for a server a test starts, outside the kernel's
    ephemeral range: a server restarted on its port (a RabbitMQ or Redis node
    in a fault test) could otherwise find it taken meanwhile by the local port
    of some outgoing connection (seen: a RabbitMQ test node's restart failing
    with eaddrinuse). Never the same port twice in one test process."""
    low, high = _RANGE
    for _ in range(500):
        port = random.randint(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as sock:  # that range is full: any free port
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def descriptor_limit(soft: int, hard: int | None = None) -> Callable[[], None]:
    """A ``preexec`` for :class:`PodProcess`: the child starts with this
    ``RLIMIT_NOFILE`` (``hard`` defaults to ``soft``: the pod cannot raise it)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, soft if hard is None else hard))
    return limit


def base_env(**extra: str) -> dict[str, str]:
    """A clean WSNODE_* environment: the test secret and key, nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSNODE_")}
    env.update(WSNODE_JWT_SECRET=SECRET, WSNODE_API_KEY=API_KEY, WSNODE_LOG_LEVEL="INFO")
    env.update(extra)
    return env


_SERVING = re.compile(rb"serving ws://[^ ]+:(\d+)/ws \(admin :(\d+)")


class PodProcess:
    """One ``wsnode serve`` child process.

    It binds port 0 for both ports and the ports it got are read from its
    ``serving`` log line: picking a free port first and binding it later races
    with every other process on the machine.
    """

    def __init__(self, pod_id: str, log_dir: Path, env: dict[str, str] | None = None,
                 args: list[str] | None = None,
                 preexec: Callable[[], None] | None = None) -> None:
        self.pod_id = pod_id
        self.preexec = preexec  # run in the child before exec (e.g. descriptor_limit)
        self.port = 0
        self.admin_port = 0
        self.env = base_env(**(env or {}))
        self.args = args or []
        self.log_path = log_dir / f"{pod_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> PodProcess:
        cmd = [sys.executable, "-m", "wsnode", "serve", "--pod-id", self.pod_id,
               "--host", "127.0.0.1", "--port", "0", "--admin-port", "0", *self.args]
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     preexec_fn=self.preexec)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pod {self.pod_id} exited {self.proc.returncode}:\n"
                                   + self.log())
            with self.log_path.open("rb") as f:
                f.seek(offset)
                found = _SERVING.search(f.read())
            if found:
                self.port, self.admin_port = int(found.group(1)), int(found.group(2))
                with urllib.request.urlopen(self.admin_url + "/healthz", timeout=5):
                    return self
            time.sleep(0.02)
        raise RuntimeError(f"pod {self.pod_id} not up within {timeout}s:\n" + self.log())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def token(self, user: str, ttl: float = 3600) -> str:
        return mint_token(SECRET, user, ttl)

    def api(self, method: str, path: str, body: Any = None, key: str | None = API_KEY,
            timeout: float = 10) -> tuple[int, Any]:
        """Call the admin API; returns (status, decoded JSON or text)."""
        data = orjson.dumps(body) if body is not None else None
        req = urllib.request.Request(self.admin_url + path, data=data, method=method)
        if key is not None:
            req.add_header("Authorization", f"Bearer {key}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return status, raw.decode(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; safe to call twice."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
