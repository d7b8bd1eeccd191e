"""The attacker of ``bench/abuse.py``: raw connections and the floods.

The attacker must cost the pod, not itself: its connections are raw asyncio
protocols (handshake written by hand, frames built once and sent with the
all-zero masking key, which RFC 6455 allows and a server cannot tell from any
other, answer types read from the first bytes of a frame). A flood keeps a
window of frames in flight per connection and sends the next one as soon as an
answer comes back, so it goes as fast as the pod answers; a connection the pod
closes is opened again at once (as a real attacker would), and every handshake
outcome and close code is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

FrameHook = Callable[["Wire", str, bytes], None]


class Refused(Exception):
    """The pod answered the handshake with an HTTP status other than 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A client frame with the all-zero masking key (so the payload goes as is)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def sniff(head: bytes) -> str:
    """The ``type`` of a server frame from its first bytes (pods write it first)."""
    if head.startswith(b'{"type":"'):
        end = head.find(b'"', 9)
        if end > 0:
            return head[9:end].decode(errors="replace")
    with contextlib.suppress(ValueError):
        obj = orjson.loads(head)
        if isinstance(obj, dict):
            return str(obj.get("type"))
    return "?"


class Wire(asyncio.Protocol):
    """One raw client connection; ``on_frame(wire, type, head)`` per text frame,
    ``head`` being the whole frame for small ones and its first bytes otherwise."""

    def __init__(self, request: bytes, on_frame: FrameHook) -> None:
        loop = asyncio.get_running_loop()
        self.request, self.on_frame = request, on_frame
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[int] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.close_code: int | None = None
        self.bytes_in = 0
        self.ready = False  # the replay at connect is over (its restore frame came)
        self.inflight = 0
        self.last_answer = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            parts = bytes(self.buf[:self.buf.find(b"\r\n")]).split()
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            del self.buf[:end + 4]
            if status != 101:
                if not self.opened.done():
                    self.opened.set_exception(Refused(status))
                self.abort()
                return
            self.upgraded = True
            self.opened.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buf, pos, end = self.buf, 0, len(self.buf)
        while end - pos >= 2:
            n, head = buf[pos + 1] & 0x7F, 2
            if n == 126:
                if end - pos < 4:
                    break
                n, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif n == 127:
                if end - pos < 10:
                    break
                n, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if end - pos < head + n:
                break
            opcode, start = buf[pos] & 0x0F, pos + head
            if opcode == 0x1:
                first = bytes(buf[start:start + min(n, 256)])
                typ = sniff(first)
                body = first if n <= 256 or typ not in ("error", "restore") \
                    else bytes(buf[start:start + n])
                self.on_frame(self, typ, body)
            elif opcode == 0x8:
                self.close_code = int.from_bytes(buf[start:start + 2], "big") if n >= 2 else 1005
                self.send(frame(bytes(buf[start:start + min(n, 2)]), 0x8))
                self.abort()
                return
            elif opcode == 0x9:
                self.send(frame(bytes(buf[start:start + n]), 0xA))
            pos = start + n
        del buf[:pos]

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self, code: int = 1000) -> None:
        """Start a normal close; the pod answers and drops the TCP connection."""
        self.send(frame(code.to_bytes(2, "big"), 0x8))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionResetError("closed in the handshake"))
        if not self.closed.done():
            self.closed.set_result(self.close_code or 1006)


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    token: str

    def request(self) -> bytes:
        return (f"GET /ws HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: YWJ1c2UtYmVuY2gtIGtleQ==\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {self.token}\r\n\r\n"
                ).encode()


async def connect(target: Target, on_frame: FrameHook, timeout: float) -> Wire:
    """An upgraded connection, or Refused / OSError / TimeoutError."""
    loop = asyncio.get_running_loop()
    wire: Wire | None = None
    try:
        async with asyncio.timeout(timeout):
            _, wire = await loop.create_connection(
                lambda: Wire(target.request(), on_frame), target.host, target.port)
            await wire.opened
    except BaseException:
        if wire is not None:
            wire.abort()
        raise
    return wire


def outcome(exc: BaseException) -> str:
    """How a handshake failed, as a short label (``http 503``, ``timeout``, ...)."""
    if isinstance(exc, Refused):
        return f"http {exc.status}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno)).lower()
    return type(exc).__name__


@dataclass
class Tally:
    """What the attacker got in one phase."""

    sent: int = 0
    handshakes: Counter[str] = field(default_factory=Counter)  # "101", "http 503", ...
    frames: Counter[str] = field(default_factory=Counter)  # received, by type
    errors: Counter[str] = field(default_factory=Counter)  # error frames, by code
    closes: Counter[str] = field(default_factory=Counter)  # by the pod, by close code
    bytes_in: int = 0
    replayed_max: int = 0  # largest replay a restore frame reported
    unanswered: int = 0  # frames given up on after STALL_S without an answer
    busy_s: float = 0.0  # from the start of a flood to its last answer

    def on_frame(self, typ: str, body: bytes) -> None:
        self.frames[typ] += 1
        if typ == "error":
            with contextlib.suppress(ValueError, AttributeError):
                self.errors[str(orjson.loads(body)["payload"]["code"])] += 1
        elif typ == "restore":
            with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):
                replayed = int(orjson.loads(body)["payload"]["replayed"])
                self.replayed_max = max(self.replayed_max, replayed)

    def to_json(self) -> dict[str, object]:
        return {"sent": self.sent, "handshakes": dict(self.handshakes),
                "frames": dict(self.frames), "errors": dict(self.errors),
                "closes": dict(self.closes), "mib_in": round(self.bytes_in / 2**20, 1),
                "replayed_max": self.replayed_max, "unanswered": self.unanswered,
                "busy_s": round(self.busy_s, 1)}


STALL_S = 2.0  # no answer for this long: the frames in flight count as unanswered


@dataclass(frozen=True, slots=True)
class Flood:
    """``conns`` connections each keeping ``window`` frames in flight until
    ``until`` (monotonic) or ``cap`` frames in all; ``make(n)`` is frame ``n``."""

    conns: int
    window: int
    answers: frozenset[str]  # frame types that answer one frame sent
    make: Callable[[int], bytes]
    until: float
    cap: int | None = None


async def flood(target: Target, spec: Flood, tally: Tally) -> None:
    """Run ``spec``; connections still open at the end are closed with 1000."""
    numbers = iter(range(sys.maxsize))
    start = time.monotonic()

    def top_up(wire: Wire) -> None:
        while wire.inflight < spec.window and time.monotonic() < spec.until and \
                (spec.cap is None or tally.sent < spec.cap):
            wire.send(spec.make(next(numbers)))
            wire.inflight += 1
            tally.sent += 1

    def on_frame(wire: Wire, typ: str, body: bytes) -> None:
        tally.on_frame(typ, body)
        if typ == "restore" and not wire.ready:
            wire.ready = True
        elif typ in spec.answers and wire.inflight:
            wire.inflight -= 1
        else:
            return
        wire.last_answer = time.monotonic()
        tally.busy_s = wire.last_answer - start
        top_up(wire)

    async def one() -> None:
        while time.monotonic() < spec.until:
            try:
                wire = await connect(target, on_frame, 5.0)
            except (OSError, TimeoutError, Refused) as exc:
                tally.handshakes[outcome(exc)] += 1
                await asyncio.sleep(0.1)
                continue
            tally.handshakes["101"] += 1
            while not wire.closed.done() and time.monotonic() < spec.until:
                await asyncio.wait([wire.closed], timeout=0.25)
                if wire.ready and time.monotonic() - wire.last_answer > STALL_S:
                    tally.unanswered += wire.inflight
                    wire.inflight, wire.last_answer = 0, time.monotonic()
                    top_up(wire)
            if wire.closed.done():
                tally.closes[str(wire.closed.result())] += 1
                await asyncio.sleep(0.1)
            else:
                await close_all([wire])
            tally.bytes_in += wire.bytes_in

    await asyncio.gather(*(one() for _ in range(spec.conns)))


async def close_all(wires: list[Wire], timeout: float = 5.0) -> None:
    """Close normally, then drop whatever did not finish within ``timeout``."""
    for wire in wires:
        wire.close()
    pending = [w.closed for w in wires if not w.closed.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    for wire in wires:
        if not wire.closed.done():
            wire.abort()


async def hold_many(target: Target, attempts: int, parallel: int, open_for: float,
                    hold_s: float, tally: Tally) -> dict[str, float]:
    """Open up to ``attempts`` connections (``parallel`` handshakes at a time, for
    at most ``open_for`` s), hold them ``hold_s`` s, then close them."""
    wires: list[Wire] = []
    sem = asyncio.Semaphore(parallel)
    start = time.monotonic()
    stop_opening = start + open_for

    def on_frame(_wire: Wire, typ: str, body: bytes) -> None:
        tally.on_frame(typ, body)

    async def one() -> None:
        async with sem:
            if time.monotonic() >= stop_opening:
                tally.handshakes["not tried (time)"] += 1
                return
            tally.sent += 1
            try:
                wire = await connect(target, on_frame, 5.0)
            except (OSError, TimeoutError, Refused) as exc:
                tally.handshakes[outcome(exc)] += 1
                return
            tally.handshakes["101"] += 1
            wires.append(wire)

    await asyncio.gather(*(one() for _ in range(attempts)))
    opened_s = time.monotonic() - start
    await asyncio.sleep(hold_s)
    held = sum(not w.closed.done() for w in wires)
    for wire in wires:
        if wire.closed.done():
            tally.closes[str(wire.closed.result())] += 1
    await close_all([w for w in wires if not w.closed.done()])
    tally.bytes_in += sum(w.bytes_in for w in wires)
    return {"open_s": round(opened_s, 2), "held": held}
