"""A TCP proxy that a test can cut, to simulate a broker outage without one.

The shared RabbitMQ (or Redis) must never be stopped by a test, so outages are
made here instead: :class:`TcpProxy` listens on a free loopback port and pipes
every accepted connection to the real server. :meth:`TcpProxy.cut` aborts every
piped connection (both sides see a reset, as if the network or the broker
died) and closes the listening socket, so new connections are refused;
:meth:`TcpProxy.restore` listens again on the same port.

:meth:`TcpProxy.stall` makes a half-broken network instead: what the server
sends on the connections piped now is held back (the client's own writes still
reach the server) until :meth:`TcpProxy.resume`; nothing is reset, so the
client is not told. Connections accepted later flow normally, as a new
connection would take a working path.

:meth:`TcpProxy.hold` makes a slow server instead: connections are accepted
but not piped to the server (the client waits for the server's greeting)
until :meth:`TcpProxy.release`; :meth:`TcpProxy.wait_held` returns once one is
waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

_CHUNK = 64 * 1024


def _open_gate() -> asyncio.Event:
    gate = asyncio.Event()
    gate.set()
    return gate


@dataclass(eq=False)
class _Link:
    """One piped connection: data flows each way while its gate is set."""

    to_server: asyncio.Event = field(default_factory=_open_gate)
    to_client: asyncio.Event = field(default_factory=_open_gate)


class TcpProxy:
    """Asyncio TCP proxy from ``127.0.0.1:<port>`` to ``target_host:target_port``."""

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5672) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._links: set[_Link] = set()
        self._open = _open_gate()  # cleared: new connections wait (hold)
        self._held = asyncio.Event()  # a connection waits at the closed gate

    @property
    def cut_off(self) -> bool:
        return self._server is None

    def url(self, scheme: str = "amqp", userinfo: str = "guest:guest", path: str = "/") -> str:
        """A URL that reaches the target through this proxy."""
        return f"{scheme}://{userinfo}@127.0.0.1:{self.port}{path}"

    async def start(self) -> TcpProxy:
        """Listen on a free port (the first time) or on the same port again."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True)
            self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def cut(self) -> None:
        """Abort every piped connection and refuse new ones until :meth:`restore`."""
        server, self._server = self._server, None
        self._open.set()  # held connections go on, find no server and are aborted
        if server is not None:
            server.close()
        for writer in list(self._writers):
            # abort(), not close(): a reset is what a dead peer or network looks like.
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await server.wait_closed()

    def stall(self, toward: Literal["client", "server"] = "client") -> int:
        """Hold back the data of every connection piped now that flows
        ``toward`` the client (what the server sends) or the server; the
        other direction still flows. Returns the number of connections
        stalled. Later connections are not affected."""
        for link in self._links:
            (link.to_client if toward == "client" else link.to_server).clear()
        return len(self._links)

    def hold(self) -> None:
        """Accept new connections but pipe none until :meth:`release`."""
        self._open.clear()
        self._held.clear()

    async def wait_held(self) -> None:
        """Until a connection waits at the hold."""
        await self._held.wait()

    def release(self) -> None:
        """Pipe the held connections, and new ones at once."""
        self._open.set()

    def resume(self) -> None:
        """Let what :meth:`stall` held back flow again."""
        for link in self._links:
            link.to_client.set()
            link.to_server.set()

    async def restore(self) -> None:
        """Accept connections again, on the same port."""
        await self.start()

    async def close(self) -> None:
        await self.cut()

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _accept(self, client_r: asyncio.StreamReader,
                      client_w: asyncio.StreamWriter) -> None:
        if not self._open.is_set():
            self._held.set()
            await self._open.wait()
        if self._server is None:
            client_w.transport.abort()
            return
        try:
            async with asyncio.timeout(5.0):
                server_r, server_w = await asyncio.open_connection(
                    self.target_host, self.target_port)
        except (OSError, TimeoutError):
            client_w.transport.abort()
            return
        self.accepted += 1
        self._writers.update((client_w, server_w))
        link = _Link()
        self._links.add(link)
        loop = asyncio.get_running_loop()
        for reader, writer, other, gate in ((client_r, server_w, client_w, link.to_server),
                                            (server_r, client_w, server_w, link.to_client)):
            task = loop.create_task(self._pipe(reader, writer, other, link, gate))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    other: asyncio.StreamWriter, link: _Link, gate: asyncio.Event) -> None:
        try:
            while data := await reader.read(_CHUNK):
                if not gate.is_set():  # stalled: hold this chunk (and the rest) back
                    await gate.wait()
                    if writer.transport.is_closing():
                        break
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            # One side is gone: take the other down too, as a real network would.
            for w in (writer, other):
                self._writers.discard(w)
                w.transport.abort()
            # Let a stalled pipe of this connection see that it is gone.
            self._links.discard(link)
            link.to_client.set()
            link.to_server.set()
