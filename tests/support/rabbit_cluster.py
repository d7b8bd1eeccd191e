"""A private RabbitMQ cluster on loopback, for tests that stop broker nodes.

Never the shared broker on 5672: every node has its own name
(``wsnode-t1-<run>@localhost``), AMQP and distribution ports, data and log
directories under the test's tmp dir, an empty plugin list and its own config
file (the system's ``/etc/rabbitmq`` files are not read). The nodes register
with an ``epmd`` of their own on a free port, and share an Erlang cookie
through a ``HOME`` of their own, so neither the shared broker's node nor its
CLI tools can be reached from here, nor these from there.

:meth:`RabbitCluster.start` starts the nodes in parallel, then joins the others
to the first (``stop_app``, ``join_cluster``, ``start_app``). Every process is
stopped by its pid: ``rabbitmqctl -n NODE stop``, then SIGKILL of what is left
(the node, then the epmd). Starting takes some seconds per node on a busy
machine: start one cluster per test module.

:class:`Unavailable` says why a cluster cannot start on this machine (no
RabbitMQ installed, a node that does not come up); callers skip with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support.pods import free_port

SERVER_BIN = Path("/usr/lib/rabbitmq/bin")
"""Where Debian's package keeps the real scripts (``/usr/sbin`` has wrappers
that switch to the rabbitmq user and the system's files)."""


class Unavailable(RuntimeError):
    """The cluster cannot run here; the message says why (for a skip)."""


def _tool(name: str) -> str:
    for candidate in (SERVER_BIN / name, Path(shutil.which(name) or "")):
        if candidate.name and candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise Unavailable(f"{name} is not installed (apt-get install rabbitmq-server)")


class RabbitNode:
    """One ``rabbitmq-server`` process of a :class:`RabbitCluster`."""

    def __init__(self, cluster: RabbitCluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"{cluster.name}{index + 1}-{cluster.run}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.dir = cluster.dir / f"node{index + 1}"
        self.proc: subprocess.Popen[bytes] | None = None
        for sub in ("mnesia", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            "disk_free_limit.absolute = 50MB\n"
            "log.console = false\n"
            "log.file.level = info\n")
        (self.dir / "rabbitmq-env.conf").write_text("")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.cluster.home),
            ERL_EPMD_PORT=str(self.cluster.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.dir / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.cluster.plugins_file),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_PID_FILE=str(self.dir / "pid"),
            # Two schedulers: a test machine has few cores and other work to do.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+S 2:2 +sbwt none +sbwtdcpu none +sbwtdio none",
        )
        return env

    def spawn(self) -> None:
        """Start the node (returns at once; :meth:`await_startup` waits)."""
        log = (self.dir / "stdout.log").open("ab")
        self.proc = subprocess.Popen([_tool("rabbitmq-server")], env=self.env(), stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=self.dir)
        log.close()

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl -n NODE ARGS``; its stdout, or RuntimeError with its output."""
        env = self.env()
        # The CLI's own distribution port: one free port, not the default range
        # derived from the node's (which may run past 65535).
        ctl_port = str(free_port())
        env.update(RABBITMQ_CTL_DIST_PORT_MIN=ctl_port, RABBITMQ_CTL_DIST_PORT_MAX=ctl_port)
        env.pop("RABBITMQ_DIST_PORT")
        done = subprocess.run([_tool("rabbitmqctl"), "-n", self.name, *args], env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {self.name} {' '.join(args)} exited "
                               f"{done.returncode}: {(done.stderr or done.stdout).strip()}")
        return done.stdout

    def ctl_command(self, *args: str) -> str:
        """``rabbitmqctl -n NODE ARGS`` as a shell line, for a person to run."""
        env = self.env()
        pairs = [f"{k}={env[k]}" for k in ("HOME", "ERL_EPMD_PORT", "RABBITMQ_CONF_ENV_FILE")]
        return " ".join([*pairs, _tool("rabbitmqctl"), "-n", self.name, *args])

    def await_startup(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise Unavailable(f"{self.name} exited {self.proc.returncode}: {self.tail()}")
            try:
                self.ctl("await_startup", "--timeout", "10", timeout=30)
                return
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                last = str(exc)
                time.sleep(0.5)
        raise Unavailable(f"{self.name} not up within {timeout:.0f}s: {last}; {self.tail()}")

    def stop(self, timeout: float = 60) -> None:
        """Stop the node (``rabbitmqctl stop``, then SIGKILL by pid). Safe twice."""
        if not self.running:
            return
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.ctl("stop", timeout=timeout)
        self._reap(timeout=10)

    def kill(self) -> None:
        """SIGKILL the node: what a crash of its machine looks like to the others."""
        self._reap(timeout=0)

    def _reap(self, timeout: float) -> None:
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
        # The server runs in a process group of its own: its helpers
        # (erl_child_setup, inet_gethost) go with it, exited or not.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def tail(self, lines: int = 15) -> str:
        """The end of the node's log, for error messages."""
        logs = [*sorted((self.dir / "log").glob("*.log")), self.dir / "stdout.log"]
        text = "\n".join(p.read_text(errors="replace") for p in logs if p.exists())
        return "\n".join(text.strip().splitlines()[-lines:])


class RabbitCluster:
    """``size`` RabbitMQ nodes clustered on loopback (see the module)."""

    def __init__(self, workdir: Path, size: int = 3, name: str = "wsnode-t") -> None:
        self.run = uuid.uuid4().hex[:6]
        self.name = name
        self.dir = workdir / f"rabbit-{self.run}"
        self.home = self.dir / "home"
        self.home.mkdir(parents=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20).upper())
        cookie.chmod(0o400)
        self.plugins_file = self.dir / "enabled_plugins"
        self.plugins_file.write_text("[].\n")
        self.epmd_port = free_port()
        self._epmd: subprocess.Popen[bytes] | None = None
        self.nodes = [RabbitNode(self, i) for i in range(size)]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def url_list(self, first: int = 0) -> str:
        """The comma-separated ``WSNODE_AMQP_URL`` of every node, starting with
        node ``first`` (so pods can be spread over the nodes)."""
        urls = self.urls
        return ",".join(urls[first:] + urls[:first])

    def start(self, timeout: float = 180) -> RabbitCluster:
        """Start every node in parallel and cluster them; Unavailable (after
        stopping what started) when that cannot be done within ``timeout``."""
        try:
            self._start(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _start(self, timeout: float) -> None:
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        if not os.access(epmd, os.X_OK):
            raise Unavailable("epmd is not installed (apt-get install erlang-base)")
        self._epmd = subprocess.Popen([epmd, "-port", str(self.epmd_port), "-address",
                                       "127.0.0.1"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            node.spawn()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            for future in [pool.submit(n.await_startup, deadline - time.monotonic())
                           for n in self.nodes]:
                future.result()
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            try:
                node.ctl("stop_app")
                node.ctl("join_cluster", seed.name)
                node.ctl("start_app")
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                raise Unavailable(f"{node.name} could not join {seed.name}: {exc}") from exc
        self.await_members(self.nodes, deadline - time.monotonic())

    def running_nodes(self, via: RabbitNode | None = None) -> set[str]:
        """Names of the running members, as node ``via`` (default: any running) sees them."""
        asker = via or next(n for n in self.nodes if n.running)
        out = asker.ctl("cluster_status", "--formatter", "json", timeout=30)
        return set(json.loads(out)["running_nodes"])

    def await_members(self, nodes: Sequence[RabbitNode], timeout: float) -> None:
        """Wait until ``nodes`` are exactly the running members."""
        want = {n.name for n in nodes}
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired, StopIteration):
                seen = self.running_nodes(nodes[0])
                if seen == want:
                    return
            time.sleep(0.5)
        raise Unavailable(f"cluster members {sorted(seen)}, expected {sorted(want)}")

    def restart(self, node: RabbitNode, timeout: float = 120) -> None:
        """Start a stopped member again; it rejoins the cluster by itself."""
        node.spawn()
        node.await_startup(timeout)
        self.await_members(self.nodes, timeout)

    def close(self) -> None:
        """Stop every node, then the epmd, by pid. Safe twice."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda n: n.stop(timeout=30), self.nodes))
        if self._epmd is not None and self._epmd.poll() is None:
            self._epmd.kill()
            self._epmd.wait(5)


REQUIRE_ENV = "WSNODE_TEST_REQUIRE_CLUSTERS"
"""Set to 1 (as a CI that installs RabbitMQ may) to fail instead of skipping
when the cluster cannot start."""


def start_or_skip(workdir: Path, size: int = 3, timeout: float = 200) -> RabbitCluster:
    """A started cluster, or a skip that says why not (a failure when
    ``WSNODE_TEST_REQUIRE_CLUSTERS=1``). ``timeout`` stays under the tests'
    own (pytest-timeout counts the fixture in the first test using it)."""
    import pytest

    try:
        return RabbitCluster(workdir, size).start(timeout)
    except Unavailable as exc:
        reason = f"a {size}-node RabbitMQ cluster cannot start on this machine: {exc}"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(reason)
        pytest.skip(reason)


async def rabbit_cluster_up(cluster: RabbitCluster) -> RabbitCluster:
    """``cluster`` with every node running and clustered (restarting those an
    earlier test stopped)."""
    for node in cluster.nodes:
        if not node.running:
            await asyncio.to_thread(cluster.restart, node)
    return cluster
