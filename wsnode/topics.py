"""Topics: named groups of connections, across pods (DESIGN §10).

A connection joins a topic by a token claim (``topics``, a list of names, at
connect), a client ``subscribe`` frame that the app's authorizer allowed, or
the app's own ``node.subscribe(conn, topic)``; it leaves by ``unsubscribe`` or
by closing. A publish reaches every subscribed connection on every pod, with
one broker message per pod that has subscribers and none to the others
(``wsnode.fanout``).

Names: 1 to :data:`MAX_TOPIC_LENGTH` characters of ``[A-Za-z0-9_.:@-]`` (so a
name is safe as it is in keys, URLs, log lines and metrics). Which connections
of this pod are subscribed is the pod's own knowledge (``wsnode.subscriptions``);
what the cluster knows is a :class:`TopicRegistry`: per pod *life*, how many of
its connections each topic has.

Contracts of a :class:`TopicRegistry` (``tests/contract`` holds both backends
to them):

* Membership is per pod life, the life of the pod's presence lease
  (``wsnode.presence``): readers count a pod only while its lease holds that
  life, so a pod that died (SIGKILL) stops counting when its lease expires,
  before anyone reaps it; a new life of the same pod id neither inherits nor
  erases what an older life wrote (``reap`` removes it).
* ``write`` sets absolute counts (0 removes), so a repeated write is harmless;
  a pod serializes its own writes (one at a time), so the last one wins.
* ``write`` and ``announce`` return False, writing nothing, while the pod has
  no life in presence (it has not joined yet): the caller announces later.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from wsnode.ids import PodId
from wsnode.presence import MemoryPresence

MAX_TOPIC_LENGTH = 128
TOPIC_PATTERN = re.compile(rf"[A-Za-z0-9_.:@-]{{1,{MAX_TOPIC_LENGTH}}}")
TOPIC_RULE = f"1-{MAX_TOPIC_LENGTH} characters of [A-Za-z0-9_.:@-]"
BROADCAST = "*"
"""The fanout target of a broadcast: every connection of the receiving pod. Not
a topic name (``*`` is outside the charset), so no topic can be mistaken for it."""
TOPICS_CLAIM = "topics"


def topic_problem(name: object) -> str | None:
    """Why ``name`` cannot be a topic, or None when it can."""
    if not isinstance(name, str) or TOPIC_PATTERN.fullmatch(name) is None:
        return f"a topic name is {TOPIC_RULE}"
    return None


def claimed_topics(claims: Mapping[str, Any], cap: int) -> tuple[str, ...]:
    """The topics a token's ``topics`` claim subscribes to, in order, without
    repeats. ValueError (its message fit for a 401) when the claim is not a list
    of topic names, or names more than ``cap`` of them."""
    value = claims.get(TOPICS_CLAIM)
    if value is None:
        return ()
    if not isinstance(value, list) or any(topic_problem(t) for t in value):
        raise ValueError(f"token claim '{TOPICS_CLAIM}' must be a list of topic names "
                         f"({TOPIC_RULE})")
    topics = tuple(dict.fromkeys(value))
    if len(topics) > cap:
        raise ValueError(f"token claim '{TOPICS_CLAIM}' names {len(topics)} topics; a "
                         f"connection may have {cap} (MAX_SUBSCRIPTIONS_PER_CONNECTION)")
    return topics


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """Who is subscribed to ``topic``: connections per live pod."""

    topic: str
    pods: dict[PodId, int] = field(default_factory=dict)

    @property
    def connections(self) -> int:
        return sum(self.pods.values())

    def summary(self) -> dict[str, object]:
        """One row of ``GET /v1/topics``."""
        return {"topic": self.topic, "connections": self.connections,
                "pods": sorted(self.pods)}

    def to_json(self) -> dict[str, object]:
        """The body of ``GET /v1/topics/{topic}``."""
        return {"topic": self.topic, "connections": self.connections,
                "pods": [{"pod": p, "connections": n} for p, n in sorted(self.pods.items())]}


class TopicRegistry(Protocol):
    """Topic membership of every pod (see the module contract)."""

    def life(self, pod: PodId) -> int | None:
        """The pod's current presence life as this process knows it (None: not
        joined). When it changes, the pod's membership must be announced again."""
        ...

    async def write(self, pod: PodId, counts: Mapping[str, int]) -> bool:
        """The pod now has ``counts[t]`` connections subscribed to ``t`` (0: none)."""
        ...

    async def announce(self, pod: PodId, counts: Mapping[str, int]) -> bool:
        """Exactly these topics for the pod's current life (after a new life, or
        writes that were lost): topics not named are removed."""
        ...

    async def leave(self, pod: PodId) -> None:
        """Remove the pod's membership (shutdown)."""
        ...

    async def reap(self) -> int:
        """Remove the membership of pod lives whose lease ended; how many lives."""
        ...

    async def pods_of(self, topic: str) -> dict[PodId, int]:
        """Live pods with subscribers of ``topic``, and how many each has."""
        ...

    async def topics(self) -> list[TopicInfo]:
        """Every topic with a subscriber on a live pod, sorted by name."""
        ...


class MemoryTopics:
    """Topic membership in process memory, alive with a :class:`MemoryPresence`'s
    leases (shareable by in-process nodes, as that presence is)."""

    def __init__(self, presence: MemoryPresence) -> None:
        self._presence = presence
        self._pods: dict[PodId, tuple[int, dict[str, int]]] = {}

    def life(self, pod: PodId) -> int | None:
        return self._presence.epoch(pod)

    async def write(self, pod: PodId, counts: Mapping[str, int]) -> bool:
        epoch = self._presence.epoch(pod)
        if epoch is None:
            return False
        held = self._pods.get(pod)
        if held is None or held[0] != epoch:
            held = self._pods[pod] = (epoch, {})  # a new life inherits nothing
        for topic, n in counts.items():
            if n > 0:
                held[1][topic] = n
            else:
                held[1].pop(topic, None)
        return True

    async def announce(self, pod: PodId, counts: Mapping[str, int]) -> bool:
        self._pods.pop(pod, None)
        return await self.write(pod, counts)

    async def leave(self, pod: PodId) -> None:
        self._pods.pop(pod, None)

    async def reap(self) -> int:
        live = await self._live()
        dead = [p for p, (epoch, _) in self._pods.items() if live.get(p) != epoch]
        for pod in dead:
            del self._pods[pod]
        return len(dead)

    async def pods_of(self, topic: str) -> dict[PodId, int]:
        live = await self._live()
        return {pod: n for pod, (epoch, counts) in self._pods.items()
                if live.get(pod) == epoch and (n := counts.get(topic, 0)) > 0}

    async def topics(self) -> list[TopicInfo]:
        live = await self._live()
        merged: dict[str, dict[PodId, int]] = {}
        for pod, (epoch, counts) in self._pods.items():
            if live.get(pod) == epoch:
                for topic, n in counts.items():
                    merged.setdefault(topic, {})[pod] = n
        return [TopicInfo(t, merged[t]) for t in sorted(merged)]

    async def _live(self) -> dict[PodId, int]:
        return {p: e for p in await self._presence.live_pods()
                if (e := self._presence.epoch(p)) is not None}
