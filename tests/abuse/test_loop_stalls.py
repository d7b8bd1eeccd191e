"""What a flood may not do to a pod's event loop: hold it for tens of
milliseconds at a time, which every other connection of the pod feels (the
bystander of ``bench/abuse.py``). Each test shows the bound, not a timing:

* a burst of handshakes starts at most HANDSHAKES_PER_ITERATION per iteration;
* the objects of the start are frozen out of the garbage collector's sight
  (a full collection walked them all: 50 to 160 ms under a flood);
* a large batch of message trails (a replay at connect of a long backlog) is
  written in slices, one await each, not built in one go.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.abuse.conftest import AbusePods
from tests.support.cluster import REDIS_URL
from tests.support.pods import PodProcess
from tests.support.waits import eventually
from wsnode import redis_conn, trace_redis
from wsnode.ids import MsgId, PodId, UserId
from wsnode.keys import RedisKeys
from wsnode.trace_redis import RedisTracer


def _metric(pod: PodProcess, name: str) -> float:
    with urllib.request.urlopen(pod.admin_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def _accept_queue(port: int) -> int | None:
    """Connections the kernel holds for the pod's listening socket, not yet
    accepted (Linux: a listening socket's rx_queue in /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # LISTEN
            return int(fields[4].split(":")[1], 16)
    return None


async def _requests_at_once(pod: PodProcess, users: list[str]) -> list[socket.socket]:
    """One TCP connection per user, accepted by the pod; then, with the pod
    stopped, each one's whole upgrade request: they reach it in the same instant
    (as those of a client that opened them all at once)."""
    socks = [await asyncio.to_thread(socket.create_connection, ("127.0.0.1", pod.port), 20)
             for _ in users]

    async def all_accepted() -> bool:
        return _accept_queue(pod.port) == 0
    await eventually(all_accepted, 10, "the pod accepted every connection")
    pod.signal(signal.SIGSTOP)
    try:
        for sock, user in zip(socks, users, strict=True):
            sock.sendall((
                "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
                "\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13"
                f"\r\nAuthorization: Bearer {pod.token(user)}\r\n\r\n").encode())
    finally:
        pod.signal(signal.SIGCONT)
    return socks


def _status(sock: socket.socket) -> int:
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            return 0
        head += chunk
    return int(head.split()[1])


async def test_a_burst_of_handshakes_is_spread_over_loop_iterations(
        abuse_pods: AbusePods) -> None:
    """Sixty upgrade requests that reach the pod at once, on connections it had
    accepted: the event loop reads them all in one go, but starts two handshakes
    per iteration (HANDSHAKES_PER_ITERATION); the others wait, unread, for the
    next ones. All are answered."""
    pod = abuse_pods(env={"WSNODE_HANDSHAKES_PER_ITERATION": "2"})
    assert _metric(pod, "wsnode_handshakes_deferred_total") == 0
    socks = await _requests_at_once(pod, [f"u{i}" for i in range(60)])
    try:
        statuses = await asyncio.to_thread(lambda: [_status(s) for s in socks])
        assert statuses == [101] * 60
        assert _metric(pod, "wsnode_handshakes_deferred_total") >= 30
    finally:
        for sock in socks:
            sock.close()

    async def all_gone() -> bool:
        return _metric(pod, "wsnode_connections") == 0
    await eventually(all_gone, 15, "the sixty connections forgotten once closed")




async def test_the_start_is_frozen_out_of_the_garbage_collectors_sight(
        abuse_pods: AbusePods) -> None:
    """The objects of a pod's start (modules, settings, backends) live as long as
    the process: a full garbage collection under load does not walk them again."""
    pod = abuse_pods()
    frozen = [line for line in pod.log().splitlines() if "objects of the start frozen" in line]
    assert len(frozen) == 1
    assert int(frozen[0].split(" objects of the start")[0].split()[-1]) > 10_000


async def test_a_large_batch_of_trails_is_written_in_slices(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """1,000 trails buffered at once (a replay at connect records one per
    message): written in pipelines of at most 100 trails, one after the other;
    every one is written."""
    prefix = f"wstest-{uuid.uuid4().hex[:12]}"
    client = redis_conn.connect(REDIS_URL)
    tracer = RedisTracer(client, RedisKeys(prefix))
    pipelines: list[int] = []
    build_calls = trace_redis._calls

    def counted(k: RedisKeys, batch: dict[Any, list[bytes]], ttl_ms: int) -> Any:
        pipelines.append(len(batch))
        return build_calls(k, batch, ttl_ms)

    monkeypatch.setattr(trace_redis, "_calls", counted)
    try:
        for i in range(1000):
            tracer.record(MsgId(f"m-{i}"), UserId("carol"), "replayed", PodId("p"))
        await tracer.flush()
        assert sum(pipelines) == 1000
        assert max(pipelines) <= 100 and len(pipelines) >= 10
        for i in (0, 99, 100, 999):
            events = await tracer.trail(MsgId(f"m-{i}"), UserId("carol"))
            assert [e["event"] for e in events] == ["replayed"]
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
        await client.aclose()
