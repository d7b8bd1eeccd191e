"""Pods on a real Redis Cluster (3 masters, one replica each, started by the suite):
``WSNODE_REDIS_URL=redis+cluster://...`` and everything works as on one Redis
(cross-pod delivery, presence, the limiter, ACKs and replay, drain, wsctl);
and a master killed under ACK-required traffic loses no accepted message: its
replica takes over (``appendfsync always``, and every ACK store confirmed by
the replica with WAIT before it counts), and the stall is printed. Some
recipients are offline until the end, so their messages live only in the store.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from functools import partial
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import PodFactory
from tests.support.client import Client
from tests.support.cluster import ClusterSlice
from tests.support.pods import PodProcess, base_env
from tests.support.redis_cluster import RedisClusterServers
from tests.support.traffic import Device, Traffic, all_delivered
from tests.support.waits import api, eventually
from wsnode.keys import RedisKeys

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


async def start(pod_factory: PodFactory, cluster: ClusterSlice, names: list[str],
                url: str, **env: str) -> list[PodProcess]:
    """Pods started in parallel (each waits for its /healthz) on ``url``."""
    def one(name: str) -> PodProcess:
        return cluster.adopt(pod_factory(name, env=cluster.env(redis_url=url, **env),
                                         args=["--app", "tests.e2e.app"]))
    pods = list(await asyncio.gather(*(asyncio.to_thread(one, n) for n in names)))
    for pod in pods:
        await eventually(partial(ready, pod), 60, f"{pod.pod_id} ready")
    return pods


async def ready(pod: PodProcess) -> bool:
    status, _ = await asyncio.to_thread(pod.api, "GET", "/readyz", None, None)
    return status == 200


def wsctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wsctl", *args], env=base_env(**env),
                          capture_output=True, text=True, timeout=60, check=False)


async def test_three_pods_work_unchanged_on_a_redis_cluster(
        pod_factory: PodFactory, cluster: ClusterSlice,
        redis_cluster_servers: RedisClusterServers) -> None:
    url = redis_cluster_servers.url
    env = {"WSNODE_RATE_LIMIT": "10/60s", "WSNODE_ACK_RETRY_INTERVAL": "30s"}
    a, b, c = await start(pod_factory, cluster, ["pod-a", "pod-b", "pod-c"], url, **env)
    tool = cluster.env(redis_url=url, **env)
    on_a = await Client.open(a.ws_url, a.token("zoe"))
    on_c = await Client.open(c.ws_url, c.token("zoe"))
    sender = await Client.open(b.ws_url, b.token("sender"))

    # Presence, through a pod and through wsctl (which reads the cluster itself).
    async def zoe_on_a_and_c() -> bool:
        users = (await api(b, "GET", "/v1/presence"))["users"]
        return any(u["user"] == "zoe" and u["pods"] == ["pod-a", "pod-c"] for u in users)
    await eventually(zoe_on_a_and_c, 10, "zoe on pod-a and pod-c")
    done = await asyncio.to_thread(wsctl, tool, "presence", "ls", "--json")
    assert done.returncode == 0, done.stderr
    rows = {u["user"]: u for u in orjson.loads(done.stdout)["users"]}
    assert rows["zoe"]["pods"] == ["pod-a", "pod-c"] and rows["zoe"]["connections"] == 2

    # Cross-pod, at most once: a handler on B, the API on B, wsctl.
    await sender.send({"type": "chat_message", "payload": {"to": "zoe", "text": "hi"}})
    for device in (on_a, on_c):
        assert (await device.expect("chat_message"))["payload"]["from"] == "sender"
    done = await asyncio.to_thread(wsctl, tool, "send", "zoe", "--type", "note",
                                   "--payload", '{"via": "wsctl"}', "--json")
    assert done.returncode == 0, done.stderr
    assert sorted(orjson.loads(done.stdout)["pods"]) == ["pod-a", "pod-c"]
    for device in (on_a, on_c):
        assert (await device.expect("note"))["payload"] == {"via": "wsctl"}

    # ACK-required: stored (seq per user), delivered to both devices, settled by
    # one ack, which wsctl --wait sees.
    waiting = asyncio.create_task(asyncio.to_thread(
        wsctl, tool, "send", "zoe", "--type", "alert", "--ack", "--id", "w-1", "--wait", "20"))
    for device in (on_a, on_c):
        frame = await device.expect("alert", timeout=20)
        assert (frame["id"], frame["seq"]) == ("w-1", 1)
    await on_a.ack("w-1")
    done = await waiting
    assert done.returncode == 0, done.stderr
    # An offline user gets hers in order on connect, at another pod than the sender's.
    for i in range(1, 4):
        report = await api(a, "POST", "/v1/send", {"user": "roamer", "envelope": {
            "type": "note", "id": f"n{i}", "requiresAck": True, "payload": i}})
        assert report["stored"] and report["seq"] == i
    roamer = await Client.open(c.ws_url, c.token("roamer"))
    assert [(f["id"], f["seq"]) for f in roamer.replay] == [("n1", 1), ("n2", 2), ("n3", 3)]

    # The limiter is shared: 10 a minute for one user, over two pods.
    on_b = await Client.open(b.ws_url, b.token("spammer"))
    on_c2 = await Client.open(c.ws_url, c.token("spammer"))
    for i in range(6):
        await on_b.send({"type": "echo", "payload": i})
        await on_c2.send({"type": "echo", "payload": i})
    frames = [await on_b.recv() for _ in range(6)] + [await on_c2.recv() for _ in range(6)]
    assert sum(f["type"] == "echo" for f in frames) == 10
    assert sum(f["type"] == "error" and f["payload"]["code"] == "rate_limited"
               for f in frames) == 2

    # The dead-letter index is bucketed: wsctl walks every bucket of the cluster.
    done = await asyncio.to_thread(wsctl, tool, "dlq", "ls", "--json")
    assert done.returncode == 0, done.stderr

    # Drain: pod-a's client is told to reconnect, then closed with 1012.
    done = await asyncio.to_thread(wsctl, tool, "drain", "pod-a", "--over", "0.5")
    assert done.returncode == 0, done.stderr
    assert (await on_a.expect("reconnect", timeout=20))["type"] == "reconnect"
    with pytest.raises(ConnectionClosed):
        await on_a.recv(timeout=20)
    assert on_a.ws.close_code == 1012
    for client in (on_c, sender, roamer, on_b, on_c2):
        await client.close()


USERS = 8  # 3 on pod-a, 3 on pod-b, 2 offline


def users_on(servers: RedisClusterServers, prefix: str, port: int, count: int) -> list[str]:
    """``count`` user ids whose keys the master on ``port`` serves."""
    keys, out, i = RedisKeys(prefix), [], 0
    while len(out) < count:
        user = f"u{i}"
        if servers.master_of(keys.user_conns(user)).port == port:
            out.append(user)
        i += 1
    return out


async def test_a_master_killed_under_ack_traffic_loses_no_accepted_message(
        pod_factory: PodFactory, cluster: ClusterSlice,
        redis_cluster_servers: RedisClusterServers) -> None:
    servers = redis_cluster_servers
    victim = servers.masters()[0]
    users = users_on(servers, cluster.prefix, victim.port, USERS)
    # Leases of 6 s ride out the failover (a few seconds): what is under test is
    # the store, not pods re-joining.
    env = {"WSNODE_RATE_LIMIT": "0", "WSNODE_ACK_MAX_ATTEMPTS": "100",
           "WSNODE_HEARTBEAT_INTERVAL": "2s", "WSNODE_ACK_RETRY_INTERVAL": "500ms"}
    a, b = await start(pod_factory, cluster, ["pod-a", "pod-b"], servers.url, **env)
    # Two users on each pod, two offline until the end: their messages live only
    # in the store meanwhile (a delivered message would hide a lost record).
    on_a, on_b, offline = users[:3], users[3:6], users[6:]
    devices = {u: Device(u, await Client.open(pod.ws_url, pod.token(u)))
               for pod, group in ((a, on_a), (b, on_b)) for u in group}
    flows = [Traffic(b, on_a, "to-a"), Traffic(a, on_b, "to-b"),
             Traffic(a, offline, "to-offline")]
    try:
        await eventually(holds(lambda: all(len(f.accepted) >= 30 for f in flows)), 60,
                         "traffic flowing both ways")
        killed_at = time.monotonic()
        await asyncio.to_thread(victim.kill)
        counts = [len(f.accepted) for f in flows]
        await eventually(holds(lambda: all(len(f.accepted) >= n + 30
                                           for f, n in zip(flows, counts, strict=True))),
                         90, "traffic flowing both ways after the failover")
        promoted = servers.master_of(RedisKeys(cluster.prefix).user_conns(users[0]))
    finally:
        for flow in flows:
            await flow.stop()
    for user in offline:
        devices[user] = Device(user, await Client.open(b.ws_url, b.token(user)))
    try:
        for flow in flows:
            await eventually(holds(partial(all_delivered, devices, flow)), 90,
                             f"every accepted message of {flow.tag} delivered")
        assert promoted is not victim
        assert all(d.closed is None for d in devices.values()), "clients stayed connected"
        stall = max(f.stall_after(killed_at) for f in flows)
        accepted = sum(len(f.accepted) for f in flows)
        copies = sum(sum(d.counts.values()) for d in devices.values())
        print(f"\nredis cluster master SIGKILLed: ACK-required sends stalled {stall:.1f}s "
              f"(cluster-node-timeout {servers.node_timeout_ms} ms); {accepted} accepted, "
              f"all delivered ({copies} deliveries); {sum(len(f.refused) for f in flows)} "
              "sends refused during the stall")
    finally:
        for device in devices.values():
            await device.close()
        # The killed node comes back as its successor's replica: the session's
        # cluster is whole again for the tests after this one.
        await asyncio.to_thread(victim.restart)
        await asyncio.to_thread(servers.await_healthy, 60)


def holds(predicate: Any) -> Any:
    """``predicate`` as a probe for :func:`eventually`."""
    async def probe() -> bool:
        return bool(predicate())
    return probe
