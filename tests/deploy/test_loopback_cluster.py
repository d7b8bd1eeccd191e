"""Issue 6 must-show: the three-pod topology of docker-compose.yml, reproduced with
real processes on loopback. Three pods on the shared Redis and RabbitMQ (a key
prefix of their own), haproxy running deploy/haproxy/haproxy.cfg itself (only
its addresses from the environment), finding the pods through DNS as it does in
compose. Every client connects through the balancer only."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from tests.deploy.loopback import LoopbackCluster, LoopbackPod
from tests.support.client import Client
from tests.support.cluster import ClusterSlice
from tests.support.waits import api, eventually

DRAIN_TIMEOUT = 8.0


@pytest.fixture
async def slice_() -> AsyncIterator[ClusterSlice]:
    slice_ = ClusterSlice()
    yield slice_
    await slice_.cleanup()


@pytest.fixture
async def cluster(tmp_path: Path, haproxy: str,
                  slice_: ClusterSlice) -> AsyncIterator[LoopbackCluster]:
    env = slice_.env(WSNODE_DRAIN_OVER="2s", WSNODE_DRAIN_TIMEOUT=f"{DRAIN_TIMEOUT:g}s",
                     WSNODE_RATE_LIMIT="0")
    loopback = LoopbackCluster(tmp_path, env)
    for pod in loopback.pods:
        slice_.adopt(pod)
    try:
        await asyncio.to_thread(loopback.start, haproxy)
        yield loopback
    finally:
        loopback.kill()  # before slice_'s cleanup: live pods would re-declare their queues


def pod_of(cluster: LoopbackCluster, client: Client) -> LoopbackPod:
    return cluster.pod(client.welcome["payload"]["podId"])


async def test_message_from_another_pod_reaches_client_through_balancer(
        cluster: LoopbackCluster) -> None:
    token = cluster.pods[0].token
    alice = await Client.open(cluster.url, token("alice"))
    # ?token= this time: the balancer's log must not carry it.
    bob_token = token("bob")
    bob = await Client.open(f"{cluster.url}?token={bob_token}")
    a, b = pod_of(cluster, alice), pod_of(cluster, bob)
    assert a is not b, "leastconn sends the second connection to an idle pod"

    # A handler on bob's pod sends to alice, who sits on another pod.
    await bob.send({"type": "chat_message", "payload": {"to": "alice", "text": "hi"}})
    frame = await alice.expect("chat_message")
    assert frame["payload"] == {"to": "alice", "text": "hi", "from": "bob"}

    # The admin API of the third pod: an ACK-required message, routed to alice's pod.
    (c,) = [p for p in cluster.pods if p not in (a, b)]
    report = await api(c, "POST", "/v1/send", {"user": "alice", "envelope": {
        "type": "notice", "id": "n-1", "requiresAck": True, "payload": {"via": c.pod_id}}})
    assert report["local"] == 0 and report["pods"] == [a.pod_id] and report["stored"]
    frame = await alice.expect("notice")
    assert frame["id"] == "n-1" and frame["payload"] == {"via": c.pod_id}
    await alice.ack("n-1")

    async def acked() -> bool:
        return (await api(c, "GET", "/v1/messages/alice/n-1"))["state"] == "acked"
    await eventually(acked, 5, "n-1 settled by the ack that crossed the balancer")
    await bob.close()
    await alice.close()
    log = cluster.balancer.log()
    assert 'GET "/ws"' in log
    assert bob_token not in log


async def test_drain_moves_client_through_balancer_without_losing_acked_messages(
        cluster: LoopbackCluster) -> None:
    alice = await Client.open(cluster.url, cluster.pods[0].token("alice"))
    x = pod_of(cluster, alice)
    sender = next(p for p in cluster.pods if p is not x)
    # Other clients of x (straight to it), so that its drain takes a while.
    others = [await Client.open(x.ws_url, x.token(f"other-{i}")) for i in range(3)]
    total = 30
    ids = [f"m-{i}" for i in range(total)]
    seen: set[str] = set()
    moves: list[tuple[str, int | None, str]] = []  # (first frame type, close code, new pod)

    async def send_all() -> None:
        for msg_id in ids:  # paced over ~3 s: before, during and after the drain
            await api(sender, "POST", "/v1/send", {"user": "alice", "envelope": {
                "type": "m", "id": msg_id, "requiresAck": True}})
            await asyncio.sleep(0.1)

    async def follow() -> None:
        client, last = alice, ""
        while seen != set(ids):
            try:
                frame = await client.recv(timeout=15)
                frames = [frame]
                last = frame["type"]
            except ConnectionClosed:
                # One attempt, through the balancer: it must not hand us the draining pod.
                code = client.ws.close_code
                client = await Client.open(cluster.url, cluster.pods[0].token("alice"))
                moves.append((last, code, client.welcome["payload"]["podId"]))
                frames = client.replay
            for f in frames:
                if f["type"] == "m":
                    seen.add(f["id"])
                    await client.ack(f["id"])
        await client.close()

    following = asyncio.create_task(follow())
    sending = asyncio.create_task(send_all())
    await eventually(lambda: asyncio.sleep(0, result=len(seen) >= 5), 10, "messages flowing")
    x.signal(signal.SIGTERM)

    async def x_not_ready() -> bool:
        status, _ = await asyncio.to_thread(x.api, "GET", "/readyz", None, None)
        return status == 503
    await eventually(x_not_ready, 5, f"{x.pod_id} answers /readyz 503 while draining")
    # New handshakes while x drains: the balancer never hands out x (its check or a
    # retry of the 503 on another pod), and no client sees the 503.
    late = [await Client.open(cluster.url, x.token(f"late-{i}")) for i in range(4)]
    assert x.pod_id not in {c.welcome["payload"]["podId"] for c in late}

    await sending
    await asyncio.wait_for(following, 30)
    assert seen == set(ids)
    assert len(moves) == 1, moves
    ((first, code, new_pod),) = moves
    assert (first, code) == ("reconnect", 1012)
    assert new_pod != x.pod_id
    assert await asyncio.to_thread(x.wait, DRAIN_TIMEOUT + 2) == 0
    for other in others:
        assert other.ws.close_code == 1012

    async def all_acked() -> bool:
        states = [(await api(sender, "GET", f"/v1/messages/alice/{i}"))["state"] for i in ids]
        return all(state == "acked" for state in states)
    await eventually(all_acked, 10, "every message settled")
    await asyncio.to_thread(cluster.balancer.wait_for, {x.host: "DOWN"}, 5)
    for client in late:
        await client.close()


async def test_a_pod_added_under_the_service_name_joins_the_pool(
        cluster: LoopbackCluster, slice_: ClusterSlice) -> None:
    """`docker compose up --scale wsnode=4`: the new replica's address appears in
    DNS under the service name and the balancer takes it, config unchanged."""
    pod = slice_.adopt(await asyncio.to_thread(cluster.scale_up, "pod-4"))
    # leastconn: with one client on each of the first three, the fourth goes to pod-4.
    clients = [await Client.open(cluster.url, pod.token(f"u{i}")) for i in range(4)]
    assert sorted(c.welcome["payload"]["podId"] for c in clients) == [
        "pod-1", "pod-2", "pod-3", "pod-4"]
    for client in clients:
        await client.close()
