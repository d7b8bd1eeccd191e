"""Slow consumers, SIGTERM drains, readiness and presence on one real pod."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import PodFactory
from tests.support.client import Client
from tests.support.pods import PodProcess


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def metric(pod: PodProcess, name: str) -> float:
    _, text = pod.api("GET", "/metrics", key=None)
    total = 0.0
    for line in str(text).splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_client_that_stops_reading_is_closed_4408_memory_bounded(
        pod_factory: PodFactory) -> None:
    pod = pod_factory("slow", env={"WSNODE_SEND_QUEUE_SIZE": "256KiB"},
                      args=["--app", "tests.e2e.app"])
    async with await Client.open(pod.ws_url, pod.token("other")) as other:
        before = rss_kib(pod.pid)
        # max_queue=1 and a tiny read buffer: the client library itself soon stops
        # reading from the socket, like a stalled phone.
        reader = await Client.open(pod.ws_url, pod.token("stalled"), max_queue=1)
        # 4,000 frames of 16 KiB = 64 MiB offered to a client that never reads.
        await reader.send({"type": "flood", "payload": {"n": 4000, "size": 16384}})

        async def closed_for_slowness() -> None:
            while await asyncio.to_thread(metric, pod, "wsnode_slow_consumers_total") < 1:
                await asyncio.sleep(0.05)
        await asyncio.wait_for(closed_for_slowness(), 20)
        grown = rss_kib(pod.pid) - before
        print(f"pod RSS grew by {grown} KiB")
        assert grown < 24 * 1024, f"pod grew by {grown} KiB"
        # Reading now drains what the kernel buffered, then the 4408 close frame.
        with pytest.raises(ConnectionClosed):
            while True:
                await reader.recv(timeout=10)
        assert reader.ws.close_code == 4408
        # The other user on the pod was never affected.
        await other.send({"type": "echo", "payload": "fine"})
        assert (await other.expect("echo"))["payload"] == "fine"
    dropped = await asyncio.to_thread(
        metric, pod, 'wsnode_messages_dropped_total{reason="slow_consumer"}')
    assert dropped >= 1


async def test_sigterm_sends_reconnect_closes_1012_and_exits_0(app_pod: PodProcess) -> None:
    clients = [await Client.open(app_pod.ws_url, app_pod.token(f"u{i}")) for i in range(3)]
    app_pod.signal(signal.SIGTERM)
    for client in clients:
        frame = await client.expect("reconnect")
        assert frame["payload"]["reason"] == "drain"
        assert isinstance(frame["payload"]["retryAfterMs"], int)
        with pytest.raises(ConnectionClosed):
            await client.recv()
        assert client.ws.close_code == 1012
    assert await asyncio.to_thread(app_pod.wait, 30) == 0


async def test_drain_via_api_refuses_new_handshakes_with_503(app_pod: PodProcess) -> None:
    client = await Client.open(app_pod.ws_url, app_pod.token("alice"))
    status, body = await asyncio.to_thread(app_pod.api, "POST", "/v1/drain",
                                           {"pod": "pod-a", "overSeconds": 0})
    assert status == 202 and body["state"] == "draining"
    await client.expect("reconnect")
    with pytest.raises(ConnectionClosed):
        await client.recv()
    assert client.ws.close_code == 1012
    with pytest.raises(InvalidStatus) as err:
        await connect(app_pod.ws_url,
                      additional_headers={"Authorization": f"Bearer {app_pod.token('bob')}"})
    assert err.value.response.status_code == 503
    status, ready = await asyncio.to_thread(app_pod.api, "GET", "/readyz", None, None)
    assert status == 503 and ready["ready"] is False and ready["state"] == "draining"


async def test_drain_with_exit_ends_the_process_once_drained(app_pod: PodProcess) -> None:
    client = await Client.open(app_pod.ws_url, app_pod.token("alice"))
    status, body = await asyncio.to_thread(app_pod.api, "POST", "/v1/drain",
                                           {"overSeconds": 0, "exit": True})
    assert status == 202 and body["exit"] is True
    await client.expect("reconnect")
    with pytest.raises(ConnectionClosed):
        await client.recv()
    assert client.ws.close_code == 1012
    assert await asyncio.to_thread(app_pod.wait, 30) == 0  # without any signal


async def test_presence_and_pods_api(app_pod: PodProcess) -> None:
    token = app_pod.token("multi user:ユ")
    async with await Client.open(app_pod.ws_url, token) as c1, \
            await Client.open(app_pod.ws_url, token) as c2:
        status, users = await asyncio.to_thread(app_pod.api, "GET", "/v1/presence")
        assert status == 200
        assert users["users"] == [{"user": "multi user:ユ", "connections": 2, "pods": ["pod-a"]}]
        status, one = await asyncio.to_thread(
            app_pod.api, "GET", "/v1/presence/multi%20user%3A%E3%83%A6")
        assert {c["connId"] for c in one["connections"]} == {c1.conn_id, c2.conn_id}
        assert all(c["pod"] == "pod-a" and c["since"] > 0 for c in one["connections"])
        _, pods = await asyncio.to_thread(app_pod.api, "GET", "/v1/pods")
        assert pods["pods"][0]["pod"] == "pod-a" and pods["pods"][0]["state"] == "active"
        assert pods["pods"][0]["connections"] == 2 and pods["pods"][0]["users"] == 1
        await c1.close()

        async def one_left() -> None:
            while True:
                _, got = await asyncio.to_thread(app_pod.api, "GET", "/v1/presence")
                if got["users"] and got["users"][0]["connections"] == 1:
                    return
                await asyncio.sleep(0.05)
        await asyncio.wait_for(one_left(), 5)
    status, ready = await asyncio.to_thread(app_pod.api, "GET", "/readyz", None, None)
    assert status == 200 and ready["ready"] is True


async def test_metrics_exposed(app_pod: PodProcess) -> None:
    async with await Client.open(app_pod.ws_url, app_pod.token("m")) as client:
        await client.send({"type": "echo", "payload": 1})
        await client.expect("echo")
        _, text = await asyncio.to_thread(app_pod.api, "GET", "/metrics", None, None)
        for name in ("wsnode_connections 1.0", 'wsnode_messages_in_total{type="echo"} 1.0',
                     "wsnode_send_latency_seconds_bucket", "wsnode_acks_pending",
                     "wsnode_rate_limited_total", "wsnode_messages_dropped_total"):
            assert name in text, name


async def test_insecure_mode_accepts_user_query(pod_factory: PodFactory) -> None:
    pod = pod_factory("insecure", args=["--insecure"])
    async with await Client.open(pod.ws_url + "?user=dev") as client:
        assert client.welcome["payload"]["userId"] == "dev"
    assert "INSECURE" in pod.log()
