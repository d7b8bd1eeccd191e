"""Message trails: where a message went, for ``wsctl trace ID``.

Every ACK-required message (and any message its sender asks to trace, or the
``TRACE`` sampling picks) leaves a short trail of events, each with the pod
and the time: ``stored``, ``routed``, ``delivered``, ``replayed``, ``resent``,
``acked``, ``dead``, ``revived``. Trails are bounded: at most ``MAX_EVENTS``
events per id, kept ``ttl`` after their last event.

Contract of :class:`Tracer`: ``record`` never blocks and never raises (a trail
is diagnostics: losing an event to a backend outage must not cost a message);
``flush`` writes what ``record`` buffered (a pod runs it as a supervised loop,
woken by ``on_buffered``; it raises BackendUnavailable when the store cannot
take the batch, which is then dropped); ``trail`` returns the events of an id
in time order (by the clock of the pod that recorded each), of one user when
given.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from wsnode.clock import Clock, SystemClock
from wsnode.ids import MsgId, PodId, UserId

MAX_EVENTS = 100


@dataclass(frozen=True, slots=True)
class TracePolicy:
    """What is traced: ACK-required messages (``ack``), and a ``sample`` share
    of the others (with an id); ``TRACE`` = ``off``, ``ack``, ``all`` or a
    fraction such as ``0.01``."""

    ack: bool = True
    sample: float = 0.0
    ttl_ms: int = 86_400_000

    @classmethod
    def parse(cls, text: str, ttl_ms: int) -> TracePolicy:
        value = text.strip().lower()
        if value == "off":
            return cls(False, 0.0, ttl_ms)
        if value == "ack":
            return cls(True, 0.0, ttl_ms)
        if value == "all":
            return cls(True, 1.0, ttl_ms)
        share = float(value)  # ValueError names the problem to the settings check
        if not 0.0 <= share <= 1.0:
            raise ValueError("a sample share is between 0 and 1")
        return cls(True, share, ttl_ms)

    def wants(self, requires_ack: bool, has_id: bool, asked: bool) -> bool:
        if not has_id:
            return False
        if requires_ack:
            return self.ack or asked
        return asked or (self.sample > 0 and random.random() < self.sample)


class Tracer(Protocol):
    on_buffered: Callable[[], None]
    """Called when ``record`` buffers into an empty buffer (wakes the flusher)."""

    def record(self, msg_id: MsgId, user: UserId, event: str, pod: PodId | None,
               *, at: int | None = None, **fields: Any) -> None:
        """Add an event; ``at`` (epoch ms) when it happened, if not now."""
        ...

    async def flush(self) -> None:
        """Write what is buffered (see the module contract)."""
        ...

    async def trail(self, msg_id: MsgId, user: UserId | None = None) -> list[dict[str, Any]]: ...

    async def aclose(self) -> None:
        """Write what is buffered (bounded in time)."""
        ...


def _nothing() -> None:
    return None


def make_event(at: int, user: UserId, event: str, pod: PodId | None,
               fields: dict[str, Any]) -> dict[str, Any]:
    return {"at": at, "event": event, "user": user, "pod": pod, **fields}


class MemoryTracer:
    """Trails in process memory (embedded pod): at most ``max_ids`` trails, one
    per (user, id)."""

    def __init__(self, ttl_ms: int = 86_400_000, *, max_ids: int = 100_000,
                 clock: Clock | None = None) -> None:
        self.ttl_ms = ttl_ms
        self._max_ids = max_ids
        self._clock = clock or SystemClock()
        self._trails: OrderedDict[tuple[UserId, MsgId], list[dict[str, Any]]] = OrderedDict()
        self._users: dict[MsgId, set[UserId]] = {}
        self.on_buffered: Callable[[], None] = _nothing

    def record(self, msg_id: MsgId, user: UserId, event: str, pod: PodId | None,
               *, at: int | None = None, **fields: Any) -> None:
        key = (user, msg_id)
        trail = self._trails.pop(key, [])
        trail.append(make_event(at or self._clock.now_ms(), user, event, pod, fields))
        self._trails[key] = trail[-MAX_EVENTS:]  # most recently touched last
        self._users.setdefault(msg_id, set()).add(user)
        while len(self._trails) > self._max_ids:
            (old_user, old_id), _ = self._trails.popitem(last=False)
            users = self._users.get(old_id)
            if users is not None:
                users.discard(old_user)
                if not users:
                    del self._users[old_id]

    async def flush(self) -> None:
        return None  # nothing is buffered

    async def trail(self, msg_id: MsgId, user: UserId | None = None) -> list[dict[str, Any]]:
        users = [user] if user is not None else sorted(self._users.get(msg_id, ()))
        oldest = self._clock.now_ms() - self.ttl_ms
        events = []
        for u in users:
            trail = self._trails.get((u, msg_id), [])
            if trail and trail[-1]["at"] >= oldest:
                events += trail
        # Time order (stable: one pod's events keep their order on a tie).
        return sorted(events, key=lambda e: int(e["at"]))

    async def aclose(self) -> None:
        return None


class NoTracer:
    """``TRACE=off``."""

    def __init__(self) -> None:
        self.on_buffered: Callable[[], None] = _nothing

    async def flush(self) -> None:
        return None

    def record(self, msg_id: MsgId, user: UserId, event: str, pod: PodId | None,
               *, at: int | None = None, **fields: Any) -> None:
        return None

    async def trail(self, msg_id: MsgId, user: UserId | None = None) -> list[dict[str, Any]]:
        return []

    async def aclose(self) -> None:
        return None
