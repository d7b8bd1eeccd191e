"""The hub: this pod's connections, ``user -> {conn}``, and their send queues.

Every frame to a client goes through :meth:`Conn.push`: a per-connection queue
bounded in bytes, emptied by at most one writer task that exists only while
there is something to write (an idle connection costs no task). A connection
whose queue would pass its bound is closed with 4408 and its queue dropped, so
one slow reader cannot grow the pod's memory; its ACK-required messages stay
stored and reach it on reconnect.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from wsnode.budget import ConnBudget
from wsnode.ids import ConnId, PodId, UserId
from wsnode.protocol import CloseCode, Envelope, close_reason

log = logging.getLogger("wsnode.hub")


class Conn:
    """One WebSocket connection of a user, as handlers see it.

    ``send`` and ``push`` never block: they queue, or report False when the
    connection is closing or was just closed for being too slow.
    """

    __slots__ = (
        "_closer",
        "_held",
        "_held_bytes",
        "_on_held_dropped",
        "_on_overflow",
        "_queue",
        "_queued",
        "_replayed",
        "_writer",
        "budget",
        "claims",
        "close_timeout",
        "closing",
        "dropping",
        "id",
        "max_queue_bytes",
        "pod",
        "since",
        "user",
        "ws",
    )

    def __init__(
        self,
        ws: ServerConnection,
        conn_id: ConnId,
        user: UserId,
        pod: PodId,
        since: int,
        *,
        claims: Mapping[str, Any] | None = None,
        max_queue_bytes: int = 1 << 20,
        close_timeout: float = 5.0,
        on_overflow: Callable[[Conn], None] | None = None,
        on_held_dropped: Callable[[int], None] | None = None,
        budget: ConnBudget | None = None,
    ) -> None:
        self.ws = ws
        self.id = conn_id
        self.user = user
        self.pod = pod
        self.since = since
        self.claims: Mapping[str, Any] = claims or {}
        self.max_queue_bytes = max_queue_bytes
        self.close_timeout = close_timeout
        self.closing = False
        # Closing abruptly (token expired, over budget, too slow): nothing more is
        # written to it, and its frames are no longer handled.
        self.dropping = False
        # What this connection may still send of the frames the rate limiter does
        # not count (wsnode.budget); None: no limit.
        self.budget = budget
        self._on_overflow = on_overflow
        self._on_held_dropped = on_held_dropped
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        # Routed messages held back while the connection replays (see hold()):
        # (frame, ack id, expiresAt).
        self._held: list[tuple[bytes, str | None, int | None]] | None = None
        self._held_bytes = 0
        # Ids the replay just sent: a send whose store the replay already read can
        # still be on its way here, just after the release.
        self._replayed: set[str] = set()

    def __repr__(self) -> str:
        return f"Conn(id={self.id!r}, user={self.user!r})"

    @property
    def queued_bytes(self) -> int:
        return self._queued

    async def send(self, env: Envelope) -> bool:
        """Queue ``env`` for this connection only (no ACK tracking)."""
        return self.push(env.encode())

    def deliver(self, frame: bytes, ack_id: str | None = None,
                expires_at: int | None = None) -> bool:
        """A routed message (through the hub): held back while the connection
        replays, so it can neither overtake the replay nor repeat a message the
        replay carries (nor go out after its ``expires_at``). False if it will
        not be sent."""
        if ack_id is not None and ack_id in self._replayed:
            return True  # the replay carried it a moment ago
        if self._held is None:
            return self.push(frame)
        if self.closing:
            return False
        if self._held_bytes + len(frame) > self.max_queue_bytes:
            # A long replay of a busy user: rather than close a client that reads
            # fine, give up what was held. ACK-required messages come back as
            # resends (they are tracked); at-most-once ones are counted as dropped.
            if self._on_held_dropped is not None:
                self._on_held_dropped(sum(1 for _, a, _ in self._held if a is None))
            self._held, self._held_bytes = [], 0
        self._held.append((frame, ack_id, expires_at))
        self._held_bytes += len(frame)
        return True

    def hold(self) -> None:
        """Hold routed messages back until :meth:`release`."""
        self._held, self._held_bytes = [], 0

    def release(self, replayed: set[str], now_ms: int, echo_s: float = 1.0) -> int:
        """Send what was held, minus the ACK-required ids the replay already sent
        and what expired meanwhile (returns how many at-most-once ones expired);
        for ``echo_s`` more (less than a resend interval), drop deliveries of
        those ids: they are sends that were in flight during the replay."""
        held, self._held, self._held_bytes = self._held or [], None, 0
        expired = 0
        for frame, ack_id, expires_at in held:
            if expires_at is not None and expires_at <= now_ms:
                expired += ack_id is None
            elif ack_id is None or ack_id not in replayed:
                self.push(frame)
        if replayed:
            self._replayed = replayed
            asyncio.get_running_loop().call_later(echo_s, self._forget_replayed)
        return expired

    def _forget_replayed(self) -> None:
        self._replayed = set()

    async def flushed(self) -> None:
        """Until every queued frame is written to the socket (or the connection
        is done): a producer of many frames waits here instead of overflowing.
        Cancelling the caller does not cancel the writer."""
        writer = self._writer
        if writer is not None:
            await asyncio.wait({writer})

    def push(self, frame: bytes) -> bool:
        """Queue one encoded text frame. False if it will not be sent."""
        if self.closing:
            return False
        size = len(frame)
        # A frame larger than the whole bound still goes out on an idle queue;
        # otherwise no message above the bound could ever be delivered.
        if self._queued and self._queued + size > self.max_queue_bytes:
            self._overflow()
            return False
        if self._writer is None and not self._queue and self._write_now(frame):
            return True
        self._queue.append(frame)
        self._queued += size
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())
        return True

    def _write_now(self, frame: bytes) -> bool:
        """Write straight to the socket when nothing is queued and the transport
        is not applying backpressure; False means "queue it instead".

        This is what ``ServerConnection.send`` does minus its ``await drain()``,
        which only waits while the transport is paused: skipping the task and
        the await is most of the cost of a small frame.
        """
        ws = self.ws
        if ws.protocol.state is not State.OPEN or ws.paused or ws.send_in_progress is not None \
                or ws.transport.is_closing():
            return False
        ws.protocol.send_text(frame)
        ws.send_data()
        return True

    async def _write(self) -> None:
        try:
            while self._queue:
                frame = self._queue.popleft()
                self._queued -= len(frame)
                await self.ws.send(frame, text=True)
        except ConnectionClosed:
            self._drop_queue()
        finally:
            self._writer = None

    def _drop_queue(self) -> None:
        self._queue.clear()
        self._queued = 0

    def _overflow(self) -> None:
        log.warning("closing slow consumer: send queue over %d bytes", self.max_queue_bytes,
                    extra={"conn": self.id, "user": self.user})
        self._discard()
        if self._on_overflow is not None:
            self._on_overflow(self)
        self.close_soon(CloseCode.SLOW_CONSUMER, "slow consumer: send queue overflow")

    def _discard(self) -> None:
        """Closing from now on, and nothing more written before the close frame:
        every later push is refused, what is queued or held is dropped."""
        self.closing = self.dropping = True
        self._drop_queue()
        self._held, self._held_bytes = None, 0
        if self._writer is not None:
            # The writer may be parked in drain() behind a full socket: stop it so
            # the close frame is the next thing written.
            self._writer.cancel()
            self._writer = None

    def close_soon(self, code: int, reason: str, *, discard: bool = False) -> None:
        """Start closing (idempotent). Queued frames are flushed first, unless
        ``discard``: then they are dropped and the close frame goes out next
        (a token that expired must not keep a replay flowing)."""
        if discard:
            self._discard()
        if self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self.close(code, reason))

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Flush what is queued, then close with ``code``, within ``close_timeout``.

        A peer that does not read is aborted at the deadline instead of holding
        the task and its buffers forever.
        """
        self.closing = True
        try:
            async with asyncio.timeout(self.close_timeout):
                await self.flushed()
                await self.ws.close(code, close_reason(reason))
        except TimeoutError:
            self._drop_queue()
            if self._writer is not None:
                self._writer.cancel()
            self.ws.transport.abort()


class Hub:
    """This pod's connections by id and by user. Not thread-safe; one event loop."""

    def __init__(self) -> None:
        self._conns: dict[ConnId, Conn] = {}
        self._users: dict[UserId, dict[ConnId, Conn]] = {}

    def add(self, conn: Conn) -> bool:
        """Register ``conn``; True when it is the user's first on this pod."""
        self._conns[conn.id] = conn
        conns = self._users.setdefault(conn.user, {})
        conns[conn.id] = conn
        return len(conns) == 1

    def remove(self, conn: Conn) -> bool:
        """Forget ``conn``; True when it was the user's last on this pod."""
        if self._conns.pop(conn.id, None) is None:
            return False
        conns = self._users.get(conn.user)
        if conns is None:
            return False
        conns.pop(conn.id, None)
        if conns:
            return False
        del self._users[conn.user]
        return True

    def deliver(self, user: UserId, frame: bytes, ack_id: str | None = None,
                expires_at: int | None = None) -> tuple[int, int]:
        """Queue ``frame`` on every connection of ``user``: ``(taken, refused)``,
        refused by connections that are closing (drained, or too slow)."""
        conns = self._users.get(user)
        if not conns:
            return 0, 0
        taken = 0
        # A copy: a push that overflows closes that connection, which edits the dict.
        for conn in tuple(conns.values()):
            if conn.deliver(frame, ack_id, expires_at):
                taken += 1
        return taken, len(conns) - taken

    def deliver_all(self, frame: bytes, expires_at: int | None = None) -> tuple[int, int]:
        """Queue ``frame`` on every connection here (a broadcast): ``(taken, refused)``."""
        return deliver_each(tuple(self._conns.values()), frame, expires_at)

    def conns_of(self, user: UserId) -> list[Conn]:
        return list(self._users.get(user, {}).values())

    def has(self, user: UserId) -> bool:
        return user in self._users

    def users(self) -> list[UserId]:
        """Users with a connection here (a snapshot)."""
        return list(self._users)

    def backed_up(self, user: UserId) -> bool:
        """True when every connection of ``user`` here still has frames queued
        (it is reading slower than it is sent to)."""
        conns = self._users.get(user)
        if not conns:
            return False
        return all(c.queued_bytes for c in conns.values())

    def get(self, conn_id: ConnId) -> Conn | None:
        return self._conns.get(conn_id)

    def __iter__(self) -> Iterator[Conn]:
        return iter(list(self._conns.values()))

    def __len__(self) -> int:
        return len(self._conns)

    @property
    def user_count(self) -> int:
        return len(self._users)


def deliver_each(conns: tuple[Conn, ...], frame: bytes,
                 expires_at: int | None = None) -> tuple[int, int]:
    """Queue an at-most-once ``frame`` on each of ``conns`` (a snapshot: a push
    that overflows closes its connection): ``(taken, refused)``."""
    taken = 0
    for conn in conns:
        if conn.deliver(frame, None, expires_at):
            taken += 1
    return taken, len(conns) - taken
