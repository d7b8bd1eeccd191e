"""Intake: the TCP connections of the public port, up to the start of their handshake.

Contract:

* Every TCP connection of the public port is counted from its accept to its
  loss; past ``max_transports`` (``MAX_CONNECTIONS`` plus a headroom,
  ``wsnode.admission``) a new one is aborted as it is accepted, so that even a
  flood of raw TCP connections leaves descriptors to the admin port and the
  backends.
* At most ``per_iteration`` handshakes **start** (their first bytes are parsed)
  in one iteration of the event loop (``HANDSHAKES_PER_ITERATION``); the
  others wait, unread and in arrival order, for the next iterations. The loop
  reads every socket that became readable in one go: when a client opens
  hundreds of connections at once (or the kernel hands them over after a full
  accept queue), hundreds of handshakes would be parsed, checked and answered
  in the same iteration, and every connection of the pod would wait for them
  (tens of milliseconds). Bounded, an iteration holds a few milliseconds of
  handshakes, and a burst is spread over the next ones: the connections it
  delays are the burst's own.
* A waiting connection holds what it sent first (at most ``_WAITING_BYTES``,
  more is aborted: no handshake request is that long) and reads nothing
  more; one that closes while it waits is forgotten. It stays under the
  handshake's ``open_timeout``, which counts from the accept, as for any
  handshake. Nothing else changes: the handshake itself runs as before.
* A client that sends a request slowly holds nothing: the budget counts
  handshakes started, not handshakes in progress.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from websockets.asyncio.server import ServerConnection

from wsnode.wsread import FastFrames

# What a waiting connection may have sent before its turn: a handshake request
# is a few hundred bytes (websockets refuses headers over 8 KiB a line anyway).
_WAITING_BYTES = 64 * 1024


class Intake:
    """The public port's TCP connections (see the module). One event loop.
    ``per_iteration``: 0 for no bound; ``on_deferred``: called for each
    handshake that waits (a metric)."""

    def __init__(self, max_transports: int, per_iteration: int,
                 on_deferred: Callable[[], object] = lambda: None) -> None:
        self.max_transports = max_transports
        self.per_iteration = per_iteration
        self.transports = 0
        self.transports_aborted = 0
        self._on_deferred = on_deferred
        self._started = 0  # handshakes started in this iteration
        self._waiting: dict[_Waiting, None] = {}  # in arrival order
        self._scheduled = False

    def _start(self, conn: _Waiting) -> bool:
        """True when ``conn``'s handshake may start now (it is counted); False
        when it waits for a later iteration (it is queued)."""
        if not self.per_iteration:
            return True
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._next_iteration)
        if self._started < self.per_iteration and not self._waiting:
            self._started += 1
            return True
        self._waiting[conn] = None
        self._on_deferred()
        return False

    def _next_iteration(self) -> None:
        """Called once per iteration with handshakes: a new budget, spent first
        on the connections that wait."""
        self._scheduled = False
        self._started = 0
        while self._waiting and self._started < self.per_iteration:
            conn = next(iter(self._waiting))
            del self._waiting[conn]
            self._started += 1
            conn.resume()
        if self._started:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._next_iteration)

    def _forget(self, conn: _Waiting) -> None:
        self._waiting.pop(conn, None)

    def connection_class(self) -> type[ServerConnection]:
        """The connection class of the public port (see the module)."""
        intake = self

        class IntakeConnection(_Waiting):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                intake.transports += 1
                super().connection_made(transport)
                if intake.transports > intake.max_transports:
                    intake.transports_aborted += 1
                    cast(asyncio.Transport, transport).abort()

            def data_received(self, data: bytes) -> None:
                if self.held is not None:
                    self.hold(data)
                elif self.started or intake._start(self):
                    self.started = True
                    super().data_received(data)
                else:
                    self.held = []
                    self.hold(data)

            def connection_lost(self, exc: Exception | None) -> None:
                intake.transports -= 1
                if self.held is not None:
                    self.held = None
                    intake._forget(self)
                super().connection_lost(exc)

        return IntakeConnection


class _Waiting(FastFrames):
    """A connection that may wait, unread, for its handshake to start (and
    reads its frames by :mod:`wsnode.wsread` once open)."""

    started = False
    held: list[bytes] | None = None  # what it sent while waiting; None: not waiting

    def hold(self, data: bytes) -> None:
        assert self.held is not None
        transport = self.transport
        self.held.append(data)
        if sum(map(len, self.held)) > _WAITING_BYTES:
            transport.abort()
        else:
            transport.pause_reading()

    def eof_received(self) -> None:
        if self.held is not None:
            # Closed by the client before its turn: nothing to answer.
            self.transport.abort()
            return
        super().eof_received()

    def resume(self) -> None:
        """Its turn: parse what it sent, then read on."""
        held, self.held = self.held or [], None
        self.started = True
        transport = self.transport
        if transport.is_closing():
            return
        for data in held:
            FastFrames.data_received(self, data)
        transport.resume_reading()
