"""Issue 8 must-shows: wsctl trace, wsctl doctor and JSON logs, on real pods."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from typing import Any

import aio_pika
import orjson
import pytest

from tests.conftest import PodFactory
from tests.support.client import Client
from tests.support.cluster import AMQP_URL, ClusterSlice
from tests.support.pods import PodProcess, base_env
from tests.support.waits import api, eventually
from wsnode.keys import AmqpNames


def wsctl(cluster: ClusterSlice, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wsctl", *args], env=base_env(**cluster.env()),
                          capture_output=True, text=True, timeout=60, check=False)


def start(pod_factory: PodFactory, cluster: ClusterSlice, *names: str) -> list[PodProcess]:
    return [cluster.adopt(pod_factory(n, env=cluster.env())) for n in names]


async def test_trace_of_a_message_resent_twice_then_acked(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    a, b = start(pod_factory, cluster, "pod-a", "pod-b")
    client = await Client.open(a.ws_url, a.token("tina"))
    await api(b, "POST", "/v1/send", {"user": "tina", "envelope": {
        "type": "alert", "id": "t-1", "requiresAck": True}})
    for _ in range(3):  # the first delivery and two resends
        assert (await client.expect("alert", timeout=5))["id"] == "t-1"
    await client.ack("t-1")

    async def trail() -> dict[str, Any] | None:
        done = await asyncio.to_thread(wsctl, cluster, "trace", "t-1", "--json")
        if done.returncode != 0:
            return None
        doc = orjson.loads(done.stdout)
        return doc if any(e["event"] == "acked" for e in doc["events"]) else None
    doc = await eventually(trail, 5, "a trail ending with the ack")
    steps = [(e["event"], e["pod"]) for e in doc["events"]]
    assert sorted(steps[:3]) == [("delivered", "pod-a"), ("routed", "pod-b"),
                                 ("stored", "pod-b")]
    assert [s for s in steps if s[0] == "resent"] == [("resent", "pod-a")] * 2
    assert steps[-1] == ("acked", "pod-a")
    routed = next(e for e in doc["events"] if e["event"] == "routed")
    assert routed["pods"] == ["pod-a"]
    times = [e["at"] for e in doc["events"]]
    assert times == sorted(times) and times[-1] - times[0] < 10_000
    human = await asyncio.to_thread(wsctl, cluster, "trace", "t-1")
    for word in ("stored", "routed", "delivered", "resent", "acked", "pod-a", "pod-b"):
        assert word in human.stdout
    unknown = await asyncio.to_thread(wsctl, cluster, "trace", "never-sent")
    assert unknown.returncode == 3


async def test_doctor_fails_naming_a_killed_pod_then_recovers(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    # A lease of 6 s: long enough that the doctor, however slow a busy machine
    # makes it, looks while pod-a's lease still lives; short enough to recover.
    a, _ = [cluster.adopt(pod_factory(n, env=cluster.env(WSNODE_HEARTBEAT_INTERVAL="2s")))
            for n in ("pod-a", "pod-b")]
    await Client.open(a.ws_url, a.token("u"))
    healthy = await asyncio.to_thread(wsctl, cluster, "doctor", "--json")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert orjson.loads(healthy.stdout)["status"] == "OK"
    a.kill()
    sick = await asyncio.to_thread(wsctl, cluster, "doctor", "--json")
    assert sick.returncode == 1
    failed = [c for c in orjson.loads(sick.stdout)["checks"] if c["status"] == "FAIL"]
    # The pod does not answer, and its queue has lost its consumer: both name it,
    # and the pods line does not read OK beside them.
    assert {c["name"] for c in failed} == {"pods", "pod pod-a", "queue pod-a"}
    assert all(c["hint"] for c in failed)

    async def recovered() -> bool:  # its lease ran out and pod-b purged it
        done = await asyncio.to_thread(wsctl, cluster, "doctor", "--json")
        return done.returncode == 0
    await eventually(recovered, 40, "doctor OK once pod-a is reaped")


async def test_doctor_fails_on_a_deaf_pod_then_recovers(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    start(pod_factory, cluster, "pod-a")
    assert (await asyncio.to_thread(wsctl, cluster, "doctor")).returncode == 0
    queue = AmqpNames(cluster.prefix).pod_queue("pod-a")
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        await channel.queue_delete(queue)
        await channel.declare_queue(queue, exclusive=True)  # the pod cannot consume now

        async def deaf() -> dict[str, Any] | None:
            done = await asyncio.to_thread(wsctl, cluster, "doctor", "--json")
            doc = orjson.loads(done.stdout)
            failing = {c["name"] for c in doc["checks"] if c["status"] == "FAIL"}
            return doc if done.returncode == 1 and failing >= {"pod pod-a", "queue pod-a"} \
                else None
        doc = await eventually(deaf, 10, "doctor FAILs pod-a and its queue")
        queue_check = next(c for c in doc["checks"] if c["name"] == "queue pod-a")
        assert "cannot consume" in queue_check["detail"]
        pod_check = next(c for c in doc["checks"] if c["name"] == "pod pod-a")
        assert "deaf" in pod_check["detail"]
    finally:
        with contextlib.suppress(Exception):
            await connection.close()

    async def healthy() -> bool:
        return (await asyncio.to_thread(wsctl, cluster, "doctor")).returncode == 0
    await eventually(healthy, 20, "doctor OK once the queue is free again")


async def test_json_logs_parse_and_never_hold_a_token(pod_factory: PodFactory) -> None:
    pod = pod_factory("logpod", args=["--log-format", "json", "--log-level", "DEBUG",
                                      "--app", "tests.e2e.app"])
    token = pod.token("lola")
    async with await Client.open(f"{pod.ws_url}?token={token}") as client:
        await client.send({"type": "echo", "payload": "x"})
        await client.expect("echo")
    async with await Client.open(pod.ws_url, token) as client:
        await client.send({"type": "nope"})
        await client.expect("error")
    with pytest.raises(Exception):  # noqa: B017, PT011 (refused: a bad token)
        await Client.open(f"{pod.ws_url}?access_token={token}x")

    def closed_twice() -> bool:
        return pod.log().count("connection closed") >= 2
    await eventually(lambda: asyncio.sleep(0, result=closed_twice()), 5, "close events logged")
    lines = [line for line in pod.log().splitlines() if line.strip()]
    records = [orjson.loads(line) for line in lines]  # every line is one JSON object
    assert token not in pod.log() and token[:40] not in pod.log()
    opened = [r for r in records if r["msg"] == "connection open"]
    assert len(opened) == 2
    assert all({"pod", "conn", "user"} <= r.keys() for r in opened)
    assert {r["user"] for r in opened} == {"lola"} and opened[0]["pod"] == "logpod"
    assert any(r["level"] == "debug" for r in records)  # DEBUG really was on
