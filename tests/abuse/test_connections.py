"""Item 1 of issue 12: what one token, or many, can cost a pod in connections.

A user holds at most MAX_CONNECTIONS_PER_USER connections per pod (429 before
the upgrade), handshakes in progress included; the pod holds at most
MAX_CONNECTIONS (503 with Retry-After); with a small descriptor limit a flood
neither silences the admin port nor floods the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import urllib.request

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidMessage, InvalidStatus

from tests.abuse.conftest import AbusePods, raw_handshake
from tests.support.client import Client
from tests.support.pods import PodProcess, descriptor_limit
from tests.support.waits import eventually


async def attempt(pod: PodProcess, user: str) -> ClientConnection | int:
    """A connection of ``user``, or the HTTP status that refused it."""
    try:
        return await connect(pod.ws_url, open_timeout=20,
                             additional_headers={"Authorization": f"Bearer {pod.token(user)}"})
    except InvalidStatus as exc:
        return exc.response.status_code


async def close_all(conns: list[ClientConnection | int]) -> None:
    await asyncio.gather(*(c.close() for c in conns if not isinstance(c, int)))


async def test_a_user_past_the_per_user_limit_gets_429(abuse_pods: AbusePods) -> None:
    pod = abuse_pods(env={"WSNODE_MAX_CONNECTIONS_PER_USER": "5"})
    held = [await attempt(pod, "mallory") for _ in range(5)]
    assert not any(isinstance(c, int) for c in held)
    with pytest.raises(InvalidStatus) as refused:
        await connect(pod.ws_url, open_timeout=10,
                      additional_headers={"Authorization": f"Bearer {pod.token('mallory')}"})
    assert refused.value.response.status_code == 429
    body = refused.value.response.body.decode()
    assert "too many connections for this user" in body and body.count("\n") == 1
    # Another user is not affected; a connection closed gives its slot back.
    async with await Client.open(pod.ws_url, pod.token("bob")):
        pass
    await held.pop().close()  # type: ignore[union-attr]

    async def admitted() -> bool:
        got = await attempt(pod, "mallory")
        if isinstance(got, int):
            return False
        held.append(got)
        return True
    await eventually(admitted, 10, "a slot given back when a connection closed")
    await close_all(held)


async def test_a_burst_of_handshakes_cannot_slip_past_the_limit(abuse_pods: AbusePods) -> None:
    """Twenty handshakes at once: those in progress count, so exactly five pass."""
    pod = abuse_pods(env={"WSNODE_MAX_CONNECTIONS_PER_USER": "5"})
    got = await asyncio.gather(*(attempt(pod, "mallory") for _ in range(20)))
    try:
        assert sum(not isinstance(c, int) for c in got) == 5
        assert sorted(c for c in got if isinstance(c, int)) == [429] * 15
    finally:
        await close_all(got)


async def test_a_user_past_the_handshake_rate_gets_429_with_retry_after(
        abuse_pods: AbusePods) -> None:
    """Every admitted handshake costs the pod a welcome, a replay of the user's
    backlog and presence writes: one token may not reconnect faster than
    HANDSHAKE_RATE on a pod, whatever its connections count. Another user may."""
    pod = abuse_pods(env={"WSNODE_HANDSHAKE_RATE": "3/60s"})
    for _ in range(3):  # each closed again: the per-user connection cap is not the limit
        conn = await attempt(pod, "mallory")
        assert not isinstance(conn, int)
        await conn.close()
    status, headers, body = await raw_handshake(
        pod.port, [("Authorization", f"Bearer {pod.token('mallory')}")])
    assert status == 429
    assert 1 <= int(headers["retry-after"]) <= 20  # one more every 20 s
    assert "too many handshakes for this user" in body
    async with await Client.open(pod.ws_url, pod.token("bob")):
        pass


def _abandon(port: int, token: str) -> None:
    """An upgrade request, then the TCP connection reset before any answer is read."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                  f"Authorization: Bearer {token}\r\n\r\n").encode())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def test_abandoned_handshakes_leak_no_slot(abuse_pods: AbusePods) -> None:
    pod = abuse_pods(env={"WSNODE_MAX_CONNECTIONS_PER_USER": "2"})
    for _ in range(10):
        await asyncio.to_thread(_abandon, pod.port, pod.token("mallory"))
    conns: list[ClientConnection | int] = []

    async def two_fit() -> bool:
        got = await attempt(pod, "mallory")
        if not isinstance(got, int):
            conns.append(got)
        return len(conns) == 2
    try:
        await eventually(two_fit, 15, "both slots free again after abandoned handshakes")
        assert await attempt(pod, "mallory") == 429
    finally:
        await close_all(conns)


async def test_a_full_pod_answers_503_with_retry_after(abuse_pods: AbusePods) -> None:
    pod = abuse_pods(env={"WSNODE_MAX_CONNECTIONS": "3"})
    conns = [await attempt(pod, f"user-{i}") for i in range(3)]
    try:
        assert not any(isinstance(c, int) for c in conns)
        status, headers, body = await raw_handshake(
            pod.port, [("Authorization", f"Bearer {pod.token('late')}")])
        assert status == 503
        assert int(headers["retry-after"]) >= 1
        assert "connection limit" in body
    finally:
        await close_all(conns)


def _healthz(pod: PodProcess) -> bool:
    with urllib.request.urlopen(pod.admin_url + "/healthz", timeout=3) as resp:
        return resp.status == 200


async def test_descriptor_exhaustion_keeps_the_admin_port_and_the_log(
        abuse_pods: AbusePods) -> None:
    """A pod limited to 256 descriptors: 300 WebSocket handshakes of distinct users,
    then 400 raw TCP connections that never send a request. The admin port answers
    throughout, the log stays small, and the pod serves again afterwards."""
    pod = abuse_pods(preexec=descriptor_limit(256), args=["--insecure"])
    got: list[ClientConnection | int] = []
    for batch in range(6):  # 50 at a time: a burst, without timing out the client
        got += await asyncio.gather(*(
            _insecure(pod, f"u{batch}-{i}") for i in range(50)))
        assert await asyncio.to_thread(_healthz, pod)
    opened = [c for c in got if not isinstance(c, int)]
    assert len(opened) == 128
    # The others got 503, or were reset at once when even the handshake headroom
    # was taken (0: no HTTP answer).
    assert {c for c in got if isinstance(c, int)} <= {503, 0}
    await close_all(got)

    socks: list[socket.socket] = []
    try:
        for _ in range(400):
            with contextlib.suppress(OSError):
                socks.append(socket.create_connection(("127.0.0.1", pod.port), timeout=3))
            if len(socks) % 100 == 0:
                assert await asyncio.to_thread(_healthz, pod)
        assert await asyncio.to_thread(_healthz, pod)
    finally:
        for sock in socks:
            sock.close()
    log = pod.log()
    assert log.count("out of system resource") <= 2
    assert len(log.encode()) < 200_000

    async def serves_again() -> bool:
        got = await _insecure(pod, "after")
        if isinstance(got, int):
            return False
        await got.close()
        return True
    await eventually(serves_again, 20, "the pod serves again after the flood")
    assert "connection limits: at most 128 connections" in pod.log()  # 256 - 128 kept


async def _insecure(pod: PodProcess, user: str) -> ClientConnection | int:
    """A connection, the HTTP status that refused it, or 0 when it was reset."""
    try:
        return await connect(f"{pod.ws_url}?user={user}", open_timeout=20)
    except InvalidStatus as exc:
        return exc.response.status_code
    except (InvalidMessage, OSError):
        return 0


async def test_the_soft_descriptor_limit_is_raised_to_the_hard_one(
        abuse_pods: AbusePods) -> None:
    pod = abuse_pods(preexec=descriptor_limit(256, 2048))
    # 2048 - a reserve of 204 (a tenth): the default MAX_CONNECTIONS.
    assert ("at most 1844 connections (64 per user, handshakes per user 10/10s), "
            "descriptor limit 2048") in pod.log()


@pytest.mark.parametrize(("name", "value"), [
    ("WSNODE_MAX_CONNECTIONS", "100000"),  # more than 256 descriptors allow
    ("WSNODE_MAX_CONNECTIONS", "0"),
    ("WSNODE_MAX_CONNECTIONS_PER_USER", "-1"),
    ("WSNODE_HANDSHAKE_RATE", "ten"),
    ("WSNODE_HANDSHAKES_PER_ITERATION", "-1"),
    ("WSNODE_RESTORE_RATE", "lots"),
    ("WSNODE_CONTROL_BYTES", "1MiB"),
])
def test_bad_limits_fail_at_start_naming_the_setting(
        abuse_pods: AbusePods, name: str, value: str) -> None:
    with pytest.raises(RuntimeError) as failed:
        abuse_pods(env={name: value}, preexec=descriptor_limit(256))
    assert "exited 2" in str(failed.value)
    errors = [line for line in str(failed.value).splitlines() if "error" in line]
    assert len(errors) == 1 and name in errors[0], errors
