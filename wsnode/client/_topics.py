"""A client's topic subscriptions across its connections.

A pod forgets a connection's subscriptions when the connection ends, so the
client keeps the set of wanted topics (:class:`~wsnode.client._core.Subscriptions`)
and subscribes to each of them again after every ``welcome``. Each
``subscribe``/``unsubscribe`` frame carries an id; the pod answers with a frame
of the same type and id once done, or an ``error`` naming the id:

* ``rate_limited`` or ``internal``: written again after ``retryAfterMs`` (1 s
  without one) on the same connection, while the wish still holds;
* any other code (``forbidden`` when the app does not allow it, ``bad_envelope``
  for a bad name, ``quota_exceeded`` for a full cap): a refused subscription is
  no longer wanted.
  The caller of :meth:`TopicLink.subscribe` gets the error; a refusal of a
  re-subscription after a reconnect goes to the client's error listeners.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from wsnode.client._core import Subscriptions, topic_frame
from wsnode.client._errors import AckTimeout, ClientError, RateLimited, ServerError

SUBSCRIBE = "subscribe"
UNSUBSCRIBE = "unsubscribe"
RETRY_CODES = frozenset({"rate_limited", "internal"})
DEFAULT_RETRY = 1.0  # seconds, when an error frame gives no retryAfterMs

Waiters = dict[tuple[str, str], list[asyncio.Future[None]]]


class TopicLink:
    """Subscriptions of one client: the wanted set, frames in flight, waiters.

    ``connected()`` tells whether a frame can be written now, ``write(frame)``
    writes one on the current connection (a frame lost with its connection is
    fine: the next ``welcome`` subscribes again), ``report(error)`` hands an
    error nobody awaits to the app.
    """

    def __init__(self, *, connected: Callable[[], bool], write: Callable[[str], None],
                 report: Callable[[ServerError], None]) -> None:
        self.wanted = Subscriptions()
        self._connected = connected
        self._write = write
        self._report = report
        self._ids = itertools.count(1)
        self._frames: dict[str, tuple[str, str]] = {}  # id -> (op, topic), this connection
        self._confirmed: set[str] = set()  # acked on this connection
        self._waiters: Waiters = {}
        self._retries: list[asyncio.TimerHandle] = []

    async def subscribe(self, topic: str, wait: float) -> None:
        """Want ``topic`` now and on every later connection; return once the pod
        confirmed it (at once when it already had). Raises :class:`ServerError`
        when refused (then it is not wanted any more), :class:`AckTimeout`
        after ``wait`` seconds (it stays wanted: a later connection subscribes)."""
        new = self.wanted.add(topic)
        if not new and topic in self._confirmed:
            return
        future = self._wait(SUBSCRIBE, topic)
        if new:
            self._send(SUBSCRIBE, topic)
        await self._await(future, SUBSCRIBE, topic, wait)

    async def unsubscribe(self, topic: str, wait: float) -> None:
        """Stop wanting ``topic``; return once the current connection left it
        (at once without a connection: a new one does not subscribe to it).
        A :meth:`subscribe` of it still waiting fails with :class:`ClientError`."""
        self.wanted.remove(topic)
        self._confirmed.discard(topic)
        self._settle(SUBSCRIBE, topic, ClientError(f"unsubscribed from {topic!r} meanwhile"))
        if not self._connected():
            return
        future = self._wait(UNSUBSCRIBE, topic)
        self._send(UNSUBSCRIBE, topic)
        await self._await(future, UNSUBSCRIBE, topic, wait)

    def on_welcome(self) -> None:
        """A new connection: subscribe to every wanted topic again."""
        for topic in self.wanted.topics:
            self._send(SUBSCRIBE, topic)

    def on_lost(self) -> None:
        """The connection ended, and its subscriptions with it."""
        self._frames.clear()
        self._confirmed.clear()
        for handle in self._retries:
            handle.cancel()
        self._retries.clear()
        for (op, topic) in [k for k in self._waiters if k[0] == UNSUBSCRIBE]:
            self._settle(op, topic, None)

    def on_answer(self, frame_id: str | None, error: ServerError | None) -> bool:
        """The pod's answer (``error`` None) or ``error`` frame naming ``frame_id``;
        False when it is not about a frame of ours."""
        entry = self._frames.pop(frame_id or "", None)
        if entry is None:
            return False
        op, topic = entry
        wanted = (topic in self.wanted) == (op == SUBSCRIBE)  # the wish still holds
        if error is None:
            if op == SUBSCRIBE and wanted:
                self._confirmed.add(topic)
            self._settle(op, topic, None)
        elif error.code in RETRY_CODES:
            if wanted:
                delay = error.retry_after if isinstance(error, RateLimited) else 0.0
                self._retries.append(asyncio.get_running_loop().call_later(
                    delay or DEFAULT_RETRY, self._retry, op, topic))
        else:
            if op == SUBSCRIBE and wanted:
                self.wanted.remove(topic)
            if not self._settle(op, topic, error):
                self._report(error)
        return True

    def fail(self, error: ClientError) -> None:
        """The client stopped: every waiter fails with ``error``."""
        self.on_lost()
        for (op, topic) in list(self._waiters):
            self._settle(op, topic, error)

    def _retry(self, op: str, topic: str) -> None:
        if (topic in self.wanted) == (op == SUBSCRIBE):
            self._send(op, topic)

    def _send(self, op: str, topic: str) -> None:
        if not self._connected():
            return  # subscribe: the next welcome sends it; unsubscribe: nothing to undo
        frame_id = f"{op[:5]}-{next(self._ids)}"
        self._frames[frame_id] = (op, topic)
        self._write(topic_frame(op, topic, frame_id))

    def _wait(self, op: str, topic: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault((op, topic), []).append(future)
        return future

    async def _await(self, future: asyncio.Future[None], op: str, topic: str,
                     wait: float) -> None:
        try:
            async with asyncio.timeout(wait):
                await future
        except TimeoutError:
            raise AckTimeout(f"{op} {topic}", wait) from None
        finally:
            waiters = self._waiters.get((op, topic))
            if waiters is not None and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._waiters[(op, topic)]

    def _settle(self, op: str, topic: str, error: ClientError | None) -> bool:
        """Answer every waiter of (op, topic); False when there was none."""
        waiters = self._waiters.pop((op, topic), [])
        for future in waiters:
            if not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
        return bool(waiters)
