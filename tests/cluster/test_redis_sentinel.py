"""Pods on Redis Sentinel (one master, one replica, three sentinels, started by
the suite): ``WSNODE_REDIS_URL=redis+sentinel://.../SERVICE``. A forced failover
(``SENTINEL FAILOVER``) under ACK-required traffic: the pods follow the new
master, clients stay connected, and every accepted message reaches its user.
The old master takes writes until Sentinel demotes it (seconds later), and
what it took then is gone once it resyncs from the new master: an ACK store
there is refused unless the replica confirmed it (WAIT), so none is lost with
it. Some recipients are offline during the failover, so their messages live
only in the store until they connect (a delivered one would hide a lost record);
and a store used by one connection (which keeps talking to the old master
until something tells it) stores throughout, every store it was told of kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from functools import partial

import pytest

from tests.cluster.test_redis_cluster import holds, start
from tests.conftest import PodFactory
from tests.support.client import Client
from tests.support.cluster import ClusterSlice
from tests.support.redis_cluster import SentinelServers, command
from tests.support.traffic import Device, Traffic, all_delivered
from tests.support.waits import eventually
from wsnode import redis_conn
from wsnode.acks import AckPolicy
from wsnode.acks_redis import RedisAcks
from wsnode.errors import BackendUnavailable
from wsnode.ids import UserId
from wsnode.keys import RedisKeys
from wsnode.protocol import Envelope

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


async def test_a_forced_failover_under_ack_traffic_loses_nothing(
        pod_factory: PodFactory, cluster: ClusterSlice,
        redis_sentinel_servers: SentinelServers) -> None:
    servers = redis_sentinel_servers
    env = {"WSNODE_RATE_LIMIT": "0", "WSNODE_ACK_MAX_ATTEMPTS": "100",
           "WSNODE_HEARTBEAT_INTERVAL": "2s", "WSNODE_ACK_RETRY_INTERVAL": "500ms"}
    a, b = await start(pod_factory, cluster, ["pod-a", "pod-b"], servers.url, **env)
    devices = {u: Device(u, await Client.open(pod.ws_url, pod.token(u)))
               for pod, group in ((a, ["a1", "a2"]), (b, ["b1", "b2"])) for u in group}
    offline = ["off1", "off2"]
    flows = [Traffic(b, ["a1", "a2"], "to-a"), Traffic(a, ["b1", "b2"], "to-b"),
             Traffic(a, offline, "to-offline")]
    old = servers.current_master()
    stores = asyncio.create_task(store_loop(servers.url, cluster.prefix))
    try:
        await eventually(holds(lambda: all(len(f.accepted) >= 30 for f in flows)), 60,
                         "traffic flowing both ways")
        started = time.monotonic()
        await asyncio.to_thread(command, servers.sentinels[0].port, "SENTINEL", "FAILOVER",
                                servers.name)
        await eventually(holds(lambda: servers.current_master() is not old), 30,
                         "the sentinels name the replica master")
        counts = [len(f.accepted) for f in flows]
        await eventually(holds(lambda: all(len(f.accepted) >= n + 30
                                           for f, n in zip(flows, counts, strict=True))),
                         60, "traffic flowing both ways on the new master")
    finally:
        for flow in flows:
            await flow.stop()
        stored = await stores
    for user in offline:
        devices[user] = Device(user, await Client.open(b.ws_url, b.token(user)))
    try:
        for flow in flows:
            await eventually(holds(partial(all_delivered, devices, flow)), 90,
                             f"every accepted message of {flow.tag} delivered")
        assert all(d.closed is None for d in devices.values()), "clients stayed connected"
        stall = max(f.stall_after(started) for f in flows)
        accepted = sum(len(f.accepted) for f in flows)
    finally:
        for device in devices.values():
            await device.close()
        await asyncio.to_thread(servers.await_healthy, 60)
    # The old master is a replica again (what it took alone is gone): read anew.
    lost = await missing(servers.url, cluster.prefix, stored)
    assert stored and not lost, f"{len(lost)} of {len(stored)} stores lost: {lost[:5]}"
    print(f"\nSENTINEL FAILOVER: ACK-required sends stalled {stall:.1f}s; {accepted} accepted, "
          f"all delivered; {sum(len(f.refused) for f in flows)} sends refused; "
          f"{len(stored)} stores on one connection, all kept")


USER = UserId("one-connection")


async def store_loop(url: str, prefix: str, seconds: float = 12.0) -> list[str]:
    """Store ACK-required messages for ``seconds`` through a one-connection
    client; the ids whose store succeeded."""
    client = redis_conn.connect(url, max_connections=1)
    acks = RedisAcks(client, RedisKeys(prefix), AckPolicy(), replicas=1)
    stored: list[str] = []
    try:
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            i += 1
            with contextlib.suppress(BackendUnavailable):
                await acks.store(USER, Envelope(type="note", id=f"s{i}", requires_ack=True))
                stored.append(f"s{i}")
            await asyncio.sleep(0.02)
        return stored
    finally:
        await client.aclose()


async def missing(url: str, prefix: str, ids: list[str]) -> list[str]:
    """Those of ``ids`` that the store does not hold pending (a new client)."""
    client = redis_conn.connect(url)
    try:
        kept = {m.id for m in await RedisAcks(client, RedisKeys(prefix)).pending(USER)}
    finally:
        await client.aclose()
    return [i for i in ids if i not in kept]
