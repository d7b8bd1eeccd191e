"""Issue 4 must-shows: three real pods, the real Redis and RabbitMQ, real clients."""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import aio_pika
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import PodFactory
from tests.support.client import Client
from tests.support.cluster import AMQP_URL, ClusterSlice
from tests.support.pods import PodProcess
from tests.support.proxy import TcpProxy
from tests.support.waits import api, eventually
from wsnode.keys import AmqpNames


def start_pods(pod_factory: PodFactory, cluster: ClusterSlice, names: list[str],
               **env: str) -> list[PodProcess]:
    return [cluster.adopt(pod_factory(name, env=cluster.env(**env),
                                      args=["--app", "tests.e2e.app"])) for name in names]


def wsctl(cluster: ClusterSlice, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """wsctl in cluster mode: Redis and RabbitMQ, no --node."""
    from tests.support.pods import base_env

    return subprocess.run([sys.executable, "-m", "wsctl", *args],
                          env=base_env(**cluster.env(**env)), capture_output=True, text=True,
                          timeout=60, check=False)


async def test_every_path_reaches_every_connection_once(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    a, b, c = start_pods(pod_factory, cluster, ["pod-a", "pod-b", "pod-c"],
                         WSNODE_ACK_RETRY_INTERVAL="30s")
    token = a.token("zoe")
    on_a = await Client.open(a.ws_url, token)
    on_c = await Client.open(c.ws_url, token)
    sender = await Client.open(b.ws_url, b.token("sender"))
    devices = (on_a, on_c)

    async def both_get(typ: str, check: Callable[[dict[str, Any]], bool]) -> None:
        for device in devices:
            frame = await device.expect(typ)
            assert check(frame), frame
            if frame.get("requiresAck"):
                await device.ack(frame["id"])

    # at most once: wsctl (no pod), POST /v1/send on B, a handler on B
    slow_retry = {"WSNODE_ACK_RETRY_INTERVAL": "30s"}  # the storing side sets the schedule
    done = await asyncio.to_thread(wsctl, cluster, "send", "zoe", "--type", "note",
                                   "--payload", '{"via": "wsctl"}', "--json", **slow_retry)
    assert done.returncode == 0, done.stderr
    assert sorted(orjson.loads(done.stdout)["pods"]) == ["pod-a", "pod-c"]
    await both_get("note", lambda f: f["payload"] == {"via": "wsctl"})
    report = await api(b, "POST", "/v1/send",
                       {"user": "zoe", "envelope": {"type": "note", "payload": {"via": "api"}}})
    assert report["local"] == 0 and sorted(report["pods"]) == ["pod-a", "pod-c"]
    await both_get("note", lambda f: f["payload"] == {"via": "api"})
    await sender.send({"type": "chat_message", "payload": {"to": "zoe", "text": "hi"}})
    await both_get("chat_message", lambda f: f["payload"]["from"] == "sender")

    # ACK path: the same three ways
    waiting = asyncio.create_task(asyncio.to_thread(
        wsctl, cluster, "send", "zoe", "--type", "alert", "--ack", "--id", "w-1", "--wait", "10",
        **slow_retry))
    await both_get("alert", lambda f: f["id"] == "w-1" and f["seq"] == 1)
    done = await waiting
    assert done.returncode == 0, done.stderr  # --wait saw the ack
    report = await api(b, "POST", "/v1/send", {"user": "zoe", "envelope": {
        "type": "alert", "id": "api-1", "requiresAck": True}})
    assert report["stored"] is True and report["seq"] == 2
    await both_get("alert", lambda f: f["id"] == "api-1" and f["seq"] == 2)
    await sender.send({"type": "burst", "payload": {"to": "zoe", "n": 1, "prefix": "h-"}})
    await both_get("burst", lambda f: f["id"] == "h-0" and f["seq"] == 3)
    for device in devices:
        await device.nothing_within(0.5)  # once per connection, nothing more


async def test_thousand_acked_messages_survive_a_broker_cut(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    proxy = await TcpProxy().start()
    try:
        a, b = start_pods(pod_factory, cluster, ["pod-a", "pod-b"],
                          WSNODE_AMQP_URL=proxy.url(), WSNODE_RATE_LIMIT="0")
        receiver = await Client.open(a.ws_url, a.token("rx"))
        sender = await Client.open(b.ws_url, b.token("tx"))
        seen: dict[str, list[tuple[Any, Any]]] = {}  # id -> (seq, payload) of every copy
        got_all = asyncio.Event()

        async def receive() -> None:
            while len(seen) < 1000:
                frame = await receiver.recv(timeout=60)
                if frame["type"] != "burst":
                    continue
                seen.setdefault(frame["id"], []).append((frame.get("seq"), frame.get("payload")))
                await receiver.ack(frame["id"])
            got_all.set()

        reader = asyncio.create_task(receive())
        await sender.send({"type": "burst", "payload": {"to": "rx", "n": 1000, "prefix": "k"}})
        await eventually(lambda: asyncio.sleep(0, result=len(seen) >= 50), 20, "first deliveries")
        await proxy.cut()
        await asyncio.sleep(2.0)  # an outage of two seconds, mid-stream
        await proxy.restore()
        await asyncio.wait_for(got_all.wait(), 90)
        await reader
        assert set(seen) == {f"k{i}" for i in range(1000)}
        # Duplicates can only be resends of the same message: every copy of an id
        # carries its seq and payload, and no id arrives more often than the timer's
        # attempts plus one replay on reconnect allow.
        allowed = int(a.env["WSNODE_ACK_MAX_ATTEMPTS"]) + 1
        for msg_id, copies in seen.items():
            first_seq, first_payload = copies[0]
            assert isinstance(first_seq, int), (msg_id, copies)
            assert first_payload == {"i": int(msg_id.removeprefix("k"))}, (msg_id, copies)
            assert all(copy == copies[0] for copy in copies), (msg_id, copies)
            assert len(copies) <= allowed, (msg_id, len(copies), allowed)
        assert len({copies[0][0] for copies in seen.values()}) == 1000, "a seq was reused"

        async def settled() -> bool:
            _, text = await asyncio.to_thread(a.api, "GET", "/metrics", None, None)
            return 'wsnode_acks_pending 0.0' in str(text)
        await eventually(settled, 10, "every message settled in the store")
    finally:
        await proxy.cut()


async def test_sigkill_mid_stream_loses_no_acked_message(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    a, b, c = start_pods(pod_factory, cluster, ["pod-a", "pod-b", "pod-c"],
                         WSNODE_RATE_LIMIT="0")
    users = [f"v{i}" for i in range(4)]
    clients = {u: await Client.open(a.ws_url, a.token(u)) for u in users}
    seen: dict[str, set[str]] = {u: set() for u in users}
    total = 200

    async def send_all() -> None:
        for i in range(total):
            user = users[i % len(users)]
            await api(c, "POST", "/v1/send", {"user": user, "envelope": {
                "type": "m", "id": f"{user}-{i}", "requiresAck": True, "payload": i}})

    async def follow(user: str) -> None:
        client = clients[user]
        want = {f"{user}-{i}" for i in range(total) if users[i % len(users)] == user}
        while seen[user] != want:
            try:
                frame = await client.recv(timeout=30)
            except ConnectionClosed:
                client = await Client.open(b.ws_url, b.token(user))  # reconnect to B
                frames = client.replay
            else:
                frames = [frame]
            for f in frames:
                if f["type"] == "m":
                    seen[user].add(f["id"])
                    await client.ack(f["id"])

    followers = [asyncio.create_task(follow(u)) for u in users]
    sending = asyncio.create_task(send_all())
    await eventually(lambda: asyncio.sleep(0, result=sum(map(len, seen.values())) >= 40), 20,
                "messages flowing")
    a.kill()
    await sending
    await asyncio.wait_for(asyncio.gather(*followers), 60)
    assert all(len(seen[u]) == total // len(users) for u in users)


async def test_wsctl_drain_moves_clients_over_time_without_loss(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    a, b, c = start_pods(pod_factory, cluster, ["pod-a", "pod-b", "pod-c"],
                         WSNODE_RATE_LIMIT="0")
    loop = asyncio.get_running_loop()
    users = [f"d{i}" for i in range(10)]
    reconnect_at: dict[str, float] = {}
    seen: dict[str, set[str]] = {u: set() for u in users}
    per_user = 30

    async def follow(user: str) -> None:
        client = await Client.open(a.ws_url, a.token(user))
        want = {f"{user}-{i}" for i in range(per_user)}
        while seen[user] != want:
            try:
                frame = await client.recv(timeout=30)
            except ConnectionClosed:
                assert client.ws.close_code == 1012
                target = random.choice([b, c])
                client = await Client.open(target.ws_url, target.token(user))
                frames = client.replay
            else:
                frames = [frame]
                if frame["type"] == "reconnect":
                    reconnect_at[user] = loop.time()
            for f in frames:
                if f["type"] == "m":
                    seen[user].add(f["id"])
                    # The drain may close the connection between a frame and its
                    # ack: the unacked message comes again after the reconnect.
                    with contextlib.suppress(ConnectionClosed):
                        await client.ack(f["id"])
        await client.close()

    followers = [asyncio.create_task(follow(u)) for u in users]

    async def all_on_a() -> bool:
        return len((await api(b, "GET", "/v1/presence?pod=pod-a"))["users"]) == len(users)
    await eventually(all_on_a, 10, "every user on pod-a")

    async def send_all() -> None:
        # Paced over ~6 s, so that messages keep coming during the whole drain.
        for i in range(per_user):
            for user in users:
                await api(b, "POST", "/v1/send", {"user": user, "envelope": {
                    "type": "m", "id": f"{user}-{i}", "requiresAck": True}})
            await asyncio.sleep(0.2)
    sending = asyncio.create_task(send_all())
    started = loop.time()
    done = await asyncio.to_thread(wsctl, cluster, "drain", "pod-a", "--over", "5")
    assert done.returncode == 0, done.stderr

    async def refuses() -> bool:
        try:
            async with connect(a.ws_url, additional_headers={
                    "Authorization": f"Bearer {a.token('late')}"}):
                return False
        except InvalidStatus as exc:
            return exc.response.status_code == 503
    await eventually(refuses, 5, "pod-a answers 503")
    await sending
    await asyncio.wait_for(asyncio.gather(*followers), 60)
    spread = max(reconnect_at.values()) - min(reconnect_at.values())
    assert len(reconnect_at) == len(users)
    # Spread over the 5 s asked for (not all at once, nor much longer), and begun
    # promptly: the margins are a busy machine's (wsctl's start alone can take 2 s).
    assert 3.0 <= spread <= 8.0, spread
    assert min(reconnect_at.values()) - started < 5.0
    assert all(len(seen[u]) == per_user for u in users)


async def test_pod_whose_consumer_dies_turns_not_ready(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    (a,) = start_pods(pod_factory, cluster, ["pod-a"])

    async def ready() -> bool:
        status, _ = await asyncio.to_thread(a.api, "GET", "/readyz", None, None)
        return status == 200
    await eventually(ready, 10, "pod-a ready")
    names = AmqpNames(cluster.prefix)
    loop = asyncio.get_running_loop()
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        # Take the pod's queue away and squat its name with an exclusive queue: the
        # broker cancels the pod's consumer, and the pod cannot consume again.
        await channel.queue_delete(names.pod_queue("pod-a"))
        await channel.declare_queue(names.pod_queue("pod-a"), exclusive=True)
        cut_at = loop.time()

        async def not_ready() -> bool:
            return not await ready()
        await eventually(not_ready, 1.0, "not ready within one canary interval (0.5 s) + probe")
        assert loop.time() - cut_at < 1.0
        status, body = await asyncio.to_thread(a.api, "GET", "/readyz", None, None)
        assert status == 503 and body["checks"]["bus"] is False
    finally:
        with contextlib.suppress(Exception):
            await connection.close()
    await eventually(ready, 15, "pod-a ready again once its queue is free")



async def test_wsctl_dlq_ls_and_retry_without_a_pod(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    # 1 s: a revived message must outlive a busy machine's wsctl start and the ack.
    fast = {"WSNODE_ACK_RETRY_INTERVAL": "1s", "WSNODE_ACK_MAX_ATTEMPTS": "2"}
    a, _ = start_pods(pod_factory, cluster, ["pod-a", "pod-b"], **fast)
    client = await Client.open(a.ws_url, a.token("ignorer"))
    await api(a, "POST", "/v1/send", {"user": "ignorer", "envelope": {
        "type": "alert", "id": "lost-1", "requiresAck": True, "payload": "hello"}})
    first = await client.expect("alert")
    await client.expect("alert")  # the one resend, then dead after 2 attempts

    async def dead() -> bool:
        done = await asyncio.to_thread(wsctl, cluster, "dlq", "ls", "--json", **fast)
        assert done.returncode == 0, done.stderr
        return [m["id"] for m in orjson.loads(done.stdout)["messages"]] == ["lost-1"]
    await eventually(dead, 20, "message in the dead-letter store")

    async def ack_the_retry() -> dict[str, object]:
        again = await client.expect("alert")
        await client.ack("lost-1")  # at once: not after wsctl has exited
        return again
    acking = asyncio.create_task(ack_the_retry())
    done = await asyncio.to_thread(wsctl, cluster, "dlq", "retry", "lost-1", "--json", **fast)
    assert done.returncode == 0, done.stderr
    retried = orjson.loads(done.stdout)["retried"]
    assert retried[0]["pods"] == ["pod-a"] and retried[0]["seq"] == first["seq"] + 1
    again = await acking
    assert again["id"] == "lost-1" and again["payload"] == "hello"
    done = await asyncio.to_thread(wsctl, cluster, "dlq", "ls", "--json", **fast)
    assert orjson.loads(done.stdout)["messages"] == []
