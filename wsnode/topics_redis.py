"""Topic membership in Redis, shared by every pod (contract: ``wsnode.topics``).

Data (names in ``keys.RedisKeys``), keyed by pod *life* as presence is
(``wsnode.presence_redis``): per pod life an index hash topic -> count; per
topic a hash ``"<pod> <epoch>"`` -> count, what a publish reads (one key, one
hash slot); one global set of the lives that wrote any. An entry counts only
while its pod's lease holds the entry's epoch (the lease is presence's), so a
SIGKILLed pod's membership stops counting when its lease expires, before
anyone reaps it.

Every write is an absolute count, in one pipeline per call, ordered so that a
crash between commands leaves only what the reaper removes: the life is listed
first, the index before the topic's entry on a subscribe, the topic's entry
before the index on a removal. A pod's writes are serialized by the pod
(``wsnode.subscriptions``), so a later write never lands before an earlier one.
No command spans two hash slots (Redis Cluster ready).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from wsnode.ids import PodId
from wsnode.keys import RedisKeys, member, split_member
from wsnode.presence_redis import RedisPresence
from wsnode.redis_conn import Redis, as_str, translated
from wsnode.topics import TopicInfo

_CHUNK = 500


class RedisTopics:
    """A :class:`~wsnode.topics.TopicRegistry` over Redis, living by the leases
    of a :class:`RedisPresence` (the pod's own, in a pod)."""

    def __init__(self, client: Redis, keys: RedisKeys, presence: RedisPresence) -> None:
        self._r = client
        self._k = keys
        self._presence = presence

    def life(self, pod: PodId) -> int | None:
        return self._presence.epoch(pod)

    # -- writes (a pod's own) -------------------------------------------------

    async def write(self, pod: PodId, counts: Mapping[str, int]) -> bool:
        epoch = self._presence.epoch(pod)
        if epoch is None:
            return False
        life, index = member(pod, epoch), self._k.pod_topics(pod, epoch)
        items = list(counts.items())
        with translated("topics write"):
            for start in range(0, len(items), _CHUNK):
                chunk = items[start:start + _CHUNK]
                async with self._r.pipeline(transaction=False) as pipe:
                    # Listed again in case a reaper dropped the life while we stalled.
                    pipe.sadd(self._k.topic_lives, life)
                    for topic, n in chunk:
                        if n > 0:
                            pipe.hset(index, topic, n)
                            pipe.hset(self._k.topic_pods(topic), life, n)
                        else:
                            pipe.hdel(self._k.topic_pods(topic), life)
                            pipe.hdel(index, topic)
                    await pipe.execute()
        return True

    async def announce(self, pod: PodId, counts: Mapping[str, int]) -> bool:
        epoch = self._presence.epoch(pod)
        if epoch is None:
            return False
        with translated("topics announce"):
            held = await self._r.hkeys(self._k.pod_topics(pod, epoch))
        gone = {as_str(t): 0 for t in held if as_str(t) not in counts}
        return await self.write(pod, {**gone, **counts})

    async def leave(self, pod: PodId) -> None:
        epoch = self._presence.epoch(pod)
        if epoch is not None:
            await self._reap_life(pod, epoch)

    async def reap(self) -> int:
        with translated("topics reap"):
            raw = await self._r.smembers(self._k.topic_lives)
            lives = [(p, int(e)) for p, e in map(split_member, map(as_str, raw))
                     if p and e.isdigit()]
            if not lives:
                return 0
            async with self._r.pipeline(transaction=False) as pipe:
                for pod, _ in lives:
                    pipe.get(self._k.pod_lease(pod))
                leases = await pipe.execute()
        dead = [(p, e) for (p, e), lease in zip(lives, leases, strict=True)
                if lease is None or as_str(lease) != str(e)]
        for pod, epoch in dead:
            await self._reap_life(PodId(pod), epoch)
        return len(dead)

    async def _reap_life(self, pod: PodId, epoch: int) -> None:
        """Remove every entry of one life, then the life. Idempotent: several
        pods may reap the same life at once."""
        life, index = member(pod, epoch), self._k.pod_topics(pod, epoch)
        with translated("topics reap"):
            topics = [as_str(t) for t in await self._r.hkeys(index)]
            for start in range(0, len(topics), _CHUNK):
                async with self._r.pipeline(transaction=False) as pipe:
                    for topic in topics[start:start + _CHUNK]:
                        pipe.hdel(self._k.topic_pods(topic), life)
                    await pipe.execute()
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.delete(index)
                pipe.srem(self._k.topic_lives, life)
                await pipe.execute()

    # -- reads ------------------------------------------------------------------

    async def pods_of(self, topic: str) -> dict[PodId, int]:
        with translated("topics lookup"):
            raw: dict[Any, Any] = await self._r.hgetall(self._k.topic_pods(topic))
        entries = [(*_life(k), _count(v)) for k, v in raw.items()]
        live = await self._presence.live_lives({(p, e) for p, e, _ in entries})
        out: dict[PodId, int] = {}
        for pod, epoch, n in entries:
            if n > 0 and live.get(pod) == epoch:
                out[PodId(unquote(pod))] = n
        return out

    async def topics(self) -> list[TopicInfo]:
        live = sorted((await self._presence.live_lives()).items())
        if not live:
            return []
        with translated("topics list"):
            async with self._r.pipeline(transaction=False) as pipe:
                for pod, epoch in live:
                    pipe.hgetall(self._k.pod_topics(unquote(pod), epoch))
                rows = await pipe.execute()
        merged: dict[str, dict[PodId, int]] = {}
        for (pod, _), row in zip(live, rows, strict=True):
            for topic, n in row.items():
                if (count := _count(n)) > 0:
                    merged.setdefault(as_str(topic), {})[PodId(unquote(pod))] = count
        return [TopicInfo(t, merged[t]) for t in sorted(merged)]


def _life(raw: Any) -> tuple[str, int]:
    """``"<encoded pod> <epoch>"`` -> (encoded pod, epoch); -1 when unreadable."""
    pod, _, epoch = as_str(raw).partition(" ")
    return pod, int(epoch) if epoch.isdigit() else -1


def _count(raw: Any) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        return 0
