"""Issue 3 must-shows: real pods sharing presence, limits and ACKs in a real Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import redis.asyncio as aioredis

from tests.conftest import PodFactory
from tests.support.client import Client
from tests.support.cluster import REDIS_URL, ClusterSlice
from tests.support.pods import PodProcess, base_env
from tests.support.redis_server import RedisServer
from tests.support.waits import api, eventually
from wsnode.keys import RedisKeys

T = TypeVar("T")


@pytest.fixture
def prefix(cluster: ClusterSlice) -> str:
    return cluster.prefix


@pytest.fixture
async def shared_redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    yield client
    await client.aclose()


def cluster_env(prefix: str, redis_url: str = REDIS_URL, **extra: str) -> dict[str, str]:
    """Redis only: these tests are about state shared in Redis, not the bus."""
    return {"WSNODE_REDIS_URL": redis_url, "WSNODE_KEY_PREFIX": prefix,
            "WSNODE_HEARTBEAT_INTERVAL": "500ms", "WSNODE_ACK_RETRY_INTERVAL": "300ms",
            "WSNODE_ACK_MAX_ATTEMPTS": "5", **extra}


async def test_three_connections_on_two_pods(
        pod_factory: PodFactory, cluster: ClusterSlice, prefix: str, shared_redis: Any) -> None:
    a = cluster.adopt(pod_factory("pod-a", env=cluster_env(prefix)))
    b = cluster.adopt(pod_factory("pod-b", env=cluster_env(prefix)))
    user = "multi user:ユ"  # a space, a colon and non-ASCII survive every key and member
    token = a.token(user)
    c1 = await Client.open(a.ws_url, token)
    c2 = await Client.open(a.ws_url, token)
    c3 = await Client.open(b.ws_url, token)
    # wsctl reads Redis directly: no pod is asked.
    done = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "wsctl", "presence", "get", user, "--json"],
        env=base_env(**cluster_env(prefix)), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    got = orjson.loads(done.stdout)
    assert sorted((c["connId"], c["pod"]) for c in got["connections"]) == sorted(
        [(c1.conn_id, "pod-a"), (c2.conn_id, "pod-a"), (c3.conn_id, "pod-b")])
    await c3.close()

    async def only_on_a() -> bool:
        users = (await api(a, "GET", "/v1/presence"))["users"]
        return users == [{"user": user, "connections": 2, "pods": ["pod-a"]}]
    await eventually(only_on_a, 5, "user on pod-a only")
    await c1.close()
    await c2.close()

    async def offline() -> bool:
        return (await api(b, "GET", "/v1/presence"))["users"] == []
    await eventually(offline, 5, "user offline")
    pods = (await api(a, "GET", "/v1/pods"))["pods"]
    assert [p["pod"] for p in pods] == ["pod-a", "pod-b"]
    done = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "wsctl", "presence", "get", user],
        env=base_env(**cluster_env(prefix)), capture_output=True, text=True, timeout=30)
    assert done.returncode == 3 and "offline" in done.stderr


async def test_sigkilled_pod_stops_counting_within_a_lease(
        pod_factory: PodFactory, cluster: ClusterSlice, prefix: str, shared_redis: Any) -> None:
    a = cluster.adopt(pod_factory("pod-a", env=cluster_env(prefix)))
    b = cluster.adopt(pod_factory("pod-b", env=cluster_env(prefix)))
    token = a.token("victim")
    await Client.open(a.ws_url, token)
    on_b = await Client.open(b.ws_url, token)
    assert (await api(b, "GET", "/v1/presence"))["users"][0]["pods"] == ["pod-a", "pod-b"]
    a.kill()
    loop = asyncio.get_running_loop()
    killed_at = loop.time()

    async def a_gone() -> bool:
        users = (await api(b, "GET", "/v1/presence"))["users"]
        return users == [{"user": "victim", "connections": 1, "pods": ["pod-b"]}]
    # Lease = 3 heartbeats = 1.5 s; plus one heartbeat, plus the 1 s live-pod cache.
    await eventually(a_gone, 3.5, "pod-a no longer counted")
    assert loop.time() - killed_at < 3.5
    report = await api(b, "POST", "/v1/send",
                       {"user": "victim", "envelope": {"type": "n", "payload": 1}})
    assert report["local"] == 1 and report["pods"] == [] and report["failedPods"] == []
    await on_b.expect("n")
    pod_names = [p["pod"] for p in (await api(b, "GET", "/v1/pods"))["pods"]]
    assert pod_names == ["pod-b"]
    keys = RedisKeys(prefix)

    async def purged() -> bool:
        entries = await shared_redis.hvals(keys.user_conns("victim"))
        return all(not v.startswith(b"pod-a ") for v in entries)
    await eventually(purged, 3, "pod-a's entries purged from Redis")


async def test_rate_limit_is_shared_across_pods(
        pod_factory: PodFactory, cluster: ClusterSlice, prefix: str, shared_redis: Any) -> None:
    env = cluster_env(prefix, WSNODE_RATE_LIMIT="10/60s")
    a = cluster.adopt(pod_factory("pod-a", env=env, args=["--app", "tests.e2e.app"]))
    b = cluster.adopt(pod_factory("pod-b", env=env, args=["--app", "tests.e2e.app"]))
    token = a.token("spammer")
    on_a = await Client.open(a.ws_url, token)
    on_b = await Client.open(b.ws_url, token)
    for i in range(10):
        await on_a.send({"type": "echo", "payload": i})
        await on_b.send({"type": "echo", "payload": i})
    frames = [await on_a.recv() for _ in range(10)] + [await on_b.recv() for _ in range(10)]
    accepted = sum(1 for f in frames if f["type"] == "echo")
    limited = sum(1 for f in frames if f["type"] == "error"
                  and f["payload"]["code"] == "rate_limited")
    assert accepted == 10 and limited == 10


async def test_acked_messages_follow_the_user_to_any_pod(
        pod_factory: PodFactory, cluster: ClusterSlice, prefix: str, shared_redis: Any) -> None:
    a = cluster.adopt(pod_factory("pod-a", env=cluster_env(prefix)))
    b = cluster.adopt(pod_factory("pod-b", env=cluster_env(prefix)))
    for i in range(1, 4):
        report = await api(a, "POST", "/v1/send", {"user": "roamer", "envelope": {
            "type": "note", "id": f"n{i}", "requiresAck": True, "payload": i}})
        assert report["stored"] and report["seq"] == i
    dup = await api(b, "POST", "/v1/send", {"user": "roamer", "envelope": {
        "type": "note", "id": "n2", "requiresAck": True, "payload": 2}})
    assert dup["duplicate"] is True and dup["seq"] == 2
    client = await Client.open(b.ws_url, b.token("roamer"))
    assert [(f["id"], f["seq"]) for f in client.replay] == [("n1", 1), ("n2", 2), ("n3", 3)]
    for frame in client.replay:
        await client.ack(frame["id"])
    await client.send({"type": "restore"})
    assert (await client.expect("restore"))["payload"]["replayed"] == 0
    await client.close()
    again = await Client.open(a.ws_url, a.token("roamer"))
    assert again.replay == []
    await again.nothing_within(0.7)  # no resend from either pod after the acks


async def test_redis_restart_with_aof_loses_nothing(
        pod_factory: PodFactory, cluster: ClusterSlice, prefix: str, tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    try:
        env = cluster_env(prefix, server.url)
        a = cluster.adopt(pod_factory("pod-a", env=env, args=["--app", "tests.e2e.app"]))
        b = cluster.adopt(pod_factory("pod-b", env=env, args=["--app", "tests.e2e.app"]))
        online = [await Client.open(a.ws_url, a.token(f"u{i}")) for i in range(3)]
        online.append(await Client.open(b.ws_url, b.token("u3")))
        for i in range(20):
            await api(a, "POST", "/v1/send", {"user": "offline", "envelope": {
                "type": "note", "id": f"m{i}", "requiresAck": True, "payload": i}})

        server.kill()

        async def not_ready(pod: PodProcess) -> bool:
            status, body = await asyncio.to_thread(pod.api, "GET", "/readyz", None, None)
            return status == 503 and body["checks"]["presence"] is False
        await eventually(lambda: not_ready(a), 5, "pod-a not ready without Redis")
        await eventually(lambda: not_ready(b), 5, "pod-b not ready without Redis")
        # Clients keep working while Redis is down (the limiter fails open).
        await online[0].send({"type": "echo", "payload": "during outage"})
        assert (await online[0].expect("echo"))["payload"] == "during outage"
        await asyncio.sleep(2.0)  # longer than a lease: the pods' leases lapse meanwhile

        server.start()

        async def whole() -> bool:
            status, body = await asyncio.to_thread(a.api, "GET", "/v1/presence")
            if status != 200:
                return False
            return {u["user"]: u["connections"] for u in body["users"]} == {
                "u0": 1, "u1": 1, "u2": 1, "u3": 1}
        await eventually(whole, 15, "presence whole again after the restart")
        async def ready(pod: PodProcess) -> bool:
            status, _ = await asyncio.to_thread(pod.api, "GET", "/readyz", None, None)
            return status == 200
        for pod in (a, b):
            await eventually(lambda pod=pod: ready(pod), 15, f"{pod.pod_id} ready again")
        late = await Client.open(b.ws_url, b.token("offline"))
        assert [f["id"] for f in late.replay] == [f"m{i}" for i in range(20)]
        for client in online:
            assert client.ws.close_code is None  # never dropped by the outage
    finally:
        server.kill()
