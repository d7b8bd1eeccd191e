"""``make cluster HA=1`` (``CLUSTER_HA=1 scripts/cluster.py``), run as a person
runs it, on free ports: three pods behind haproxy on a 3-node RabbitMQ cluster
and a Redis Sentinel set of its own; the pods start on different RabbitMQ
nodes and use ``redis+sentinel://``, the failover commands it prints work (a
RabbitMQ node stopped, the Redis master failed over), a message stored and
delivered after both reaches a client through the balancer, and Ctrl-C stops
every process it started."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest
import redis

from tests.deploy.loopback import POD_HOSTS, SPARE_HOSTS, shared_free_port
from tests.support.client import Client
from tests.support.cluster import REDIS_URL
from tests.support.pods import free_port
from wsnode.auth import mint_token

# Its 3-node RabbitMQ cluster starts in the worker of the suite's own one
# (tests/conftest.py's rabbit_cluster): two starting at once on a busy 2-core
# machine can both time out.
pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("rabbit_cluster")]

ROOT = Path(__file__).resolve().parents[2]


class Script:
    """``scripts/cluster.py`` in the background, its output collected."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "cluster.py")],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, cwd=ROOT)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text, re.MULTILINE)
            if found:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.text[-4000:]}")


def _secrets(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


async def test_make_cluster_ha(tmp_path: Path, haproxy: str) -> None:
    prefix = f"wsha{uuid.uuid4().hex[:8]}"
    hosts = POD_HOSTS + SPARE_HOSTS
    pod_port = shared_free_port(hosts)
    admin_port = shared_free_port(hosts, avoid=(pod_port,))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSNODE_", "CLUSTER_"))}
    env.update(CLUSTER_HA="1", CLUSTER_LB_PORT=str(free_port()),
               CLUSTER_STATS_PORT=str(free_port()), CLUSTER_POD_PORT=str(pod_port),
               CLUSTER_ADMIN_PORT=str(admin_port), WSNODE_KEY_PREFIX=prefix,
               WSNODE_REDIS_URL=REDIS_URL, WSNODE_DEV_ENV=str(tmp_path / "dev.env"))
    script = Script(env)
    try:
        try:
            script.wait_for(r"^Ctrl-C drains", 150)
        except AssertionError:
            found = re.search(r"^cluster: HA=1: (.*)", script.text, re.MULTILINE)
            if script.proc.poll() is not None and found:
                pytest.skip(f"make cluster HA=1 cannot start its backends: {found.group(1)}")
            raise
        nodes = re.findall(r"^  (wsnode-ha\d-\w+@localhost)  (amqp://\S+)$", script.text,
                           re.MULTILINE)
        assert len(nodes) == 3, script.text
        # Every pod on another node (each pod's list starts with another one).
        connected = {pod: script.wait_for(rf"^{pod} \|.*bus connected to (\S+),", 30).group(1)
                     for pod in ("pod-1", "pod-2", "pod-3")}
        assert sorted(connected.values()) == sorted(url for _, url in nodes), connected

        secrets = _secrets(tmp_path / "dev.env")
        balancer = script.wait_for(r"balancer  (ws://\S+)", 1).group(1)
        client = await Client.open(balancer, mint_token(secrets["WSNODE_JWT_SECRET"], "alice",
                                                         3600))
        # The failover command it prints, as a person would paste it.
        stop_app = script.wait_for(r"^  (HOME=.* stop_app)$", 1).group(1)
        done = await asyncio.to_thread(subprocess.run, stop_app, shell=True,
                                       capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        script.wait_for(r"^pod-1 \|.*bus reconnected to (\S+)", 60)

        # Redis: the pods are on Sentinel; its failover command, pasted.
        sentinel_url = script.wait_for(r"^use (redis\+sentinel://\S+)$", 1).group(1)
        assert re.search(rf"backends  {re.escape(sentinel_url)} ", script.text)
        master = script.wait_for(r"^Redis Sentinel \(HA=1\): master (\S+) ", 1).group(1)
        failover = script.wait_for(r"^  (redis-cli -p \d+ SENTINEL FAILOVER \w+)$", 1).group(1)
        ask = script.wait_for(r"^  (redis-cli -p \d+ SENTINEL GET-MASTER-ADDR-BY-NAME \w+)$",
                              1).group(1)
        done = await asyncio.to_thread(subprocess.run, failover, shell=True,
                                       capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0 and done.stdout.strip() == "OK", done
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = await asyncio.to_thread(subprocess.run, ask, shell=True,
                                           capture_output=True, text=True, timeout=30,
                                           check=False)
            if ":".join(done.stdout.split()) != master:
                break
            await asyncio.sleep(0.2)
        assert ":".join(done.stdout.split()) != master, "the replica is master now"

        # Stored through the new master (the pods follow it: a store refused
        # while they switch is tried again, as a producer would).
        deadline = time.monotonic() + 30
        while True:
            send = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "wsctl", "send", "alice", "--type",
                                 "note", "--id", "ha-1", "--ack", "--json"],
                env={**env, **secrets, "WSNODE_NODE": f"http://127.0.0.2:{admin_port}"},
                capture_output=True, text=True, timeout=60, check=False)
            if send.returncode == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert send.returncode == 0, send.stderr
        assert orjson.loads(send.stdout)["stored"] is True
        frame = await client.expect("note", timeout=30)
        assert frame["id"] == "ha-1"
        await client.ack("ha-1")
        await client.close()
    finally:
        if script.proc.poll() is None:
            script.proc.send_signal(signal.SIGINT)
        try:
            code = script.proc.wait(90)
        except subprocess.TimeoutExpired:
            script.proc.kill()
            raise
        finally:
            _delete_keys(prefix)
    assert code == 0, script.text[-3000:]
    assert "cluster: stopped" in script.text
    log_dir = re.search(r"cluster: stopped \(logs in (\S+)\)", script.text)
    assert log_dir is not None
    # The RabbitMQ nodes and their epmd, Redis and the sentinels ran with their
    # home (or data directory) in that directory.
    assert not _processes_mentioning(log_dir.group(1))


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
    return found


def _delete_keys(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
