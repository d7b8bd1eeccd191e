"""wsnode.wsread: a connection reading its common frames itself behaves, byte for
byte, as websockets' own connection fed the same stream, however it is split.

Differential: the same bytes, cut at the same places, go to a FastFrames
connection and to a plain ServerConnection; both must queue the same frames
for the reader, write the same bytes back (pongs, close frames) and end in the
same state with the same close codes.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct
from typing import Any

import pytest
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.frames import Frame
from websockets.http11 import Request
from websockets.protocol import SERVER, Protocol, State
from websockets.speedups import apply_mask

from wsnode.wsread import FastFrames

MAX_SIZE = 100_000


class _Transport(asyncio.Transport):
    """Records what the connection writes; reading can be paused."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data: Any) -> None:
        self.written += data

    def write_eof(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def _open(cls: type[ServerConnection]) -> tuple[ServerConnection, _Transport]:
    protocol = Protocol(SERVER, state=State.OPEN, max_size=MAX_SIZE)
    conn = cls(protocol, server=None)  # type: ignore[arg-type]  # no handshake here
    transport = _Transport()
    Connection.connection_made(conn, transport)  # without starting a handler task
    conn.request = Request("/ws", Headers())  # as after the opening handshake
    return conn, transport


def frame(first: int, payload: bytes, *, masked: bool = True) -> bytes:
    """One frame: ``first`` is the byte with FIN, RSV and the opcode."""
    n = len(payload)
    if n < 126:
        head = bytes([first, (0x80 if masked else 0) | n])
    elif n < 65536:
        head = bytes([first, (0x80 if masked else 0) | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, (0x80 if masked else 0) | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + apply_mask(payload, mask)


TEXT, BINARY, CONT_FIN, TEXT_MORE, CONT_MORE = 0x81, 0x82, 0x80, 0x01, 0x00
PING, PONG, CLOSE = 0x89, 0x8A, 0x88

COMMON = [frame(TEXT, b'{"type":"chat_message","payload":{"text":"hi"}}'),
          frame(TEXT, b'{"type":"chat_message","payload":{"text":"' + b"x" * 300 + b'"}}'),
          frame(BINARY, bytes(range(256)) * 3), frame(TEXT, b"")]
OTHERS = [frame(PING, b"are you there"), frame(PONG, b"unsolicited"),
          frame(TEXT_MORE, b'{"type":"chat_') + frame(PING, b"mid") + frame(CONT_FIN, b'x"}'),
          frame(BINARY, os.urandom(70_000)),  # a 64-bit length, under the limit
          frame(TEXT, b"\xff\xfe not utf-8")]  # queued as it is: recv() fails it (1007)
ENDINGS = [frame(CLOSE, struct.pack("!H", 1000) + b"bye"),
           frame(TEXT, b"x" * (MAX_SIZE + 1)),  # over the limit: 1009
           frame(TEXT, b"unmasked", masked=False),  # a client must mask: 1002
           frame(0xC1, b"rsv1 without an extension"),  # 1002
           frame(TEXT_MORE, b"a") + frame(TEXT, b"b"),  # a new message inside one: 1002
           frame(0x83, b"reserved opcode")]  # 1002


def _feed(stream: bytes, cuts: list[int]) -> list[tuple[Any, ...]]:
    """Feed ``stream`` cut at ``cuts`` to both kinds; what each one observed."""
    seen = []
    for cls in (ServerConnection, FastFrames):
        conn, transport = _open(cls)
        start = 0
        for cut in [*cuts, len(stream)]:
            if cut > start:
                conn.data_received(stream[start:cut])
            start = max(start, cut)
        queued = [(f.opcode, bytes(f.data), f.fin) for f in conn.recv_messages.frames.queue]
        protocol = conn.protocol
        seen.append((queued, bytes(transport.written), protocol.state, transport.closed,
                     protocol.close_rcvd and protocol.close_rcvd.code,
                     protocol.close_sent and protocol.close_sent.code))
    return seen


def _same(stream: bytes, cuts: list[int]) -> None:
    plain, fast = _feed(stream, cuts)
    # Close frames a server sends are unmasked: both write the same bytes.
    assert fast == plain


@pytest.mark.parametrize("ending", [b"", *ENDINGS], ids=range(len(ENDINGS) + 1))
async def test_every_single_cut_reads_as_websockets_does(ending: bytes) -> None:
    stream = b"".join(COMMON[:2] + OTHERS[:3] + COMMON[2:]) + ending + COMMON[0]
    # Every cut, but inside the 100 kB frame only near its ends (and every 997th).
    ending_at = len(stream) - len(COMMON[0])
    for cut in range(len(stream) + 1):
        if cut < ending_at - len(ending) + 2000 or cut > ending_at - 2000 or not cut % 997:
            _same(stream, [cut])


@pytest.mark.parametrize("seed", range(40))
async def test_random_streams_cut_at_random_read_as_websockets_does(seed: int) -> None:
    rng = random.Random(seed)
    parts = [rng.choice(COMMON + OTHERS) for _ in range(rng.randint(1, 12))]
    if rng.random() < 0.5:
        parts.insert(rng.randrange(len(parts) + 1), rng.choice(ENDINGS))
    stream = b"".join(parts)
    cuts = sorted(rng.sample(range(len(stream) + 1), k=min(len(stream), rng.randint(0, 30))))
    _same(stream, cuts)


async def test_common_frames_take_the_short_path() -> None:
    """The point of the module: websockets' parser never sees a common frame."""
    conn, _ = _open(FastFrames)
    parsed: list[Frame] = []
    real = conn.protocol.recv_frame

    def spy(f: Frame) -> None:
        parsed.append(f)
        real(f)

    conn.protocol.recv_frame = spy  # type: ignore[method-assign,assignment]
    stream = b"".join(COMMON) + frame(PING, b"p") + COMMON[0]
    for cut in (3, 70, len(stream) - 5):  # frames split across reads too
        conn.data_received(stream[:cut])
        stream = stream[cut:]
    conn.data_received(stream)
    assert [f.opcode.name for f in parsed] == ["PING"]
    assert len(conn.recv_messages.frames.queue) == len(COMMON) + 1


async def test_a_connection_with_bytes_left_by_the_handshake_keeps_the_parser() -> None:
    """Frames sent before the handshake's answer are in websockets' buffer: its
    parser may be inside a frame, so this connection never takes the short path."""
    conn, _ = _open(FastFrames)
    whole = COMMON[1]
    conn.protocol.receive_data(whole[:5])  # as if left over from the handshake's read
    conn.data_received(whole[5:] + COMMON[0])
    assert isinstance(conn, FastFrames)
    assert conn._fast is False
    assert [bytes(f.data) for f in conn.recv_messages.frames.queue] == [
        b'{"type":"chat_message","payload":{"text":"' + b"x" * 300 + b'"}}',
        b'{"type":"chat_message","payload":{"text":"hi"}}']
