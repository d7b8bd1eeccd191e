"""Fixtures of the abuse tests: real pods, some with a small descriptor limit,
and raw HTTP handshakes for what a WebSocket library will not send."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.pods import PodProcess

AbusePods = Callable[..., PodProcess]


@pytest.fixture
def abuse_pods(tmp_path: Path) -> Iterator[AbusePods]:
    """Start ``wsnode serve`` processes (``preexec`` runs in the child, e.g.
    ``descriptor_limit``); every one is stopped by pid at teardown."""
    pods: list[PodProcess] = []

    def start(pod_id: str = "pod-a", env: dict[str, str] | None = None,
              args: list[str] | None = None, preexec: Callable[[], None] | None = None,
              ) -> PodProcess:
        pod = PodProcess(pod_id, tmp_path, env, args, preexec)
        pods.append(pod)
        return pod.start()

    yield start
    for pod in pods:
        pod.kill()


async def raw_handshake(port: int, headers: list[tuple[str, str]], path: str = "/ws",
                        timeout: float = 10.0) -> tuple[int, dict[str, str], str]:
    """One WebSocket upgrade request with exactly ``headers`` (repeats allowed);
    the answer's status, headers (lower-case names) and body (up to 4 KiB)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
             *(f"{name}: {value}" for name, value in headers)]
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        async with asyncio.timeout(timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode().split("\r\n")
            answer = {k.strip().lower(): v.strip() for k, _, v in
                      (h.partition(":") for h in header_lines if h)}
            length = int(answer.get("content-length", "0"))
            body = (await reader.readexactly(length)).decode() if length else ""
        return int(status_line.split()[1]), answer, body
    finally:
        writer.close()
