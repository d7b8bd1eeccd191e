"""Presence: which pods hold which users' connections.

The :class:`Presence` interface is written for many pods sharing one store
(Redis, ``presence_redis.py``); :class:`MemoryPresence` is the embedded pod's
backend and can be shared by several in-process nodes.

Contracts:

* Entries are per connection (user -> conn -> pod), so a user with devices on
  several pods is exact, and removing one connection leaves the others.
* A pod counts only while its lease is fresh: ``join`` and ``heartbeat``
  renew it for ``lease_ms``. Readers (``pods_of``, ``users``, ``connections``,
  ``pods``) stop reporting a pod whose lease expired, even before it is reaped:
  at once for the memory backend, within ``live_cache_ms`` (default 1 s) for
  the Redis one, which caches the set of live pods per process. A pod that
  joined is seen at once by every reader: an entry naming a
  life the cache does not know makes the reader look again.
* ``join`` starts a new epoch of the pod: entries of an earlier life of the
  same pod id are not inherited (they are reaped), and the old life's late
  writes cannot erase the new life's entries.
* ``reap`` removes the entries of pods whose lease expired; any live pod may run it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from wsnode.clock import Clock, SystemClock
from wsnode.ids import ConnId, PodId, UserId


class PodState(StrEnum):
    ACTIVE = "active"
    DRAINING = "draining"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True)
class ConnInfo:
    conn: ConnId
    pod: PodId
    since: int  # epoch ms

    def to_json(self) -> dict[str, object]:
        return {"connId": self.conn, "pod": self.pod, "since": self.since}


@dataclass(frozen=True, slots=True)
class UserPresence:
    user: UserId
    connections: int
    pods: list[PodId]

    def to_json(self) -> dict[str, object]:
        return {"user": self.user, "connections": self.connections, "pods": self.pods}


@dataclass(frozen=True, slots=True)
class PodInfo:
    pod: PodId
    state: PodState
    connections: int
    users: int
    last_heartbeat: int  # epoch ms
    admin: str | None = None  # the pod's admin URL, as it advertises it

    def to_json(self) -> dict[str, object]:
        return {"pod": self.pod, "state": self.state.value, "connections": self.connections,
                "users": self.users, "lastHeartbeat": self.last_heartbeat,
                "admin": self.admin}


class PodLifecycle(Protocol):
    """A pod's own life in the registry: its lease and epochs."""

    async def join(self, pod: PodId, state: PodState = PodState.ACTIVE,
                   admin: str | None = None) -> None:
        """Start a new life of ``pod`` (``admin``: its admin URL, for operators'
        tools; kept for later re-joins of the same pod)."""
        ...

    async def heartbeat(self, pod: PodId, state: PodState) -> bool:
        """Renew the lease. False when the lease had lapsed and the pod was joined
        afresh: the caller must then re-announce its connections (``add_many``)."""
        ...

    async def leave(self, pod: PodId) -> None:
        """Remove the pod, its lease and all its entries (drain, shutdown)."""
        ...

    async def reap(self) -> list[PodId]:
        """Purge entries of pods whose lease expired; returns the pods reaped."""
        ...

    async def stale(self) -> list[tuple[PodId, int]]:
        """Pods whose lease expired but whose connections are still listed (not
        reaped yet), with how many: if this stays, no live pod is reaping."""
        ...


class PresenceWriter(Protocol):
    """A pod's connections, as it opens and closes them."""

    async def add(self, pod: PodId, user: UserId, conn: ConnId, since: int) -> None: ...

    async def add_many(self, pod: PodId, entries: Sequence[tuple[UserId, ConnId, int]]) -> None:
        """``add`` for many ``(user, conn, since)`` at once (re-announce after a rejoin)."""
        ...

    async def remove(self, pod: PodId, user: UserId, conn: ConnId) -> None: ...


class PresenceReader(Protocol):
    """Who is where: what senders, operators and tools read."""

    async def pods_of(self, users: Sequence[UserId]) -> dict[UserId, set[PodId]]:
        """Live pods holding each user (users with none are absent). Batched."""
        ...

    async def connections(self, user: UserId) -> list[ConnInfo]: ...

    async def users(self, pod: PodId | None = None) -> list[UserPresence]: ...

    async def pods(self) -> list[PodInfo]: ...

    async def live_pods(self) -> list[PodId]:
        """Pods whose lease is live, sorted: cheap (no per-pod reads), for fanouts
        to every pod (a broadcast)."""
        ...


class Presence(PodLifecycle, PresenceWriter, PresenceReader, Protocol):
    """Cluster-wide registry of connections (see the module contract): one
    backend plays the three roles."""


@dataclass
class _Pod:
    state: PodState
    lease_until: int
    last_heartbeat: int
    conns: dict[ConnId, UserId] = field(default_factory=dict)


class MemoryPresence:
    """Presence in process memory."""

    def __init__(self, lease_ms: int = 15_000, clock: Clock | None = None) -> None:
        self.lease_ms = lease_ms
        self._clock = clock or SystemClock()
        self._pods: dict[PodId, _Pod] = {}
        self._users: dict[UserId, dict[ConnId, ConnInfo]] = {}
        self._admin: dict[PodId, str] = {}
        self._epochs: dict[PodId, int] = {}

    def epoch(self, pod: PodId) -> int | None:
        """The pod's current life (a counter of its joins), None when not joined."""
        return self._epochs.get(pod) if pod in self._pods else None

    async def join(self, pod: PodId, state: PodState = PodState.ACTIVE,
                   admin: str | None = None) -> None:
        if pod in self._pods:
            self._purge(pod)  # a new life of this pod inherits nothing
        if admin is not None:
            self._admin[pod] = admin
        now = self._clock.now_ms()
        self._pods[pod] = _Pod(state, now + self.lease_ms, now)
        self._epochs[pod] = self._epochs.get(pod, 0) + 1

    async def heartbeat(self, pod: PodId, state: PodState) -> bool:
        now = self._clock.now_ms()
        entry = self._pods.get(pod)
        if entry is None or entry.lease_until <= now:
            # Our lease lapsed (we were stalled) and may have been reaped: rejoin,
            # keeping nothing the store may already have forgotten.
            if entry is not None:
                self._purge(pod)
            self._pods[pod] = _Pod(state, now + self.lease_ms, now)
            self._epochs[pod] = self._epochs.get(pod, 0) + 1
            return False
        entry.state = state
        entry.lease_until = now + self.lease_ms
        entry.last_heartbeat = now
        return True

    async def leave(self, pod: PodId) -> None:
        if pod in self._pods:
            self._purge(pod)

    async def add(self, pod: PodId, user: UserId, conn: ConnId, since: int) -> None:
        entry = self._pods.get(pod)
        if entry is None:
            return  # not joined (or reaped): the next heartbeat re-joins
        entry.conns[conn] = user
        self._users.setdefault(user, {})[conn] = ConnInfo(conn, pod, since)

    async def add_many(self, pod: PodId, entries: Sequence[tuple[UserId, ConnId, int]]) -> None:
        for user, conn, since in entries:
            await self.add(pod, user, conn, since)

    async def remove(self, pod: PodId, user: UserId, conn: ConnId) -> None:
        entry = self._pods.get(pod)
        if entry is not None and entry.conns.get(conn) == user:
            # Only this user's entry: dropping another user's conn from the pod
            # index would orphan it (a later _purge would no longer find it).
            del entry.conns[conn]
        conns = self._users.get(user)
        if conns is not None and (info := conns.get(conn)) is not None and info.pod == pod:
            del conns[conn]
            if not conns:
                del self._users[user]

    async def pods_of(self, users: Sequence[UserId]) -> dict[UserId, set[PodId]]:
        live = self._live()
        out: dict[UserId, set[PodId]] = {}
        for user in users:
            pods = {c.pod for c in self._users.get(user, {}).values() if c.pod in live}
            if pods:
                out[user] = pods
        return out

    async def connections(self, user: UserId) -> list[ConnInfo]:
        live = self._live()
        conns = self._users.get(user, {}).values()
        return sorted((c for c in conns if c.pod in live), key=lambda c: (c.since, c.conn))

    async def users(self, pod: PodId | None = None) -> list[UserPresence]:
        live = self._live()
        out = []
        for user, conns in self._users.items():
            infos = [c for c in conns.values() if c.pod in live]
            pods = sorted({c.pod for c in infos})
            if infos and (pod is None or pod in pods):
                out.append(UserPresence(user, len(infos), pods))
        return sorted(out, key=lambda u: u.user)

    async def pods(self) -> list[PodInfo]:
        live = self._live()
        out = []
        for pod_id in sorted(live):
            entry = self._pods[pod_id]
            users = {u for u in entry.conns.values()}
            out.append(PodInfo(pod_id, entry.state, len(entry.conns), len(users),
                               entry.last_heartbeat, self._admin.get(pod_id)))
        return out

    async def live_pods(self) -> list[PodId]:
        return sorted(self._live())

    async def stale(self) -> list[tuple[PodId, int]]:
        now = self._clock.now_ms()
        return [(p, len(e.conns)) for p, e in self._pods.items()
                if e.lease_until <= now and e.conns]

    async def reap(self) -> list[PodId]:
        now = self._clock.now_ms()
        dead = [p for p, e in self._pods.items() if e.lease_until <= now]
        for pod in dead:
            self._purge(pod)
        return dead

    def _live(self) -> set[PodId]:
        now = self._clock.now_ms()
        return {p for p, e in self._pods.items() if e.lease_until > now}

    def _purge(self, pod: PodId) -> None:
        entry = self._pods.pop(pod)
        for conn, user in entry.conns.items():
            conns = self._users.get(user)
            if conns is not None:
                conns.pop(conn, None)
                if not conns:
                    del self._users[user]
