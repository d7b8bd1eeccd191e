"""A Redis proxy that loses one reply, to test scripts that a client re-sends.

redis-py re-sends a request (or a whole pipeline) when its connection drops
before the reply arrives. If the server had already run the request, it runs
twice. :class:`ReplyDropProxy` makes exactly that happen on demand: it pipes
connections to a Redis server and understands the RESP stream both ways, so
that :meth:`ReplyDropProxy.drop_reply` can pick the first ``EVALSHA`` (or
``EVAL``) whose first script argument (``ARGV[1]``, the op of
``wsnode/lua/acks.lua``) is a given name. That request reaches the server and
runs; its reply is withheld (with every reply after it) and both sides of the
connection are reset, as if the network died right after the server answered.

The returned :class:`Drop` tells the test that it happened and how often the
same request (same ``ARGV[2]``, the request token) was seen: 2 once the client
re-sent it. Nothing else is changed, so every other request and reply passes
through untouched; :attr:`ReplyDropProxy.ops` counts the script requests that
went through, by op (how many resend claims pods made, say).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from dataclasses import dataclass, field

_CHUNK = 64 * 1024
_LINE_TYPES = b"+-:_,#("
_BULK_TYPES = b"$!="
_AGGREGATE_TYPES = b"*~>"


def _line_end(buf: bytes | bytearray, pos: int) -> int | None:
    end = buf.find(b"\r\n", pos)
    return None if end < 0 else end


def skip_value(buf: bytes | bytearray, pos: int) -> int | None:
    """Where the RESP2/RESP3 value starting at ``pos`` ends; None if incomplete."""
    if pos >= len(buf):
        return None
    kind = buf[pos]
    end = _line_end(buf, pos)
    if end is None:
        return None
    if kind in _LINE_TYPES:
        return end + 2
    if kind in _BULK_TYPES:
        size = int(buf[pos + 1:end])
        if size < 0:
            return end + 2
        stop = end + 2 + size + 2
        return stop if stop <= len(buf) else None
    if kind in _AGGREGATE_TYPES or kind in b"%|":
        count = int(buf[pos + 1:end])
        if kind in b"%|":
            count *= 2
        at: int | None = end + 2
        for _ in range(max(count, 0)):
            assert at is not None
            at = skip_value(buf, at)
            if at is None:
                return None
        if kind == ord("|"):  # attributes come before the value they describe
            assert at is not None
            return skip_value(buf, at)
        return at
    raise ValueError(f"not RESP: {bytes(buf[pos:pos + 16])!r}")


def parse_command(buf: bytes | bytearray, pos: int) -> tuple[list[bytes], int] | None:
    """A client request (an array of bulk strings) at ``pos``: (args, end), or
    None if incomplete."""
    end = _line_end(buf, pos)
    if end is None:
        return None
    if buf[pos] != ord("*"):
        raise ValueError(f"not a RESP request: {bytes(buf[pos:pos + 16])!r}")
    args: list[bytes] = []
    at = end + 2
    for _ in range(int(buf[pos + 1:end])):
        head = _line_end(buf, at)
        if head is None:
            return None
        size = int(buf[at + 1:head])
        stop = head + 2 + size
        if stop + 2 > len(buf):
            return None
        args.append(bytes(buf[head + 2:stop]))
        at = stop + 2
    return args, at


def script_op(args: list[bytes]) -> tuple[str, bytes] | None:
    """(ARGV[1], ARGV[2]) of an EVAL/EVALSHA request, else None."""
    if len(args) < 3 or args[0].upper() not in (b"EVALSHA", b"EVAL"):
        return None
    first = 3 + int(args[2])
    if len(args) <= first:
        return None
    token = args[first + 1] if len(args) > first + 1 else b""
    return args[first].decode(errors="replace"), token


@dataclass
class Drop:
    """One armed loss: the op it waits for, then the request it took."""

    op: str
    token: bytes | None = None
    sightings: int = 0  # requests seen with this op and token (2: re-sent once)
    dropped: asyncio.Event = field(default_factory=asyncio.Event)


class ReplyDropProxy:
    """TCP proxy from ``127.0.0.1:<port>`` to a Redis server (see the module)."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self.ops: Counter[str] = Counter()
        self._armed: deque[Drop] = deque()
        self._taken: list[Drop] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> ReplyDropProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def drop_reply(self, op: str) -> Drop:
        """Lose the reply to the next script request whose op is ``op``."""
        drop = Drop(op)
        self._armed.append(drop)
        return drop

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader,
                      client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(self.target_host,
                                                               self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        self._writers.update((client_w, server_w))
        # One entry per request in flight on this connection, in order: the Drop
        # whose reply must be lost, or None.
        inflight: deque[Drop | None] = deque()
        both = (client_w, server_w)
        for coro in (self._requests(client_r, server_w, inflight, both),
                     self._replies(server_r, client_w, inflight, both)):
            task = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _classify(self, args: list[bytes]) -> Drop | None:
        found = script_op(args)
        if found is None:
            return None
        op, token = found
        self.ops[op] += 1
        for drop in self._taken:
            if drop.op == op and drop.token == token:
                drop.sightings += 1  # the client re-sent the request
        if self._armed and self._armed[0].op == op:
            drop = self._armed.popleft()
            drop.token, drop.sightings = token, 1
            self._taken.append(drop)
            return drop
        return None

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        inflight: deque[Drop | None],
                        both: tuple[asyncio.StreamWriter, ...]) -> None:
        buf = bytearray()
        try:
            while data := await reader.read(_CHUNK):
                buf += data
                pos = 0
                while (parsed := parse_command(buf, pos)) is not None:
                    args, pos = parsed
                    # Registered before the bytes go out: no reply can precede it.
                    inflight.append(self._classify(args))
                del buf[:pos]
                writer.write(data)
                await writer.drain()
        except (OSError, ValueError):
            pass
        finally:
            self._abort(both)

    async def _replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       inflight: deque[Drop | None],
                       both: tuple[asyncio.StreamWriter, ...]) -> None:
        buf = bytearray()
        try:
            while data := await reader.read(_CHUNK):
                buf += data
                pos = 0
                while (end := skip_value(buf, pos)) is not None:
                    drop = inflight.popleft() if inflight else None
                    if drop is not None:
                        # The replies before it go out; it and the rest are lost.
                        writer.write(bytes(buf[:pos]))
                        with contextlib.suppress(OSError):
                            await writer.drain()
                        self._abort(both)
                        drop.dropped.set()
                        return
                    pos = end
                if pos:
                    writer.write(bytes(buf[:pos]))
                    del buf[:pos]
                    await writer.drain()
        except (OSError, ValueError):
            pass
        finally:
            self._abort(both)

    def _abort(self, writers: tuple[asyncio.StreamWriter, ...]) -> None:
        for w in writers:
            self._writers.discard(w)
            w.transport.abort()
