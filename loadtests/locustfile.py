"""The wsnode swarm: ``locust -f loadtests/ --host ws://127.0.0.1:8765``.

Four scenarios (Locust user classes; pick some by name on the command line,
e.g. ``locust -f loadtests/ ChatUser``, or run the default mix by weight):

* ``ChatUser`` (weight 6): sends ``chat_message`` to a random other online
  swarm user every ``WSNODE_LOAD_CHAT_WAIT`` seconds (``min,max``, default
  ``1,3``), through the chat example app (``wsnode serve --app
  wsnode.examples.chat``: without it every send fails with ``type
  'chat_message' has no handler``). Each delivery is a request ``WS
  chat_message delivery`` timed end to end; a message that does not arrive is a
  failure.
* ``NotificationUser`` (weight 3): receives ACK-required notifications pushed
  through a pod's admin API (``POST /v1/send``, the pod picked at random from
  ``WSNODE_LOAD_ADMIN``, default: each ``--host`` with its port + 1000, key
  ``WSNODE_API_KEY``), acks them, and reports ``WS notification delivery`` and
  ``WS notification ack`` (push to ack sent).
* ``RoomUser`` (weight 1): joins a room with the chat example's ``join`` frame
  (``WS join``: join to its ack); rooms fill up in turn, ``WSNODE_LOAD_ROOM_SIZE``
  users each (default 10, so a post's fan-out stays the same however many
  users run), named ``lt-<run>-room<k>``. It posts ``room_message`` to its room
  every ``WSNODE_LOAD_ROOM_WAIT`` seconds (default ``2,4``). The pod publishes
  each to the room's topic, at most once; every member of the room in this
  process (the sender too) must get it: ``WS room_message delivery`` per
  member, a failure when one does not arrive. A reconnected user joins again
  (a pod forgets a connection's subscriptions when it closes).
* ``ChurnUser`` (weight 1): connects, waits for its replay, stays 1-5 s,
  disconnects, again; ``WS connect`` times each connect.

Users are spread over the pods listed (comma-separated) in ``--host``, and
follow drains (``reconnect``, close 1012) to another pod. Tokens are minted
with ``WSNODE_JWT_SECRET``.

What the swarm leaves in Redis (its users' ACK records and message trails,
kept a day by the pods) is deleted when Locust quits, if ``WSNODE_REDIS_URL``
(and ``WSNODE_KEY_PREFIX`` when not ``ws``) is set: see ``_cleanup.py``.
``wsctl swarm`` reads the live state ``_progress.py`` writes.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import _cleanup  # noqa: F401 (registers its listener: Redis cleanup on quit)
import _progress  # noqa: F401 (registers its listeners: live state for wsctl swarm)
import gevent
from _wsuser import LEDGER, ONLINE, RUN, WsnodeUser, hosts_of, new_id
from locust import between, events, task
from locust.contrib.fasthttp import FastHttpSession


def _wait(name: str, default: str) -> tuple[float, float]:
    low, _, high = os.environ.get(name, default).partition(",")
    return float(low), float(high or low)


def admin_urls(host: str | None) -> list[str]:
    """``WSNODE_LOAD_ADMIN`` (comma-separated), else every pod of ``--host`` with
    its port + 1000 (wsnode's defaults: 8765 -> 9765)."""
    given = os.environ.get("WSNODE_LOAD_ADMIN")
    if given:
        return [u.strip().rstrip("/") for u in given.split(",") if u.strip()]
    out = []
    for ws in hosts_of(host):
        parts = urlsplit(ws)
        port = (parts.port or (443 if parts.scheme == "wss" else 80)) + 1000
        scheme = "https" if parts.scheme == "wss" else "http"
        out.append(urlunsplit((scheme, f"{parts.hostname}:{port}", "", "", "")))
    return out


class ChatUser(WsnodeUser):
    weight = 6
    wait_time = between(*_wait("WSNODE_LOAD_CHAT_WAIT", "1,3"))
    delivered_types = frozenset({"chat_message"})

    @task
    def chat(self) -> None:
        peers = [u for u, user in ONLINE.items()
                 if u != self.user_id and isinstance(user, ChatUser) and user.ws is not None]
        if not peers or self.ws is None:
            return
        to = random.choice(peers)
        mid = new_id()
        LEDGER.expect(mid, to, "chat_message delivery")
        # The id comes back on an error frame about this message (no handler,
        # rate limited): then that error is the failure, not a loss.
        self.send_frame({"type": "chat_message", "id": mid,
                         "payload": {"to": to, "mid": mid, "ts": time.time()}})


class NotificationUser(WsnodeUser):
    weight = 3
    wait_time = between(*_wait("WSNODE_LOAD_NOTIFY_WAIT", "2,4"))
    delivered_types = frozenset({"notification"})

    def on_start(self) -> None:
        super().on_start()
        self.admins = admin_urls(self.host)
        self.api_key = os.environ.get("WSNODE_API_KEY", "")
        self.http = FastHttpSession(base_url=self.admins[0],
                                    request_event=self.environment.events.request, user=self)

    @task
    def notify_me(self) -> None:
        """Push an ACK-required notification to this user through a random pod."""
        if self.ws is None:
            return
        mid = new_id()
        LEDGER.expect(mid, self.user_id, "notification delivery", acked=True)
        body = {"user": self.user_id, "envelope": {
            "type": "notification", "id": mid, "requiresAck": True,
            "payload": {"mid": mid, "ts": time.time()}}}
        resp = self.http.post(f"{random.choice(self.admins)}/v1/send", json=body,
                              name="POST /v1/send",
                              headers={"Authorization": f"Bearer {self.api_key}"})
        if resp.status_code != 200:  # that failure is counted; the message is not coming
            LEDGER.refused(mid)


ROOMS: dict[str, set[str]] = {}  # room -> users whose join was acked, this process
ROOM_SIZE = max(1, int(os.environ.get("WSNODE_LOAD_ROOM_SIZE", "10")))
_seats = itertools.count()  # the n-th RoomUser of this process sits in room n // ROOM_SIZE


class RoomUser(WsnodeUser):
    weight = 1
    wait_time = between(*_wait("WSNODE_LOAD_ROOM_WAIT", "2,4"))

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.room = f"lt-{RUN}-room{next(_seats) // ROOM_SIZE}"
        self.joining: tuple[str, float] | None = None  # (frame id, sent at)

    def on_connected(self) -> None:
        jid = new_id()
        self.joining = (jid, time.perf_counter())
        self.send_frame({"type": "join", "id": jid, "requiresAck": True,
                         "payload": {"room": self.room}})

    def on_lost(self) -> None:
        ROOMS.get(self.room, set()).discard(self.user_id)
        self.joining = None

    @task
    def post(self) -> None:
        members = ROOMS.get(self.room, set())
        if self.ws is None or self.user_id not in members:
            return
        mid = new_id()
        for member in members:
            LEDGER.expect(f"{mid}/{member}", member, "room_message delivery")
        self.send_frame({"type": "room_message", "id": mid,
                         "payload": {"room": self.room, "mid": mid, "ts": time.time()}})

    def on_frame(self, frame: dict[str, Any]) -> None:
        typ = frame.get("type")
        payload = frame.get("payload")
        body = payload if isinstance(payload, dict) else {}
        if typ == "room_message":
            ts = body.get("ts")
            if LEDGER.arrived(f"{body.get('mid')}/{self.user_id}") and isinstance(ts, float):
                events.request.fire(request_type="WS", name="room_message delivery",
                                    response_time=(time.time() - ts) * 1000,
                                    response_length=0, exception=None)
        elif typ == "ack" and self.joining is not None and body.get("id") == self.joining[0]:
            events.request.fire(request_type="WS", name="join",
                                response_time=(time.perf_counter() - self.joining[1]) * 1000,
                                response_length=0, exception=None)
            self.joining = None
            ROOMS.setdefault(self.room, set()).add(self.user_id)
        else:
            super().on_frame(frame)


class ChurnUser(WsnodeUser):
    weight = 1
    wait_time = between(0.1, 0.5)

    def on_start(self) -> None:
        pass  # each task is a whole connect ... disconnect cycle

    @task
    def cycle(self) -> None:
        if not self.connect():
            gevent.sleep(1)  # the failure is reported: try again at the next cycle
            return
        gevent.sleep(random.uniform(1, 5))
        self.disconnect()
