"""The load client of ``bench/closed_loop.py``: one process's share of the chat load.

One client drives every system compared, in its own protocol: wsnode's envelope
(``/ws?user=U``, ``{"type": "chat_message", "payload": {...}}``) or socket.io's
(engine.io v4 over its websocket transport, ``/socket.io/?EIO=4&transport=websocket&user=U``,
``42["chat_message", {...}]``), which both the Node.js socket.io server and
python-socketio speak. Frames are built and walked by hand (``bench.wsload``):
the client must cost far less per message than the servers it measures.

Every chat payload names its sender and a per-sender sequence number
(``{"to", "ts", "s", "n", "text"}``, ~200 bytes), so each arrival is matched to
the one message it answers. The accounting, per process:

- ``sent``: messages written; each is *outstanding* until it arrives.
- ``delivered``: first arrivals of outstanding messages, at the user they were
  sent to (``misrouted`` counts arrivals elsewhere, which are not delivered).
- ``duplicates``: arrivals of a message already delivered (ACK resends, or a
  server bug); ``late``: arrivals of a message already counted ``lost``.
- ``lost``: outstanding longer than ``lost_after`` seconds, or at the end.

So ``sent == delivered + lost`` once the run has drained. Modes:

- ``closed``: each sender holds ``inflight / senders`` credits and sends its
  next message only when one of its own is delivered (or declared lost).
- ``rate``: a fixed offered rate, still bounded by the credits; an offer that
  finds no free credit is counted ``throttled`` and skipped.
- ``burst``: ``messages`` messages written at once, as ``bench/cross_pod.py``
  does (backpressure paces the writes).

With ``ack`` (wsnode only) messages carry ``requiresAck`` and an id, and the
receiver acks each arrival, duplicates included.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from bench.wsload import text_frame

WSNODE = "wsnode"
SOCKETIO = "socketio"
MODES = ("closed", "rate", "burst")


@dataclass
class LoopConfig:
    """One process's share: ``senders`` and ``receivers`` are the ports their
    connections go to (user ids ``s<worker>.<i>`` and ``r<worker>.<j>``)."""

    proto: str
    senders: list[int]
    receivers: list[int]
    worker: int = 0
    host: str = "127.0.0.1"
    mode: str = "closed"
    inflight: int = 200
    rate: float = 0.0
    messages: int = 0  # burst: how many; closed/rate: a cap on sends (0: the clock decides)
    ack: bool = False
    payload_bytes: int = 200
    lost_after: float = 10.0


@dataclass
class Window:
    """Wall-clock instants (``time.time()``) shared by every process of a run."""

    start_at: float
    measure_from: float
    measure_to: float
    send_until: float


@dataclass
class Tally:
    sent: int = 0
    delivered: int = 0
    duplicates: int = 0
    late: int = 0
    lost: int = 0
    misrouted: int = 0
    unknown: int = 0
    throttled: int = 0
    acks_sent: int = 0
    errors: int = 0
    in_window: int = 0
    first_send: float = 0.0
    last_delivery: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, deliveries in the window

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Sender:
    __slots__ = ("conn", "credits", "cursor", "expired", "index", "next_n", "outstanding",
                 "targets", "user")

    def __init__(self, conn: Link, index: int, targets: list[str], credits: int) -> None:
        self.conn, self.index, self.user = conn, index, conn.user
        self.targets = targets
        self.cursor = index  # senders start on different receivers
        self.next_n = 0
        self.credits = credits
        self.outstanding: dict[int, float] = {}
        self.expired: set[int] = set()


class Link(asyncio.Protocol):
    """One WebSocket connection; every text frame goes to ``client.on_frame``."""

    def __init__(self, client: LoopClient, user: str, port: int) -> None:
        self.client, self.user, self.port = client, user, port
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.handshaken = False
        self.ready = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        path = (f"/ws?user={self.user}" if self.client.cfg.proto == WSNODE
                else f"/socket.io/?EIO=4&transport=websocket&user={self.user}")
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {path} HTTP/1.1\r\nHost: {self.client.cfg.host}:{self.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:12])
            del buf[:end + 4]
            if b" 101" not in status:
                self._fail(ConnectionError(f"{self.user}: {status.decode(errors='replace')}"))
                return
            self.handshaken = True
        pos, end = 0, len(buf)
        while end - pos >= 2:
            size = buf[pos + 1] & 0x7F
            head = 2
            if size == 126:
                if end - pos < 4:
                    break
                size, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif size == 127:
                if end - pos < 10:
                    break
                size, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if end - pos < head + size:
                break
            opcode = buf[pos] & 0x0F
            if opcode == 0x1:
                self.client.on_frame(self, bytes(buf[pos + head:pos + head + size]))
            elif opcode == 0x9 and self.transport is not None:  # ping: answer pong
                self.transport.write(b"\x8a\x80" + os.urandom(4))
            pos += head + size
        if pos:
            del buf[:pos]

    def send(self, text: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(text_frame(text))

    def _fail(self, exc: BaseException) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError(f"{self.user}: closed before ready"))


class LoopClient:
    """Opens the connections of one :class:`LoopConfig`, runs it, keeps its :class:`Tally`."""

    def __init__(self, cfg: LoopConfig) -> None:
        if cfg.proto not in (WSNODE, SOCKETIO) or cfg.mode not in MODES:
            raise ValueError(f"unknown protocol {cfg.proto!r} or mode {cfg.mode!r}")
        if cfg.ack and cfg.proto != WSNODE:
            raise ValueError("ACK-required messages are a wsnode feature")
        self.cfg = cfg
        self.tally = Tally()
        # Ids of ACK-required messages: unique per client run, so that a second
        # window on the same pods (--interleave) is not refused as repeats.
        self.id_prefix = f"m{os.urandom(4).hex()}."
        self.senders: list[Sender] = []
        self.receivers: list[Link] = []
        self.window = Window(0.0, 0.0, 0.0, float("inf"))
        self.finished = asyncio.Event()
        sample = orjson.dumps({"to": "r0.999", "ts": time.time(), "s": 49, "n": 999_999,
                               "text": ""})
        self.pad = "x" * max(0, cfg.payload_bytes - len(sample))

    # -- connections ---------------------------------------------------------------

    async def connect(self, parallel: int = 200) -> None:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(parallel)
        w = self.cfg.worker

        async def one(user: str, port: int) -> Link:
            async with sem:
                # A handshake reset by a server busy with the previous window's
                # disconnects (seen on a loaded machine, a one-pod run's 1,050
                # connections at once) is tried again: nothing is measured yet.
                for attempt in range(3):
                    try:
                        _, link = await loop.create_connection(
                            lambda: Link(self, user, port), self.cfg.host, port)
                        await asyncio.wait_for(link.ready, 30)
                        return link
                    except ConnectionResetError:
                        if attempt == 2:
                            raise
                        await asyncio.sleep(0.5 * (attempt + 1))
                raise AssertionError("unreachable")

        self.receivers = list(await asyncio.gather(
            *(one(f"r{w}.{j}", p) for j, p in enumerate(self.cfg.receivers))))
        links = await asyncio.gather(
            *(one(f"s{w}.{i}", p) for i, p in enumerate(self.cfg.senders)))
        n = len(links)
        for i, link in enumerate(links):
            # Targets on another server than the sender's, when there is one:
            # the cross-pod path is the one measured.
            targets = [r.user for r in self.receivers if r.port != link.port] \
                or [r.user for r in self.receivers]
            credits = self.cfg.inflight // n + (1 if i < self.cfg.inflight % n else 0)
            self.senders.append(Sender(link, i, targets, max(1, credits)))

    def close(self) -> None:
        for link in [*self.receivers, *(s.conn for s in self.senders)]:
            if link.transport is not None:
                link.transport.close()

    # -- frames in -----------------------------------------------------------------

    def on_frame(self, link: Link, data: bytes) -> None:
        if self.cfg.proto == SOCKETIO:
            self._on_socketio(link, data)
            return
        obj = orjson.loads(data)
        kind = obj.get("type")
        if kind == "chat_message":
            if self.cfg.ack and obj.get("id") is not None:
                link.send(orjson.dumps({"type": "ack", "payload": {"id": obj["id"]}}))
                self.tally.acks_sent += 1
            self._arrived(link, obj.get("payload"))
        elif kind == "welcome":
            if not link.ready.done():
                link.ready.set_result(None)
        elif kind == "error":
            self.tally.errors += 1

    def _on_socketio(self, link: Link, data: bytes) -> None:
        if data[:2] == b"42":
            event = orjson.loads(data[2:])
            if event[0] == "chat_message":
                self._arrived(link, event[1])
        elif data == b"2":  # engine.io ping: the client must answer
            link.send(b"3")
        elif data[:1] == b"0":  # engine.io open: join the default namespace
            link.send(b"40")
        elif data[:2] == b"40":
            if not link.ready.done():
                link.ready.set_result(None)
        elif data[:2] == b"44":
            link._fail(ConnectionError(f"{link.user}: {data.decode(errors='replace')}"))

    def _arrived(self, link: Link, payload: Any) -> None:
        now = time.time()
        t = self.tally
        try:
            sender = self.senders[payload["s"]]
            n = payload["n"]
        except (TypeError, KeyError, IndexError):
            t.unknown += 1
            return
        if payload.get("to") != link.user:
            t.misrouted += 1
            return
        sent_at = sender.outstanding.pop(n, None)
        if sent_at is None:
            if n in sender.expired:
                sender.expired.discard(n)
                t.late += 1
            elif isinstance(n, int) and n < sender.next_n:
                t.duplicates += 1
            else:
                t.unknown += 1
            return
        t.delivered += 1
        t.last_delivery = now
        if self.window.measure_from <= now < self.window.measure_to:
            t.in_window += 1
            t.latencies.append(now - sent_at)
        sender.credits += 1
        if self.cfg.mode == "closed":
            self._send(sender, now)
        self._check_done()

    # -- frames out ----------------------------------------------------------------

    def _may_send(self, now: float) -> bool:
        cap = self.cfg.messages
        return now < self.window.send_until and (cap <= 0 or self.tally.sent < cap)

    def _send(self, sender: Sender, now: float, *, force: bool = False) -> bool:
        if not force and (sender.credits <= 0 or not self._may_send(now)):
            return False
        n = sender.next_n
        sender.next_n += 1
        sender.credits -= 1
        target = sender.targets[sender.cursor % len(sender.targets)]
        sender.cursor += 1
        payload = {"to": target, "ts": now, "s": sender.index, "n": n, "text": self.pad}
        if self.cfg.proto == SOCKETIO:
            sender.conn.send(b"42" + orjson.dumps(["chat_message", payload]))
        else:
            frame: dict[str, Any] = {"type": "chat_message", "payload": payload}
            if self.cfg.ack:
                frame.update(id=f"{self.id_prefix}{n}", requiresAck=True)
            sender.conn.send(orjson.dumps(frame))
        sender.outstanding[n] = now
        self.tally.sent += 1
        return True

    # -- the run -------------------------------------------------------------------

    async def run(self, window: Window) -> Tally:
        """Send per the mode from ``window.start_at``, then drain: returns when every
        message sent has arrived or been declared lost."""
        self.window = window
        await asyncio.sleep(max(0.0, window.start_at - time.time()))
        t = self.tally
        t.first_send = time.time()
        expiry = asyncio.create_task(self._expire())
        try:
            if self.cfg.mode == "closed":
                for sender in self.senders:
                    while self._send(sender, time.time()):
                        pass
            elif self.cfg.mode == "rate":
                await self._offer_at_rate()
            else:
                for i in range(self.cfg.messages):
                    self._send(self.senders[i % len(self.senders)], time.time(), force=True)
                    if i % 500 == 499:
                        await asyncio.sleep(0)
            # Done once sending is over and nothing is outstanding: checked on
            # each arrival and by the expiry loop, so an idle drain ends too.
            self._check_done()
            await self.finished.wait()
        finally:
            expiry.cancel()
        for sender in self.senders:  # the drain is over: what is left is lost
            t.lost += len(sender.outstanding)
            sender.outstanding.clear()
        return t

    async def _offer_at_rate(self) -> None:
        start = time.time()
        offered = 0
        turn = 0
        while (now := time.time()) < self.window.send_until:
            due = int((now - start) * self.cfg.rate) - offered
            for _ in range(due):
                offered += 1
                for _probe in range(len(self.senders)):
                    turn += 1
                    if self._send(self.senders[turn % len(self.senders)], now):
                        break
                else:
                    self.tally.throttled += 1
            await asyncio.sleep(0.002)

    def _check_done(self) -> None:
        if self.finished.is_set():
            return
        t = self.tally
        if self.cfg.mode == "burst":
            done = t.delivered + t.lost >= self.cfg.messages
        else:
            done = not self._may_send(time.time()) and not any(
                s.outstanding for s in self.senders)
        if done:
            self.finished.set()

    async def _expire(self) -> None:
        """Declare messages outstanding for ``lost_after`` seconds lost (their
        credit returns), and end the drain once nothing is outstanding."""
        while True:
            await asyncio.sleep(0.25)
            now = time.time()
            limit = now - self.cfg.lost_after
            for sender in self.senders:
                old = [n for n, at in sender.outstanding.items() if at < limit]
                for n in old:
                    del sender.outstanding[n]
                    sender.expired.add(n)
                    sender.credits += 1
                    self.tally.lost += 1
                if old and self.cfg.mode == "closed":
                    while self._send(sender, now):
                        pass
            self._check_done()


async def run_share(cfg: LoopConfig, window_at: Any) -> Tally:
    """Connect, call ``window_at()`` (a coroutine function returning the
    :class:`Window`, e.g. after every process is connected), run, close."""
    client = LoopClient(cfg)
    try:
        await client.connect()
        window = await window_at()
        return await client.run(window)
    finally:
        client.close()
