"""Item 8 of issue 12: a token that expires during a long replay to a slow
reader closes the connection with 4401 at ``exp``: what is queued is dropped,
and the kernel's send buffer (SOCKET_SEND_BUFFER) holds little."""

from __future__ import annotations

import asyncio
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.abuse.conftest import AbusePods
from tests.support.pods import PodProcess

BACKLOG = 400
PAYLOAD = "x" * 8000  # 3.2 MB of pending messages


def store_backlog(pod: PodProcess, user: str) -> None:
    def one(i: int) -> None:
        status, answer = pod.api("POST", "/v1/send", {"user": user, "envelope": {
            "type": "note", "id": f"m-{i}", "requiresAck": True, "payload": PAYLOAD}})
        assert status == 200, answer
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(BACKLOG)))


async def test_a_token_expiring_mid_replay_closes_4401_at_exp(abuse_pods: AbusePods) -> None:
    pod = abuse_pods(env={"WSNODE_ACK_RETRY_INTERVAL": "60s"})
    await asyncio.to_thread(store_backlog, pod, "slow")
    token = pod.token("slow", ttl=4)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    # A reader with a small receive buffer that takes 40 ms per 8 KB frame: the
    # whole backlog would take 16 s.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", pod.port))
    ws = await connect(pod.ws_url, sock=sock, max_queue=2, open_timeout=10,
                       additional_headers={"Authorization": f"Bearer {token}"})
    late_bytes = frames = 0
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(60):
            while True:
                frame = await ws.recv()
                frames += 1
                if time.time() >= exp:
                    late_bytes += len(frame)
                await asyncio.sleep(0.04)
    closed_at = time.time()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert frames < BACKLOG  # the replay was cut short
    # After exp only what sat in the socket buffers (no queue, no more replay).
    assert late_bytes < 600_000, late_bytes
    assert closed_at - exp < 8, closed_at - exp
