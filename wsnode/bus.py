"""The bus: carries deliveries and control commands to a named pod.

:class:`Bus` is written for a broker shared by many pods (RabbitMQ,
``bus_rabbitmq.py``); :class:`MemoryBus` is the embedded pod's backend and can
link several in-process nodes.

Contracts:

* ``publish`` returns once the destination pod's queue holds the deliveries
  (broker confirm), and raises :class:`Unroutable` when no live queue exists for
  that pod; other failures raise :class:`~wsnode.errors.BackendUnavailable`.
  Deliveries to one pod from one publisher arrive in publish order.
* ``hand_over`` queues deliveries like ``publish`` but returns before the
  confirm, with futures that settle as ``publish`` would have returned; a
  publisher that hands over faster than the broker confirms is held back.
* Handlers given to ``start`` are called once per delivered batch; a handler
  that raises does not stop the consumer.
* ``publish`` and ``control`` work without ``start`` (publish-only, as
  ``wsctl`` uses the bus): the first call connects.
* Control commands go to one pod and are never re-routed: a drain for a pod
  that died is dropped.
* ``on_stranded`` receives deliveries that were published to a pod that died
  before consuming them; the receiving pod re-routes them after reading
  presence again. Every live pod may receive them (competing consumers).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import orjson

from wsnode.errors import BackendUnavailable, SendError
from wsnode.ids import MsgId, PodId, UserId
from wsnode.outage import LogThrottle
from wsnode.topics import BROADCAST, topic_problem

log = logging.getLogger("wsnode.bus")


class Unroutable(SendError):
    """No live queue for the destination pod (it died or left)."""


_NO_PODS: list[str] = []  # what a header without "r" names (never mutated)


# Not frozen: a frozen dataclass costs ~4x more to build, and one is built per
# message. Treat instances as immutable (dataclasses.replace, or the cheaper
# ``published_also`` on the hot path, makes variants).
@dataclass(slots=True)
class Delivery:
    """One message for every connection of ``user`` on the receiving pod.

    ``frame`` is the exact wire frame. ``ack_id`` is set for ACK-required
    messages (the store resends them; the receiving pod only delivers).
    ``expires_at`` (epoch ms) is the message's ``expiresAt``: past it, no pod
    delivers it. ``hops`` counts re-routes: a pod that no longer holds the user
    passes it on once, never in a loop. ``published_to`` names the pods the
    sender published a copy to (each copy is that pod's to deliver), so a
    pass-on never gives a device a second copy. ``trace_id`` is set when the
    message leaves a trail (``wsnode.trace``). ``stranded_from`` and
    ``redelivered`` are not sent: the bus sets the first on a copy that expired
    unread in that pod's queue, the second on a delivery the broker handed over
    again after a lost connection (it may have been delivered already).

    A *fanout* (``topic`` set) is for many connections of the receiving pod
    rather than one user's (``user`` is empty): every connection for
    :data:`~wsnode.topics.BROADCAST`, else those subscribed to the topic. It is
    at most once: never stored, re-routed or passed on (``wsnode.fanout``).
    """

    user: UserId
    frame: bytes
    type: str
    ack_id: MsgId | None = None
    expires_at: int | None = None
    hops: int = 0
    published_to: tuple[PodId, ...] = ()
    trace_id: MsgId | None = None
    stranded_from: PodId | None = None
    redelivered: bool = False
    topic: str | None = None

    def published_also(self, pods: tuple[PodId, ...]) -> Delivery:
        """A copy whose ``published_to`` is ``pods``: what ``dataclasses.replace``
        makes, at a fifth of its cost (it is built once per routed message)."""
        return Delivery(self.user, self.frame, self.type, self.ack_id, self.expires_at,
                        self.hops, pods, self.trace_id, self.stranded_from, self.redelivered,
                        self.topic)

    def header(self) -> bytes:
        """Everything but the frame, as compact JSON."""
        out: dict[str, Any] = {"u": self.user, "t": self.type}
        if self.ack_id is not None:
            out["a"] = self.ack_id
        if self.expires_at is not None:
            out["e"] = self.expires_at
        if self.hops:
            out["h"] = self.hops
        if self.published_to:
            out["r"] = self.published_to
        if self.trace_id is not None:
            out["x"] = self.trace_id
        if self.topic is not None:
            out["f"] = self.topic
        return orjson.dumps(out)

    @classmethod
    def from_parts(cls, header: bytes, frame: bytes) -> Delivery:
        """Inverse of :meth:`header` plus the frame; ValueError when malformed.
        Runs once per delivery a pod receives: the checks are ordered for the
        common header (a user, a type, the pods it went to): ~1.2 µs."""
        try:
            obj = orjson.loads(header)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"delivery header is not JSON: {exc.msg}") from exc
        if type(obj) is not dict:  # orjson makes exactly dict
            raise ValueError("delivery header is not an object")
        get = obj.get
        user, typ, ack, topic = get("u"), get("t"), get("a"), get("f")
        if topic is not None and not (isinstance(topic, str) and user == "" and ack is None
                                      and (topic == BROADCAST or topic_problem(topic) is None)):
            raise ValueError("delivery has a bad fanout target")
        if not (type(user) is str and (user or topic is not None) and type(typ) is str):
            raise ValueError("delivery lacks its user or type")
        if ack is not None and not (type(ack) is str and ack):
            raise ValueError("delivery has a bad ack id")
        expires, hops, published = get("e"), get("h", 0), get("r", _NO_PODS)
        if not ((expires is None or type(expires) is int) and type(hops) is int
                and type(published) is list):
            raise ValueError("delivery has a bad expiry, hop count or pod list")
        for pod in published:
            if type(pod) is not str:
                raise ValueError("delivery has a bad expiry, hop count or pod list")
        trace = get("x")
        if trace is not None and type(trace) is not str:
            raise ValueError("delivery has a bad trace id")
        # Pod ids are NewTypes of str: the checked list is them as it is.
        pods = cast("list[PodId]", published)
        return cls(UserId(user), frame, typ, MsgId(ack) if ack else None, expires, hops,
                   tuple(pods), MsgId(trace) if trace else None, topic=topic)

    def expired(self, now_ms: int) -> bool:
        return self.expires_at is not None and self.expires_at <= now_ms


# A batch body: MAGIC, then per delivery two big-endian u32 lengths, the header
# and the frame. Frames travel as the exact bytes clients get: no JSON escaping
# on the way in and no unescaping on the way out.
MAGIC = b"WSB1"
_LENGTHS = struct.Struct(">II")


def encode_batch(deliveries: Sequence[Delivery]) -> bytes:
    """One broker message body for many deliveries to the same pod."""
    parts = [MAGIC]
    for d in deliveries:
        header = d.header()
        parts += (_LENGTHS.pack(len(header), len(d.frame)), header, d.frame)
    return b"".join(parts)


def decode_batch(body: bytes) -> list[Delivery]:
    """Inverse of :func:`encode_batch`; raises ValueError on anything malformed."""
    if not body.startswith(MAGIC):
        raise ValueError("body is not a delivery batch")
    out: list[Delivery] = []
    view, pos, end = memoryview(body), len(MAGIC), len(body)
    while pos < end:
        if end - pos < _LENGTHS.size:
            raise ValueError("truncated delivery batch")
        head_len, frame_len = _LENGTHS.unpack_from(body, pos)
        pos += _LENGTHS.size
        if end - pos < head_len + frame_len:
            raise ValueError("truncated delivery batch")
        header = bytes(view[pos:pos + head_len])
        pos += head_len
        frame = bytes(view[pos:pos + frame_len])
        pos += frame_len
        out.append(Delivery.from_parts(header, frame))
    if not out:
        raise ValueError("empty delivery batch")
    return out


DeliveryHandler = Callable[[list[Delivery]], Awaitable[None]]
ControlHandler = Callable[[dict[str, Any]], Awaitable[None]]


class Bus(Protocol):
    """Point-to-point transport between pods (see the module contract)."""

    @property
    def ready(self) -> bool:
        """Connected, consuming, and hearing its own canary (a shared bus); a
        publish-only bus (no ``start``) is ready while connected."""
        ...

    @property
    def problem(self) -> str | None:
        """None exactly while :attr:`ready`; otherwise why not, in a few words
        fit for ``/readyz`` ("connecting", "deaf: no canary back for 12.0s",
        "stopped"). Never holds a secret."""
        ...

    async def start(
        self,
        pod: PodId,
        on_deliveries: DeliveryHandler,
        on_control: ControlHandler,
        on_stranded: DeliveryHandler,
    ) -> None:
        """Declare what this pod needs and start consuming. Returns once the
        first connection is up; later outages are retried in the background
        (``ready`` is False meanwhile). Raises BackendUnavailable if the first
        connection fails (``start`` may then be called again), RuntimeError
        if called again after it succeeded."""
        ...

    async def publish(self, pod: PodId, deliveries: Sequence[Delivery]) -> None:
        """Hand ``deliveries`` to ``pod`` (see the module contract); an empty
        sequence does nothing. A failing handler on the receiving side is not
        the publisher's error."""
        ...

    async def hand_over(self, pod: PodId,
                        deliveries: Sequence[Delivery]) -> list[asyncio.Future[None]]:
        """Queue ``deliveries`` for ``pod`` and return without the broker's
        confirm: the futures returned settle as ``publish`` would return or
        raise (None once confirmed). They may be shared with other publishers:
        add callbacks or await them shielded, never cancel them. An empty list
        means the outcome was known at once (success). Deliveries handed over
        keep their publish order with every other publish of this publisher.
        Raises what ``publish`` raises when the outcome is known before
        queueing (the bus down or stopped, no queue for ``pod``). May wait
        first while too many deliveries to ``pod`` are unconfirmed."""
        ...

    async def control(self, pod: PodId, command: dict[str, Any]) -> None: ...

    async def stop(self) -> None:
        """Stop consuming (the pod's queue is left for the broker to expire).
        Idempotent; afterwards the bus is not ready and ``start``, ``publish``
        and ``control`` raise BackendUnavailable."""
        ...


class MemoryBus:
    """In-process bus: a registry of pods' handlers, shareable between nodes.

    A publish runs the destination's handler before it returns; a handler that
    raises is logged, as a consumer would, and is not the publisher's error.
    """

    def __init__(self) -> None:
        self._pods: dict[PodId, tuple[DeliveryHandler, ControlHandler]] = {}
        self._mine: PodId | None = None
        self._stopped = False
        self._log = LogThrottle(log)

    def attach(self) -> MemoryBus:
        """A view of the same registry for another in-process node."""
        view = MemoryBus()
        view._pods = self._pods
        return view

    @property
    def ready(self) -> bool:
        if self._stopped:
            return False
        return self._mine is None or self._mine in self._pods

    @property
    def problem(self) -> str | None:
        if self.ready:
            return None
        if self._stopped:
            return "stopped"
        return f"pod {self._mine!r} left the in-process bus (another node with its id stopped)"

    async def start(
        self,
        pod: PodId,
        on_deliveries: DeliveryHandler,
        on_control: ControlHandler,
        on_stranded: DeliveryHandler,
    ) -> None:
        self._check_open()
        if self._mine is not None:
            raise RuntimeError("MemoryBus.start() called twice")
        self._mine = pod
        self._pods[pod] = (on_deliveries, on_control)

    async def publish(self, pod: PodId, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        handler = self._handlers(pod)[0]
        try:
            await handler(list(deliveries))
        except Exception:
            self._log.warn("handler:deliver", "bus deliver handler failed", exc_info=True)

    async def hand_over(self, pod: PodId,
                        deliveries: Sequence[Delivery]) -> list[asyncio.Future[None]]:
        await self.publish(pod, deliveries)  # in process, the outcome is known at once
        return []

    async def control(self, pod: PodId, command: dict[str, Any]) -> None:
        handler = self._handlers(pod)[1]
        try:
            await handler(command)
        except Exception:
            self._log.warn("handler:control", "bus control handler failed", exc_info=True)

    async def stop(self) -> None:
        self._stopped = True
        if self._mine is not None:
            self._pods.pop(self._mine, None)
            self._mine = None

    def _check_open(self) -> None:
        if self._stopped:
            raise BackendUnavailable("the bus was stopped")

    def _handlers(self, pod: PodId) -> tuple[DeliveryHandler, ControlHandler]:
        self._check_open()
        handlers = self._pods.get(pod)
        if handlers is None:
            raise Unroutable(f"pod {pod!r} has no queue")
        return handlers
