"""Sessions of :class:`~wsnode.bus_rabbitmq.RabbitBus` and the supervisor that
replaces a lost one.

A :class:`Session` is one AMQP connection and everything on it: the publishing
channel and exchange, the consumers, and the tasks that work for them. It is
never repaired: any loss (the connection or a channel closes, the broker
cancels a consumer, a session task fails, the deaf-pod check gives up) marks it
``lost``, and the :class:`Supervisor` throws it away whole and opens a new one.

:class:`Endpoint` opens sessions on the first of its broker URLs that answers
(the nodes of a RabbitMQ cluster, tried in turn, the lost one last) and
translates every failure to open one into
:class:`~wsnode.errors.BackendUnavailable` with a message that never holds a
password of the URLs.

Contract of :class:`Supervisor`: once begun, it reconnects forever (until
``end``) with exponential backoff and full jitter between attempts (an attempt
tries every URL once, so a pod fails over to another node at once). It never
dies quietly: an exception of any type while closing a lost session, opening,
declaring or consuming is logged once per outage with its traceback (later
ones at DEBUG, with a reminder every minute), and the loop goes on. ``problem`` says what
it is doing meanwhile, for ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aio_pika.exceptions import ChannelPreconditionFailed, ProbableAuthenticationError

from wsnode.errors import BackendUnavailable
from wsnode.outage import Outage
from wsnode.urls import redact, split_amqp_urls

log = logging.getLogger("wsnode.bus")

CLOSE_TIMEOUT = 2.0
"""Seconds to wait for a connection to close or a consumer to be cancelled."""


class Session:
    """One AMQP connection and everything on it; discarded whole on any loss."""

    pub: AbstractChannel
    raw_pub: Any
    """``pub``'s aiormq channel, which publishes (see bus_rabbitmq_topology.publish)."""
    exchange: AbstractExchange

    def __init__(self, connection: AbstractConnection, where: str = "") -> None:
        self.connection = connection
        self.where = where
        """The URL of the broker node, password hidden."""
        self.lost = asyncio.Event()
        self.reason = ""
        self.consumers: list[Callable[[], Awaitable[object]]] = []
        """How to cancel each consumer of the session (bounded in time)."""
        self.tasks: list[asyncio.Task[None]] = []
        connection.close_callbacks.add(self.on_closed)

    def fail(self, reason: str) -> None:
        """Mark the session lost (the first reason wins)."""
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()

    def on_closed(self, _sender: Any, exc: BaseException | None = None) -> None:
        self.fail(f"closed ({exc!r})" if exc is not None else "closed")

    def on_consumer_cancelled(self, frame: Any) -> None:
        self.fail(f"consumer {getattr(frame, 'consumer_tag', '?')} cancelled by the broker")

    def spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        """Run ``coro`` for this session; if it fails, the session is lost
        (a dead worker or canary must not leave a session that looks alive)."""
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(lambda t: self._task_done(t, what))
        self.tasks.append(task)

    def _task_done(self, task: asyncio.Task[None], what: str) -> None:
        if task.cancelled() or (exc := task.exception()) is None:
            return
        log.warning("bus %s task failed; starting a new session", what, exc_info=exc)
        self.fail(f"{what} failed: {exc!r}")

    async def close(self, *, graceful: bool,
                    settle: Callable[[], Awaitable[None]] | None = None) -> None:
        """Close everything, bounded in time; never raises. ``graceful`` cancels
        the consumers first and awaits ``settle`` (in-flight publishes) before
        the connection goes. Safe to call again on a closed session."""
        if graceful:
            # Cancel consumers first: nothing new arrives while we settle publishes.
            for cancel in self.consumers:
                with contextlib.suppress(Exception):
                    await cancel()
        for task in self.tasks:
            task.cancel()
        if graceful and settle is not None:
            await settle()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.connection.close()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=CLOSE_TIMEOUT)


TRANSIENT_REFUSED = "transient_nonexcl_queues"
"""In the broker's refusal of a transient non-exclusive queue (RabbitMQ 4.3+)."""


def refused_everywhere(exc: BaseException | None) -> bool:
    """Whether every node of the cluster would refuse the same (a declaration:
    the nodes share their queues and settings), so trying the others is moot."""
    return isinstance(exc, ChannelPreconditionFailed) or TRANSIENT_REFUSED in str(exc)


class Endpoint:
    """Where the brokers are: opens sessions, says what went wrong without the password.

    ``urls`` are the nodes of one RabbitMQ cluster (``WSNODE_AMQP_URL``, a
    comma-separated list). :meth:`open` tries them in turn: the first time from
    the first URL, later from the URL after that of the last session opened
    (so the node just lost is tried last); the first that answers and accepts
    the declarations wins. A refused declaration is not tried elsewhere: every
    node of a cluster holds the same queues and gives the same answer.
    """

    def __init__(self, urls: str | Sequence[str], connect_timeout: float) -> None:
        self.urls = split_amqp_urls(urls) if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("no RabbitMQ URL given")
        self.safe_urls = [redact(url) for url in self.urls]
        self.safe_url = ",".join(self.safe_urls)
        self.connect_timeout = connect_timeout
        self._next = 0
        secrets: set[str] = set()
        for url in self.urls:
            with contextlib.suppress(ValueError):
                password = urlsplit(url).password
                if password:
                    secrets |= {password, unquote(password)}
        # Longest first: a password that contains another is replaced whole.
        self._secrets = tuple(sorted(secrets, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        """``text`` without the URLs' passwords (no library message we know
        has one; be sure anyway: these texts reach logs and ``/readyz``)."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def unavailable(self, exc: Exception, index: int = 0) -> BackendUnavailable:
        """What a failure to open a session on URL ``index`` means, as BackendUnavailable."""
        detail = self.scrub(str(exc))
        safe_url = self.safe_urls[index]
        if isinstance(exc, ChannelPreconditionFailed):
            text = (f"RabbitMQ refused a declaration ({detail}); a queue or exchange exists "
                    "with other arguments: delete it or let it expire")
        elif TRANSIENT_REFUSED in detail:
            # RabbitMQ 4.3+ by default: pod queues are transient so that they can
            # move to another node when theirs is lost (see wsnode.bus_rabbitmq).
            text = ("RabbitMQ refuses transient non-exclusive queues (a deprecated feature, "
                    "refused by default since 4.3): set deprecated_features.permit."
                    "transient_nonexcl_queues = true in rabbitmq.conf on every node (README, "
                    "RabbitMQ cluster)")
        elif isinstance(exc, ProbableAuthenticationError):
            text = f"RabbitMQ at {safe_url} refused the login"
        elif isinstance(exc, TimeoutError):
            text = f"RabbitMQ at {safe_url} did not answer in {self.connect_timeout}s"
        else:
            text = f"RabbitMQ at {safe_url} unreachable: {detail}"
        return BackendUnavailable(text)

    async def open(self, name: str, setup: Callable[[Session], Awaitable[None]]) -> Session:
        """Connect as ``name`` to the first URL that answers (see the class) and
        run ``setup`` (declare, consume) there within ``connect_timeout``; on
        any failure close what was opened and try the next URL. When none
        works, BackendUnavailable naming each failure."""
        failures: list[BackendUnavailable] = []
        start = self._next
        for k in range(len(self.urls)):
            index = (start + k) % len(self.urls)
            try:
                session = await self._open_one(index, name, setup)
            except BackendUnavailable as exc:
                failures.append(exc)
                if refused_everywhere(exc.__cause__):
                    break
                continue
            # The next session (after this one is lost) tries the next node first.
            self._next = (index + 1) % len(self.urls)
            return session
        if len(failures) == 1:
            raise failures[0]
        raise BackendUnavailable(
            f"no RabbitMQ node answered ({len(failures)} tried): "
            + "; ".join(str(f) for f in failures)) from failures[-1]

    async def _open_one(self, index: int, name: str,
                        setup: Callable[[Session], Awaitable[None]]) -> Session:
        connection: AbstractConnection | None = None
        session: Session | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                connection = await aio_pika.connect(
                    self.urls[index], client_properties={"connection_name": name})
                session = Session(connection, self.safe_urls[index])
                await setup(session)
                return session
        except BaseException as exc:
            for task in session.tasks if session is not None else ():
                task.cancel()
            if connection is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(CLOSE_TIMEOUT):
                        await connection.close()
            if isinstance(exc, Exception):
                raise self.unavailable(exc, index) from exc
            raise


class Supervisor:
    """Holds the current session and replaces it when it is lost (see the module)."""

    def __init__(
        self,
        open_session: Callable[[], Awaitable[Session]],
        on_session: Callable[[Session], None],
        *,
        backoff: tuple[float, float],
        scrub: Callable[[str], str],
        pod: str | None = None,
    ) -> None:
        self._open = open_session
        self._on_session = on_session
        self._backoff = backoff
        self._scrub = scrub
        self.pod = pod
        self.current: Session | None = None
        self._task: asyncio.Task[None] | None = None
        self._outage = Outage(log, "bus reconnect")
        self._lost_reason: str | None = None
        self._attempt = 0  # attempts begun in this outage
        self._failed_attempt = 0  # the last of them that failed
        self._last_error: str | None = None
        self.reconnects = 0
        """Sessions opened to replace a lost one."""

    @property
    def running(self) -> bool:
        return self._task is not None

    @property
    def problem(self) -> str | None:
        """Why the current session is not usable, or None (see the module)."""
        session = self.current
        if session is None or not session.lost.is_set():
            return None
        reason = self._scrub(self._lost_reason or session.reason)
        text = f"session lost ({reason}); reconnecting"
        if self._last_error is not None and self._failed_attempt:
            text += f", attempt {self._failed_attempt} failed: {self._last_error}"
        elif self._last_error is not None:  # closing the lost session failed
            text += f": {self._last_error}"
        elif self._attempt:
            text += f", attempt {self._attempt}"
        return text

    def begin(self, session: Session) -> None:
        """Make ``session`` current and watch it."""
        self._install(session)
        self._task = asyncio.get_running_loop().create_task(self._run(session))

    async def end(self) -> Session | None:
        """Stop watching; returns the current session, which stays current
        (in-flight publishes use it) until the caller closes it and calls
        :meth:`clear`."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=CLOSE_TIMEOUT * 2)
        return self.current

    def clear(self) -> None:
        self.current = None

    def _install(self, session: Session) -> None:
        self.current = session
        self._lost_reason, self._last_error = None, None
        self._attempt = self._failed_attempt = 0
        self._on_session(session)

    async def _run(self, session: Session) -> None:
        while True:
            await session.lost.wait()
            # The lost session stays current until replaced (it is not ready), so
            # that an end() arriving meanwhile still closes it.
            self._lost_reason = session.reason
            log.warning("bus session lost: %s; reconnecting", self._scrub(session.reason),
                        extra={"pod": self.pod})
            try:
                await session.close(graceful=False)
            except Exception as exc:  # close() should not raise; never let it end the loop
                self._failed(f"closing the lost session failed: {exc!r}", exc)
            session = await self._replace()

    async def _replace(self) -> Session:
        """Open a new session, retrying forever with backoff and full jitter."""
        first, cap = self._backoff
        backoff, began = first, time.monotonic()
        while True:
            # Full jitter: pods that lost the same broker do not return in step.
            await asyncio.sleep(random.uniform(0, backoff))
            self._attempt += 1
            try:
                session = await self._open()
            except Exception as exc:  # not only BackendUnavailable: a bug must not stop us
                self._failed(str(exc) or repr(exc), exc)
                backoff = min(cap, backoff * 2)
                continue
            attempts = self._attempt
            self.reconnects += 1
            self._install(session)
            self._outage.recovered(pod=self.pod)
            log.info("bus reconnected to %s after %d attempt(s), %.1fs", session.where,
                     attempts, time.monotonic() - began, extra={"pod": self.pod})
            return session

    def _failed(self, text: str, exc: BaseException) -> None:
        self._failed_attempt = self._attempt
        self._last_error = self._scrub(text)
        self._outage.failed(self._last_error, exc_info=exc, pod=self.pod)
