"""The asyncio client: one supervisor task keeps a connection to some pod.

Life of a client::

    IDLE --connect()--> CONNECTING --welcome+restore--> CONNECTED
    CONNECTED --lost / drain--> RECONNECTING --delay--> CONNECTING --> ...
    any --close() / final error--> CLOSED

The supervisor connects to ``urls[i]``, reads ``welcome``, flushes what waited
for a connection (acks, unacked sends), then reads frames until the connection
ends. A drain (``reconnect`` frame or close 1012) moves to the next URL after
``retryAfterMs``; a close 1008 (policy) stops the client with
:class:`~wsnode.client.Disconnected`; any other loss moves to the next URL after
a backoff delay with full jitter (see :func:`~wsnode.client._core.ending`).
Messages go to one queue that :meth:`Client.recv` and ``async for`` read, so a
reconnect is invisible to the app except as state.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.typing import Subprotocol

from wsnode.client._core import (
    Backoff,
    DedupWindow,
    DrainHint,
    Ending,
    Message,
    State,
    StateChange,
    Verdict,
    ack_frame,
    decode,
    encode,
    ending,
    message_frame,
)
from wsnode.client._errors import (
    AckTimeout,
    ClientClosed,
    ClientError,
    ConnectError,
    Disconnected,
    HandshakeRefused,
    NotConnected,
    ServerError,
)
from wsnode.client._topics import TopicLink

log = logging.getLogger("wsnode.client")

TokenProvider = Callable[[], Awaitable[str] | str]
StateListener = Callable[[StateChange], None]
ErrorListener = Callable[[ServerError], None]
TokenVia = Literal["header", "query", "subprotocol"]

# How long a pod that sent ``reconnect`` gets to close before we close ourselves.
DRAIN_CLOSE_GRACE = 2.0
# Consecutive 401s tolerated when a token provider may hand out a fresh token.
MAX_AUTH_RETRIES = 2


class _End:
    """Queue sentinel: no more messages (closed, or a final error)."""


_END = _End()


@dataclass(slots=True)
class _PendingSend:
    frame: str
    future: asyncio.Future[None]
    generation: int = -1  # the connection it was last written on


@dataclass(slots=True)
class _Ended:
    how: Ending
    connected: bool  # the welcome and the replay's restore frame came


def _final_status(status: int) -> bool:
    """HTTP statuses no retry can fix (a request timeout or 429 can be retried)."""
    return 400 <= status < 500 and status not in (408, 429)


class Client:
    """A wsnode client that stays connected, acks, dedups and resumes.

    ``urls`` is one URL (a load balancer) or a list of pod URLs tried in turn.
    Give ``token`` or ``token_provider`` (called before every connection
    attempt, sync or async, so it can refresh an expiring token).

    With ``auto_ack`` (the default) an ACK-required message is acked once the
    app is done with it: when it asks for the next message, or leaves
    ``async with`` without an exception. With ``auto_ack=False`` call
    :meth:`ack`. Either way, a resend of a message already given to the app is
    never given again (acked again if the app had finished with it).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        token_via: TokenVia = "header",  # noqa: S107 (how, not a secret)
        auto_ack: bool = True,
        dedup_window: int = 1024,
        max_buffered: int = 10_000,
        backoff: Backoff | None = None,
        open_timeout: float = 10.0,
        ack_timeout: float = 5.0,
        ping_interval: float | None = 20.0,
    ) -> None:
        self._urls = [urls] if isinstance(urls, str) else list(urls)
        if not self._urls:
            raise ValueError("give at least one URL")
        if (token is None) == (token_provider is None):
            raise ValueError("give exactly one of token= and token_provider=")
        if token_via not in ("header", "query", "subprotocol"):
            raise ValueError("token_via must be 'header', 'query' or 'subprotocol'")
        self._token = token
        self._token_provider = token_provider
        self._token_via = token_via
        self._auto_ack = auto_ack
        self._window = DedupWindow(dedup_window)
        self._max_buffered = max_buffered
        self._backoff = backoff or Backoff()
        self._open_timeout = open_timeout
        self._ack_timeout = ack_timeout
        self._ping_interval = ping_interval

        self._state = State.IDLE
        self.url: str | None = None
        """The URL of the current (or last) connection."""
        self.pod: str | None = None
        """``podId`` of the current (or last) connection's welcome."""
        self.conn_id: str | None = None
        self.user: str | None = None
        self.replayed = 0
        """Messages the pod replayed on the last connect."""
        self.connections = 0
        """Connections made so far (1 + reconnects)."""
        self.duplicates = 0
        """Resent copies that were not given to the app again."""
        self.dropped = 0
        """Messages dropped because ``max_buffered`` were waiting for the app."""

        self._queue: asyncio.Queue[Message | _End] = asyncio.Queue()
        self._current: Message | None = None
        self._ws: ClientConnection | None = None  # set once welcomed: frames may be written
        self._socket: ClientConnection | None = None  # the connection of the session, if any
        self._ready = asyncio.Event()
        self._generation = 0
        self._pending: dict[str, _PendingSend] = {}
        self._unsent_acks: set[str] = set()
        self._restores: list[asyncio.Future[int]] = []
        self._pings: dict[str, asyncio.Future[None]] = {}
        self._ping_ids = itertools.count(1)
        self._drain_hint: DrainHint | None = None
        self._state_listeners: list[StateListener] = []
        self._error_listeners: list[ErrorListener] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._fatal: ClientError | None = None
        self._closing = False
        self._topic_link = TopicLink(
            connected=lambda: self._ws is not None and self._ready.is_set(),
            write=self._write, report=self._report)

    # -- observation ---------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    def on_state(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(change)`` on every state change; returns an unsubscriber."""
        self._state_listeners.append(listener)
        return lambda: self._remove(self._state_listeners, listener)

    def on_error(self, listener: ErrorListener) -> Callable[[], None]:
        """Call ``listener(error)`` for ``error`` frames that no :meth:`send` awaits."""
        self._error_listeners.append(listener)
        return lambda: self._remove(self._error_listeners, listener)

    @staticmethod
    def _remove(listeners: list[Any], listener: Any) -> None:
        with contextlib.suppress(ValueError):
            listeners.remove(listener)

    def _set_state(self, state: State, **details: Any) -> None:
        self._state = state
        change = StateChange(state, url=self.url, **details)
        if state in (State.CONNECTED, State.RECONNECTING, State.CLOSED):
            log.info("client %s %s%s", state.value, self.url,
                     f" ({change.reason})" if change.reason else "")
        for listener in list(self._state_listeners):
            try:
                listener(change)
            except Exception:
                log.exception("state listener failed")

    # -- lifecycle -----------------------------------------------------------

    async def connect(self) -> None:
        """Connect (trying each URL once) and return when the first replay is in.

        Raises :class:`HandshakeRefused` (401, 403) or :class:`ConnectError`
        when no URL could be reached. Afterwards the client reconnects by itself
        until :meth:`close`.
        """
        if self._closing:
            raise ClientClosed("client closed")
        if self._supervisor is None:
            loop = asyncio.get_running_loop()
            self._first = loop.create_future()
            self._supervisor = loop.create_task(self._run(), name="wsnode-client")
        assert self._first is not None
        try:
            await asyncio.shield(self._first)
        except BaseException:
            await self._shutdown(ack_current=False)
            raise

    async def close(self) -> None:
        """Ack the message in hand (``auto_ack``), close the connection, stop.

        Idempotent. Messages still buffered are dropped, not acked: the server
        resends the ACK-required ones on the next connection of this user.
        """
        await self._shutdown(ack_current=True)

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._shutdown(ack_current=exc_type is None)

    async def _shutdown(self, *, ack_current: bool, error: ClientError | None = None) -> None:
        if self._closing:
            return
        self._closing = True
        if ack_current:
            self._settle_current()
        if self._tasks:  # let acks being written go out
            await asyncio.wait(list(self._tasks), timeout=1.0)
        ws = self._socket
        supervisor = self._supervisor
        if supervisor is not None and supervisor is not asyncio.current_task():
            if ws is not None:  # a clean close ends the session, then the supervisor
                await ws.close()
                await asyncio.wait([supervisor], timeout=2.0)
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        elif ws is not None:
            await ws.close()
        for task in list(self._tasks):
            task.cancel()
        final = error or ClientClosed("client closed")
        self._fail_waiters(final)
        if self._first is not None and not self._first.done():
            self._first.set_exception(final)
            self._first.exception()  # retrieved: connect() may not be awaiting it
        while not self._queue.empty():  # unacked ones are resent to the next connection
            self._queue.get_nowait()
        self._queue.put_nowait(_END)
        self._set_state(State.CLOSED, reason=str(error) if error else "closed by the app")

    def _fail_waiters(self, error: ClientError) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        waiters: list[asyncio.Future[Any]] = [*self._restores, *self._pings.values()]
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)
        self._restores.clear()
        self._pings.clear()
        self._topic_link.fail(error)

    # -- receiving -----------------------------------------------------------

    async def recv(self) -> Message:
        """The next message (acking the previous one first with ``auto_ack``).

        Raises :class:`ClientClosed` once the client is closed, or the final
        error that stopped it. Bound the wait with ``asyncio.timeout``.
        """
        self._settle_current()
        if self._supervisor is None and not self._closing:
            raise ClientError("not connected: use 'async with Client(...)' or connect()")
        item = await self._queue.get()
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # every later reader ends too
            raise self._fatal or ClientClosed("client closed")
        if item.requires_ack and self._auto_ack:
            self._current = item
        return item

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.recv()
        except ClientClosed:
            raise StopAsyncIteration from None

    def ack(self, message: Message | str) -> None:
        """Ack a message (or an id) now; never blocks (queued while disconnected)."""
        msg_id = message if isinstance(message, str) else message.id
        if msg_id is None:
            return
        if self._current is not None and self._current.id == msg_id:
            self._current = None
        self._window.handled(msg_id)
        self._send_ack(msg_id)

    def _settle_current(self) -> None:
        if self._current is not None:
            self.ack(self._current)

    # -- sending -------------------------------------------------------------

    async def send(self, type: str, payload: Any = None, *, require_ack: bool = True,
                   id: str | None = None, timeout: float | None = None,  # noqa: ASYNC109
                   expires_at: int | None = None) -> str:
        """Send a message to the server; returns its id.

        With ``require_ack`` (the default) it waits for the server's ``ack``
        (sent once the handler returned), writing the frame again with the same
        id on every new connection until then: at least once. Raises
        :class:`ServerError` for an ``error`` frame about it (``unknown_type``,
        ``handler_error``, :class:`RateLimited`...), :class:`AckTimeout` after
        ``timeout`` (default ``ack_timeout``). Without ``require_ack`` it waits
        for a connection and writes once (at most once), raising
        :class:`NotConnected` after ``timeout``.
        """
        if self._closing:
            raise self._fatal or ClientClosed("client closed")
        if self._supervisor is None:
            raise ClientError("not connected: use 'async with Client(...)' or connect()")
        wait = self._ack_timeout if timeout is None else timeout
        if not require_ack:
            return await self._send_once(message_frame(type, payload, id, False, expires_at),
                                         id, wait)
        msg_id = id or uuid.uuid4().hex
        if msg_id in self._pending:
            raise ClientError(f"a send with id {msg_id!r} is already waiting for its ack")
        pending = _PendingSend(message_frame(type, payload, msg_id, True, expires_at),
                               asyncio.get_running_loop().create_future())
        self._pending[msg_id] = pending
        try:
            self._transmit(pending)
            async with asyncio.timeout(wait):
                await pending.future
        except TimeoutError:
            raise AckTimeout(msg_id, wait) from None
        finally:
            self._pending.pop(msg_id, None)
        return msg_id

    async def _send_once(self, frame: str, msg_id: str | None, wait: float) -> str:
        try:
            async with asyncio.timeout(wait):
                while True:
                    await self._ready.wait()
                    ws = self._ws
                    if ws is None:
                        await asyncio.sleep(0)
                        continue
                    try:
                        await ws.send(frame)
                    except ConnectionClosed:
                        continue  # not written: wait for the next connection
                    return msg_id or ""
        except TimeoutError:
            raise NotConnected(f"no connection within {wait:g}s: message not sent") from None

    async def restore(self, since: int | None = None,
                      timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Ask the pod to replay this user's pending messages again (those
        created since ``since``, epoch ms); returns how many it replayed.
        Copies already given to the app are not given again."""
        payload = {"since": since} if since is not None else None
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        wait = self._ack_timeout if timeout is None else timeout
        async with asyncio.timeout(wait):
            await self._ready.wait()
            self._restores.append(future)
            self._write(encode({"type": "restore", "payload": payload}))
            return await future

    async def ping(self, timeout: float | None = None) -> float:  # noqa: ASYNC109
        """An application-level ping; returns the round trip in seconds."""
        token = f"p{next(self._ping_ids)}"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        wait = self._ack_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(wait):
                await self._ready.wait()
                self._pings[token] = future
                started = loop.time()
                self._write(encode({"type": "ping", "payload": {"ping": token}}))
                await future
                return loop.time() - started
        finally:
            self._pings.pop(token, None)

    # -- topics --------------------------------------------------------------

    @property
    def topics(self) -> tuple[str, ...]:
        """The topics this client subscribes to on every connection, oldest first."""
        return self._topic_link.wanted.topics

    async def subscribe(self, topic: str,
                        timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Subscribe to ``topic`` now and again on every new connection (a pod
        forgets a connection's subscriptions when it ends); return once the pod
        confirmed it (at once if it already had).

        Raises :class:`ServerError` when the pod refuses (``forbidden``: the app
        does not allow it; ``bad_envelope``: a bad name; ``quota_exceeded``: the
        connection has as many topics as a pod allows),
        and the topic is then not wanted any more; :class:`AckTimeout` after
        ``timeout`` (the topic stays wanted). A later refusal, when subscribing
        again after a reconnect, goes to :meth:`on_error` listeners and drops it.
        """
        self._check_open()
        await self._topic_link.subscribe(topic, self._ack_timeout if timeout is None else timeout)

    async def unsubscribe(self, topic: str,
                          timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Stop subscribing to ``topic``; return once the current connection left
        it (at once while disconnected). Raises :class:`ServerError`,
        :class:`AckTimeout` as :meth:`subscribe` does."""
        self._check_open()
        await self._topic_link.unsubscribe(topic,
                                           self._ack_timeout if timeout is None else timeout)

    def _check_open(self) -> None:
        if self._closing:
            raise self._fatal or ClientClosed("client closed")
        if self._supervisor is None:
            raise ClientError("not connected: use 'async with Client(...)' or connect()")

    def _transmit(self, pending: _PendingSend) -> None:
        """Write an unacked send on the current connection, once per connection."""
        if self._ws is not None and self._ready.is_set() \
                and pending.generation != self._generation:
            pending.generation = self._generation
            self._write(pending.frame)

    def _send_ack(self, msg_id: str) -> None:
        ws = self._ws
        if ws is None or not self._ready.is_set():
            self._unsent_acks.add(msg_id)
            return

        def lost() -> None:
            if self._ws is not None and self._ws is not ws:
                self._send_ack(msg_id)  # a newer connection is up already
            else:
                self._unsent_acks.add(msg_id)

        self._write(ack_frame(msg_id), lost)

    def _write(self, frame: str, on_lost: Callable[[], None] | None = None) -> None:
        ws = self._ws
        if ws is None:
            if on_lost is not None:
                on_lost()
            return

        async def write() -> None:
            try:
                await ws.send(frame)
            except ConnectionClosed:
                if on_lost is not None:
                    on_lost()

        self._spawn(write())

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the supervisor ------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._supervise()
        except Exception as exc:  # a bug: do not leave readers waiting forever
            log.exception("client supervisor failed")
            await self._stop(ClientError(f"client stopped by an internal error: {exc!r}"))

    async def _supervise(self) -> None:
        urls = self._urls
        index = attempt = auth_failures = first_failures = 0
        delay: float | None = None
        why: dict[str, Any] = {}
        while not self._closing:
            if delay is not None:
                self._set_state(State.RECONNECTING, delay=delay, attempt=attempt, **why)
                if delay > 0:
                    await asyncio.sleep(delay)
                if self._closing:
                    return
            self.url = urls[index % len(urls)]
            self._set_state(State.CONNECTING, attempt=attempt)
            try:
                ws = await self._open(self.url)
            except HandshakeRefused as exc:
                retry_auth = exc.status == 401 and self._token_provider is not None \
                    and auth_failures < MAX_AUTH_RETRIES
                if _final_status(exc.status) and not retry_auth:
                    await self._stop(exc)
                    return
                auth_failures += exc.status == 401
                failure: Exception = exc
                why = {"reason": f"refused {exc.status}", "code": exc.status}
            except ConnectError as exc:
                failure = exc
                why = {"reason": str(exc)}
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                failure = exc
                why = {"reason": f"cannot connect: {type(exc).__name__}: {exc}"}
            else:
                if self._closing:  # closed while the handshake was going on
                    await ws.close()
                    return
                ended = await self._session(ws)
                how = ended.how
                if ended.connected:
                    attempt = auth_failures = 0
                why = {"reason": how.reason, "code": how.code}
                index += 1  # this pod is gone or going: try the next one
                if self._closing:
                    return
                if how.final:
                    await self._stop(Disconnected(how.code, how.reason, self.url))
                    return
                if how.drain_delay is not None:
                    attempt, delay = 0, how.drain_delay
                    continue
                if ended.connected:
                    delay = self._backoff.delay(attempt)
                    attempt += 1
                    continue
                failure = ConnectError(f"{self.url}: {how.reason}")
            # a failed attempt
            if self._first is not None and not self._first.done():
                first_failures += 1
                if first_failures >= len(urls):
                    error = ConnectError(f"cannot connect to {', '.join(urls)}: {failure}")
                    error.__cause__ = failure
                    await self._stop(error)
                    return
            index += 1
            delay = self._backoff.delay(attempt)
            attempt += 1

    async def _stop(self, error: ClientError) -> None:
        """A final error: remember it, end every reader and waiter."""
        self._fatal = error
        if self._first is not None and not self._first.done():
            self._first.set_exception(error)
        await self._shutdown(ack_current=False, error=error)

    async def _token_now(self) -> str:
        if self._token_provider is None:
            assert self._token is not None
            return self._token
        try:
            token = self._token_provider()
            if inspect.isawaitable(token):
                token = await token
        except Exception as exc:  # a refresh that failed is retried like a lost connection
            raise ConnectError(f"the token provider failed: {exc!r}") from exc
        return token

    async def _open(self, url: str) -> ClientConnection:
        token = await self._token_now()
        headers: dict[str, str] = {}
        subprotocols: list[Subprotocol] | None = None
        target = url
        if self._token_via == "header":
            headers["Authorization"] = f"Bearer {token}"
        elif self._token_via == "subprotocol":
            subprotocols = [Subprotocol("bearer"), Subprotocol(token)]
        else:
            parts = urlsplit(url)
            query = "&".join(q for q in (parts.query, urlencode({"token": token})) if q)
            target = urlunsplit(parts._replace(query=query))
        try:
            return await connect(target, additional_headers=headers, subprotocols=subprotocols,
                                 open_timeout=self._open_timeout,
                                 ping_interval=self._ping_interval, max_size=1 << 24)
        except InvalidStatus as exc:
            body = exc.response.body.decode(errors="replace") if exc.response.body else ""
            raise HandshakeRefused(exc.response.status_code, url, body[:200]) from exc
        except InvalidURI as exc:
            raise ConnectError(f"invalid URL {url!r}") from exc

    async def _session(self, ws: ClientConnection) -> _Ended:
        self._generation += 1
        self._socket = ws
        self._drain_hint = None
        connected = False
        grace: asyncio.TimerHandle | None = None
        try:
            async with asyncio.timeout(self._open_timeout):
                welcome = decode(await ws.recv())
            if welcome is None or welcome["type"] != "welcome":
                await ws.close(1002, "expected a welcome frame")
                return _Ended(Ending("no welcome frame", None), False)
            info = welcome.get("payload") if isinstance(welcome.get("payload"), dict) else {}
            assert isinstance(info, dict)
            self.pod, self.conn_id, self.user = (
                _str(info.get("podId")), _str(info.get("connId")), _str(info.get("userId")))
            self.connections += 1
            self._ws = ws
            self._ready.set()
            self._flush()
            initial_restore = True
            async for raw in ws:
                frame = decode(raw)
                if frame is None:
                    log.warning("ignored a frame that is not a JSON object with a type")
                    continue
                typ = frame["type"]
                if typ == "restore" and initial_restore:
                    connected, initial_restore = True, False
                    self.replayed = _int(_field(frame, "replayed"))
                    self._set_state(State.CONNECTED, pod=self.pod, conn_id=self.conn_id,
                                    replayed=self.replayed)
                    if self._first is not None and not self._first.done():
                        self._first.set_result(None)
                elif typ == "reconnect":
                    if grace is None:  # the first one counts; a repeat is not a message
                        self._drain_hint = DrainHint.from_payload(frame.get("payload"))
                        grace = asyncio.get_running_loop().call_later(
                            DRAIN_CLOSE_GRACE, lambda: self._spawn(ws.close(1000, "draining")))
                else:
                    self._on_frame(frame)
        except ConnectionClosed:
            pass
        except TimeoutError:
            await ws.close(1002, "no welcome frame in time")
            return _Ended(Ending("no welcome frame in time", None), False)
        finally:
            if grace is not None:
                grace.cancel()
            self._socket = None
            if self._ws is ws:
                self._ws = None
                self._ready.clear()
                self._topic_link.on_lost()
        return _Ended(ending(ws.close_code, ws.close_reason or "", self._drain_hint), connected)

    def _flush(self) -> None:
        """Write what waited for a connection: acks, then unacked sends."""
        unsent, self._unsent_acks = self._unsent_acks, set()
        for msg_id in unsent:
            self._send_ack(msg_id)
        for pending in list(self._pending.values()):
            self._transmit(pending)
        self._topic_link.on_welcome()

    def _on_frame(self, frame: dict[str, Any]) -> None:
        typ = frame["type"]
        if typ == "ack":
            pending = self._pending.get(_str(_field(frame, "id")) or _str(frame.get("id")) or "")
            if pending is not None and not pending.future.done():
                pending.future.set_result(None)
        elif typ == "error":
            error = ServerError.from_frame(frame)
            if self._topic_link.on_answer(error.id, error):
                return
            pending = self._pending.get(error.id or "")
            if pending is not None and not pending.future.done():
                pending.future.set_exception(error)
            else:
                self._report(error)
        elif typ == "pong":
            waiter = self._pings.get(_str(_field(frame, "ping")) or "")
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif typ == "restore":
            replayed = _int(_field(frame, "replayed"))
            if self._restores:
                restored = self._restores.pop(0)
                if not restored.done():
                    restored.set_result(replayed)
        elif typ in ("subscribe", "unsubscribe"):  # the pod did it
            self._topic_link.on_answer(_str(frame.get("id")), None)
        elif typ == "welcome":
            log.warning("ignored a second welcome frame")
        else:
            self._on_message(Message.from_frame(frame))

    def _on_message(self, msg: Message) -> None:
        if msg.id is not None and msg.id in self._window:
            # A copy of a message already received: a resend or replay of an
            # ACK-required one, or an at-most-once one that reached this device on
            # two connections (it moved between pods while it was in flight).
            self.duplicates += 1
            if msg.requires_ack and self._window.check(msg.id) is Verdict.REACK:
                self._send_ack(msg.id)
            return
        if self._queue.qsize() >= self._max_buffered:
            self._overflow(msg)
            return
        if msg.id is not None:
            self._window.check(msg.id)
            if not msg.requires_ack:
                self._window.handled(msg.id)  # nothing to ack: done once received
        self._queue.put_nowait(msg)

    def _overflow(self, msg: Message) -> None:
        if self.dropped == 0:
            log.warning("more than %d messages wait for the app: dropping (ACK-required "
                        "ones are resent by the server)", self._max_buffered)
        self.dropped += 1

    def _report(self, error: ServerError) -> None:
        if not self._error_listeners:
            log.warning("server error: %s", error)
        for listener in list(self._error_listeners):
            try:
                listener(error)
            except Exception:
                log.exception("error listener failed")


def _field(frame: dict[str, Any], name: str) -> Any:
    payload = frame.get("payload")
    return payload.get(name) if isinstance(payload, dict) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
