"""Pods on a real 3-node RabbitMQ cluster: a pod whose node stops (or crashes)
under ACK-required traffic fails over to another URL of ``WSNODE_AMQP_URL``, its
clients stay connected, and every accepted ACK-required message reaches its
user.

While the pod's queue is gone (it was on the lost node), messages to its users
are unroutable: the sender keeps them stored and they are delivered by the
resends of the pod holding the user; those in flight on the lost node are
resent the same way. Deliveries are counted per id on the clients.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial

import orjson
import pytest

from tests.conftest import PodFactory
from tests.support.client import Client
from tests.support.cluster import ClusterSlice
from tests.support.pods import PodProcess, base_env
from tests.support.rabbit_cluster import RabbitCluster, RabbitNode
from tests.support.traffic import Device, Traffic
from tests.support.waits import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

USERS_PER_POD = 3


async def _ready(pod: PodProcess) -> bool:
    status, _ = await asyncio.to_thread(pod.api, "GET", "/readyz", None, None)
    return status == 200


def bus_urls(pod: PodProcess) -> list[str]:
    """The broker URLs the pod's bus connected to, in order (from its log)."""
    return re.findall(r"bus (?:re)?connected to (\S+?)[, ]", pod.log())


def redacted(node: RabbitNode) -> str:
    return node.url.replace("guest:guest@", "guest:***@")


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_a_pod_fails_over_when_its_node_goes_and_no_ack_message_is_lost(
        pod_factory: PodFactory, cluster: ClusterSlice, rabbit: RabbitCluster,
        how: str) -> None:
    env = {"WSNODE_ACK_MAX_ATTEMPTS": "100", "WSNODE_RATE_LIMIT": "0"}
    # Spread over the nodes: A lists node 1 first, B node 2.
    pods = await asyncio.gather(*(asyncio.to_thread(
        lambda name, first: cluster.adopt(pod_factory(name, env=cluster.env(
            amqp_url=rabbit.url_list(first), **env), args=["--app", "tests.e2e.app"])),
        name, first) for name, first in (("pod-a", 0), ("pod-b", 1))))
    a, b = pods
    for pod in pods:
        await eventually(partial(_ready, pod), 60, f"{pod.pod_id} ready")
    lost = rabbit.nodes[0]
    assert bus_urls(a) == [redacted(lost)]
    assert bus_urls(b) == [redacted(rabbit.nodes[1])]

    devices: dict[str, Device] = {}
    for pod in pods:
        for k in range(USERS_PER_POD):
            user = f"{pod.pod_id}-u{k}"
            devices[user] = Device(user, await Client.open(pod.ws_url, pod.token(user)))
    on_a = [u for u in devices if u.startswith("pod-a")]
    on_b = [u for u in devices if u.startswith("pod-b")]
    # Both ways: B publishes to A (whose queue goes with the node), A to B
    # (A's own connection goes).
    flows = [Traffic(b, on_a, "to-a"), Traffic(a, on_b, "to-b")]

    def delivered(flow: Traffic) -> Callable[[], Awaitable[bool]]:
        return holds(lambda: all(devices[user].counts[msg_id] >= 1
                                 for msg_id, user in list(flow.accepted.items())))

    try:
        await eventually(holds(lambda: all(len(f.accepted) >= 30 for f in flows)), 60,
                         "traffic flowing both ways")
        started = time.monotonic()
        await asyncio.to_thread(lost.stop if how == "stop" else lost.kill)
        await eventually(holds(lambda: len(bus_urls(a)) >= 2), 60,
                         f"pod-a reconnected: {a.log()[-2000:]}")
        await eventually(partial(_ready, a), 60, "pod-a ready again")
        failover = time.monotonic() - started
        counts = [len(f.accepted) for f in flows]
        await eventually(holds(lambda: all(len(f.accepted) >= n + 30
                                           for f, n in zip(flows, counts, strict=True))),
                         60, "traffic flowing both ways after the failover")
    finally:
        for flow in flows:
            await flow.stop()
    try:
        for flow in flows:
            await eventually(delivered(flow), 90, f"every accepted message of {flow.tag} "
                             "delivered")
        reconnected_to = bus_urls(a)[-1]
        assert reconnected_to in {redacted(n) for n in rabbit.nodes[1:]}, reconnected_to
        assert all(d.closed is None for d in devices.values()), "clients stayed connected"
        assert all(not f.refused for f in flows), [f.refused[:3] for f in flows]
        copies = sum(sum(d.counts.values()) for d in devices.values())
        accepted = sum(len(f.accepted) for f in flows)
        print(f"\n{how}: failover {failover:.1f}s; {accepted} accepted, {copies} "
              f"deliveries; publish failed for {[len(f.unroutable) for f in flows]} "
              "(to-a, to-b), delivered from the store")
    finally:
        for device in devices.values():
            await device.close()


async def test_wsctl_takes_the_url_list_and_names_a_node_that_is_down(
        pod_factory: PodFactory, cluster: ClusterSlice, rabbit: RabbitCluster) -> None:
    env = cluster.env(amqp_url=rabbit.url_list(0))
    a = cluster.adopt(await asyncio.to_thread(pod_factory, "pod-a", env=env,
                                              args=["--app", "tests.e2e.app"]))
    await eventually(partial(_ready, a), 60, "pod-a ready")
    client = await Client.open(a.ws_url, a.token("zoe"))
    down = rabbit.nodes[1]
    await asyncio.to_thread(down.stop)

    done = await asyncio.to_thread(wsctl, env, "doctor", "--json")
    assert done.returncode == 0, (done.stdout, done.stderr)
    checks = {c["name"]: c for c in orjson.loads(done.stdout)["checks"]}
    assert checks["rabbitmq"]["status"] == "WARN"
    assert checks["rabbitmq"]["detail"] == (f"2 of 3 nodes connect; unreachable: "
                                            f"{redacted(down)} (AMQPConnectionError)")
    assert checks["queue pod-a"]["status"] == "OK"

    # A list that starts with the node that is down: wsctl goes on to the next.
    env_down_first = {**env, "WSNODE_AMQP_URL": rabbit.url_list(1)}
    done = await asyncio.to_thread(wsctl, env_down_first, "send", "zoe", "--type", "note",
                                   "--payload", '{"via": "wsctl"}', "--json")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["pods"] == ["pod-a"]
    frame = await client.expect("note")
    assert frame["payload"] == {"via": "wsctl"}
    await client.close()


def wsctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wsctl", *args], env=base_env(**env),
                          capture_output=True, text=True, timeout=60, check=False)


def holds(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """``predicate`` as a probe for :func:`eventually`."""
    async def probe() -> bool:
        return predicate()
    return probe
