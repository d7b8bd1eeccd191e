"""WebSocket users for Locust (gevent): one wsnode connection per user.

Locust runs on gevent, so this uses ``websocket-client`` (blocking calls that
gevent's monkey-patching makes cooperative), one receiving greenlet per user,
and reports to Locust as requests:

* ``WS connect``: handshake + ``welcome`` + the replay's ``restore`` frame (a
  user whose connect fails tries again with backoff);
* ``WS <type> delivery``: a message the swarm sent, by its end-to-end latency
  (the send timestamp ``ts`` travels in the payload), or a failure ``not
  delivered within 10s`` when it did not arrive within
  ``WSNODE_LOAD_LOSS_TIMEOUT`` seconds;
* ``WS error <code>``: an ``error`` frame from the pod (a failure; the message
  it names is then not expected any more, it is not lost on top).

Failure texts never carry a message or user id, so Locust counts each reason
once with its number of occurrences instead of printing one line per message.
Every user and message id starts with ``lt-<run>-`` (:data:`RUN`, one per
process), which is how ``_cleanup.py`` finds what this run left in Redis.

Settings come from the environment: ``WSNODE_JWT_SECRET`` (tokens are minted
with it, HS256, ``WSNODE_JWT_AUDIENCE``/``WSNODE_JWT_ISSUER`` when set);
Locust's ``--host`` may list several pods, comma-separated, and users are
spread over them (``ws://127.0.0.1:8765,ws://127.0.0.1:8766``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import time
import uuid
from typing import Any

import gevent
import gevent.event
import jwt
import websocket
from locust import User, events

LOSS_TIMEOUT = float(os.environ.get("WSNODE_LOAD_LOSS_TIMEOUT", "10"))
# How long a user's close handshake may take when it stops. Locust waits for every
# user's on_stop without a limit (a forced stop kills the greenlet and joins it),
# so an unbounded close would hold the whole swarm's shutdown.
CLOSE_SECONDS = 2.0
RUN = uuid.uuid4().hex[:6]  # this process's share of the swarm: ids start with lt-<RUN>-
_host_cycle: dict[str, itertools.cycle[str]] = {}
_lock = threading.Lock()


def hosts_of(host: str | None) -> list[str]:
    if not host:
        raise ValueError("no host: pass --host ws://127.0.0.1:8765 (several: comma-separated)")
    return [h.strip().rstrip("/") for h in host.split(",") if h.strip()]


def next_host(host: str | None) -> str:
    """Round-robin over the pods in ``--host``, process-wide."""
    with _lock:
        cycle = _host_cycle.setdefault(host or "", itertools.cycle(hosts_of(host)))
        return next(cycle)


def new_id() -> str:
    """A user or message id of this run (``lt-<RUN>-<random>``)."""
    return f"lt-{RUN}-{uuid.uuid4().hex[:16]}"


def connect_failure(exc: Exception) -> Exception:
    """``exc`` with a text that is the same for every user it happens to: a
    refused handshake's text carries the response's headers (a date, ...)."""
    if isinstance(exc, websocket.WebSocketBadStatusException):
        body = (getattr(exc, "resp_body", None) or b"").decode(errors="replace").strip()
        return ConnectionError(f"handshake refused: HTTP {exc.status_code} {body[:120]}".strip())
    return exc


def mint(user: str, ttl: float = 3600) -> str:
    secret = os.environ.get("WSNODE_JWT_SECRET")
    if not secret:
        raise RuntimeError("WSNODE_JWT_SECRET is not set: the swarm mints its users' tokens "
                           "with the pods' secret")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user, "iat": now, "exp": now + int(ttl)}
    for env, claim in (("WSNODE_JWT_AUDIENCE", "aud"), ("WSNODE_JWT_ISSUER", "iss")):
        if os.environ.get(env):
            claims[claim] = os.environ[env]
    return jwt.encode(claims, secret, algorithm="HS256")


class Ledger:
    """Messages the swarm sent and still expects, per process (every sender and
    receiver of a message run in the same process). A message is lost when it
    has not arrived within LOSS_TIMEOUT while its receiver stayed connected."""

    def __init__(self) -> None:
        # mid -> (sent, user, name, acked): acked messages survive reconnects.
        self.expected: dict[str, tuple[float, str, str, bool]] = {}
        self._checker: Any = None

    def expect(self, mid: str, user: str, name: str, acked: bool = False) -> None:
        self.expected[mid] = (time.time(), user, name, acked)
        if self._checker is None:
            self._checker = gevent.spawn(self._check)

    def arrived(self, mid: str) -> bool:
        """True the first time ``mid`` arrives (a resend is not a new delivery)."""
        return self.expected.pop(mid, None) is not None

    def refused(self, mid: str) -> None:
        """The pod answered ``mid`` with an error frame: that error is the failure,
        the message will not arrive and is not counted lost as well (nor are its
        copies to several receivers, expected as ``<mid>/<user>``)."""
        self.expected.pop(mid, None)
        for key in [k for k in self.expected if k.startswith(f"{mid}/")]:
            del self.expected[key]

    def forget_user(self, user: str, *, keep_acked: bool = False) -> None:
        """The receiver left: what it did not get yet is not a loss. On a
        reconnect (``keep_acked``), ACK-required messages must still arrive."""
        for mid in [m for m, (_, u, _, acked) in self.expected.items()
                    if u == user and not (keep_acked and acked)]:
            del self.expected[mid]

    def _check(self) -> None:
        while True:
            gevent.sleep(1.0)
            cutoff = time.time() - LOSS_TIMEOUT
            for mid in [m for m, (sent, *_) in self.expected.items() if sent < cutoff]:
                _, _, name, _ = self.expected.pop(mid)
                events.request.fire(request_type="WS", name=name,
                                    response_time=LOSS_TIMEOUT * 1000, response_length=0,
                                    exception=TimeoutError(
                                        f"not delivered within {LOSS_TIMEOUT:g}s"))


LEDGER = Ledger()
ONLINE: dict[str, WsnodeUser] = {}  # user id -> connected swarm user, per process


class WsnodeUser(User):
    """A connected wsnode user (abstract: subclasses add tasks)."""

    abstract = True
    #: Frames of these types are counted as deliveries of the swarm's messages.
    delivered_types: frozenset[str] = frozenset()

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.user_id = new_id()
        self.ws: websocket.WebSocket | None = None
        self._reader: Any = None
        self.ready = gevent.event.Event()

    # -- connection ---------------------------------------------------------

    def on_start(self) -> None:
        if not self.connect():
            gevent.spawn(self._reconnect)

    def on_stop(self) -> None:
        self.disconnect()

    def connect(self) -> bool:
        """Connect and read the replay; False (the failure reported to Locust,
        never raised: one traceback per user would flood the log) if it failed."""
        url = f"{next_host(self.host)}/ws"
        started = time.perf_counter()
        self.ready.clear()
        try:
            # No Origin header: this is not a browser page (websocket-client would
            # send one made from the URL, which pods refuse unless it is public).
            ws = websocket.create_connection(
                url, header=[f"Authorization: Bearer {mint(self.user_id)}"], timeout=30,
                enable_multithread=True, suppress_origin=True)
            welcome = json.loads(ws.recv())
            if welcome.get("type") != "welcome":
                raise ConnectionError(f"first frame is {welcome.get('type')!r}, not welcome")
            replayed = []
            while True:
                frame = json.loads(ws.recv())
                if frame.get("type") == "restore":
                    break
                replayed.append(frame)
            ws.settimeout(None)
        except Exception as exc:
            events.request.fire(request_type="WS", name="connect",
                                response_time=(time.perf_counter() - started) * 1000,
                                response_length=0, exception=connect_failure(exc))
            return False
        events.request.fire(request_type="WS", name="connect",
                            response_time=(time.perf_counter() - started) * 1000,
                            response_length=0, exception=None)
        self.ws = ws
        ONLINE[self.user_id] = self
        self.ready.set()
        for frame in replayed:
            self.on_frame(frame)
        self._reader = gevent.spawn(self._read, ws)
        self.on_connected()
        return True

    def on_connected(self) -> None:
        """A connection is up (its replay read): subclasses set it up."""

    def on_lost(self) -> None:
        """The connection ended (closed by us, or under us): subclasses forget it."""

    def disconnect(self) -> None:
        ONLINE.pop(self.user_id, None)
        LEDGER.forget_user(self.user_id)
        self.on_lost()
        ws, self.ws = self.ws, None
        reader, self._reader = self._reader, None
        if ws is None:
            if reader is not None:
                reader.kill(block=False)
            return
        # Bounded, whatever the pod does: the reader let go of the socket (it holds
        # the read lock the close handshake needs), the handshake itself, then the
        # socket closed in any case.
        with gevent.Timeout(CLOSE_SECONDS, False):
            if reader is not None:
                reader.kill(block=True)
            with contextlib.suppress(Exception):  # already gone
                ws.settimeout(CLOSE_SECONDS)  # the close frame's send, too
                ws.close(timeout=CLOSE_SECONDS)
        with contextlib.suppress(Exception):
            ws.shutdown()

    def send_frame(self, frame: dict[str, Any]) -> None:
        if self.ws is not None:
            self.ws.send(json.dumps(frame))

    def _read(self, ws: websocket.WebSocket) -> None:
        try:
            while True:
                raw = ws.recv()
                if not raw:
                    break
                self.on_frame(json.loads(raw))
        except (websocket.WebSocketConnectionClosedException, OSError):
            pass
        if self.ws is ws:  # closed under us (a drain, a pod that died): come back
            ONLINE.pop(self.user_id, None)
            # At-most-once messages in flight may be lost legitimately meanwhile.
            LEDGER.forget_user(self.user_id, keep_acked=True)
            self.on_lost()
            self.ws = None
            gevent.spawn(self._reconnect)

    def _reconnect(self) -> None:
        delay = 0.2
        while self.ws is None and self.environment.runner is not None:
            if self.connect():
                return
            gevent.sleep(delay)
            delay = min(5.0, delay * 2)

    # -- frames ---------------------------------------------------------------

    def on_frame(self, frame: dict[str, Any]) -> None:
        typ = frame.get("type")
        if typ in self.delivered_types:
            payload = frame.get("payload") or {}
            mid, ts = payload.get("mid"), payload.get("ts")
            first = LEDGER.arrived(mid) if mid is not None else True
            if isinstance(ts, float) and first:  # a resend is not another delivery
                events.request.fire(request_type="WS", name=f"{typ} delivery",
                                    response_time=(time.time() - ts) * 1000,
                                    response_length=0, exception=None)
            if frame.get("requiresAck"):
                self.send_frame({"type": "ack", "payload": {"id": frame["id"]}})
                if isinstance(ts, float) and first:
                    events.request.fire(request_type="WS", name=f"{typ} ack",
                                        response_time=(time.time() - ts) * 1000,
                                        response_length=0, exception=None)
        elif typ == "error":
            code = (frame.get("payload") or {}).get("code", "?")
            if isinstance(frame.get("id"), str):
                LEDGER.refused(frame["id"])
            events.request.fire(request_type="WS", name=f"error {code}", response_time=0,
                                response_length=0,
                                exception=RuntimeError((frame.get("payload") or {}).get(
                                    "message", code)))
        elif typ == "reconnect" and self.ws is not None:
            # The pod drains: the close (1012) that follows makes _read reconnect.
            pass
