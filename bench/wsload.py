"""A minimal WebSocket load client for benchmarks: raw asyncio, no framing library.

The benchmarks measure servers, so the client must cost much less than them per
frame: it does the opening handshake by hand, then only walks frame headers to
count messages, and decodes JSON for a 1-in-``sample`` subset to read the send
timestamp (``payload.ts``, epoch seconds as float) for latency. Server frames
are unmasked; frames the client sends are masked, as RFC 6455 requires.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import Callable

import orjson


def _mask(payload: bytes) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    # XOR with the repeated key, done on ints: fast enough for small frames.
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    masked = (int.from_bytes(payload, "big") ^ k).to_bytes(n, "big") if n else b""
    return key + masked


def text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return head + _mask(payload)


class Conn(asyncio.Protocol):
    """One client connection; ``on_message(conn, payload_bytes_or_None)`` per text frame
    (payload bytes only for sampled frames)."""

    def __init__(self, host: str, path: str, on_message: Callable[[Conn, bytes | None], None],
                 sample: int) -> None:
        self.host, self.path = host, path
        self.on_message = on_message
        self.sample = sample
        self.buf = bytearray()
        self.open = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.count = 0
        self.handshaken = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.handshaken:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buf[:12])
            del self.buf[:end + 4]
            if b" 101" not in status:
                self.open.set_exception(ConnectionError(status.decode(errors="replace")))
                return
            self.handshaken = True
            self.open.set_result(None)
        buf = self.buf
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b1 = buf[pos + 1] & 0x7F
            head = 2
            if b1 == 126:
                if end - pos < 4:
                    break
                b1 = int.from_bytes(buf[pos + 2:pos + 4], "big")
                head = 4
            elif b1 == 127:
                if end - pos < 10:
                    break
                b1 = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            if end - pos < head + b1:
                break
            opcode = buf[pos] & 0x0F
            if opcode == 0x1:
                self.count += 1
                payload = (bytes(buf[pos + head:pos + head + b1])
                           if self.count % self.sample == 0 else None)
                self.on_message(self, payload)
            elif opcode == 0x9 and self.transport is not None:
                # A pong repeats its ping's data (RFC 6455 5.5.3): the server takes
                # no other as an answer, and closes a connection that gives none.
                data = bytes(buf[pos + head:pos + head + b1])
                self.transport.write(struct.pack("!BB", 0x8A, 0x80 | len(data)) + _mask(data))
            pos += head + b1
        if pos:
            del buf[:pos]

    def send_json(self, obj: object) -> None:
        assert self.transport is not None
        self.transport.write(text_frame(orjson.dumps(obj)))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open.done():
            self.open.set_exception(exc or ConnectionError("closed during handshake"))
        if not self.closed.done():
            self.closed.set_result(None)


async def open_conns(host: str, port: int, paths: list[str],
                     on_message: Callable[[Conn, bytes | None], None], *, sample: int = 1,
                     parallel: int = 200) -> list[Conn]:
    """Open one connection per path, ``parallel`` handshakes at a time."""
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(parallel)

    async def one(path: str) -> Conn:
        async with sem:
            _, proto = await loop.create_connection(
                lambda: Conn(f"{host}:{port}", path, on_message, sample), host, port)
            await proto.open
            return proto

    return list(await asyncio.gather(*(one(p) for p in paths)))


def latency_of(payload: bytes | None, now: float) -> float | None:
    """Seconds since ``payload.ts`` of a sampled frame (None if not sampled/absent)."""
    if payload is None:
        return None
    obj = orjson.loads(payload)
    inner = obj.get("payload") if isinstance(obj, dict) else None
    ts = inner.get("ts") if isinstance(inner, dict) else None
    return now - ts if isinstance(ts, float) else None


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0}
    s = sorted(samples)

    def at(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 2)
    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99)}


def now() -> float:
    return time.time()
