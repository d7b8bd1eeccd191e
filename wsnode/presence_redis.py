"""Presence in Redis, shared by every pod (contract: ``wsnode.presence``).

Data (names in ``keys.RedisKeys``): per user a hash conn -> ``"<pod> <epoch>
<since>"``; per pod life an index set of ``"<user> <conn>"``; per pod a lease
key holding the epoch of its current life, with a TTL renewed by heartbeats;
one global set of lives. An entry counts only while the lease of its pod holds
the entry's epoch, so a dead pod stops counting when its lease expires, before
anyone reaps it, and a restarted pod (new epoch) neither inherits nor erases
its predecessor's entries. Every script touches one hash slot; multi-slot
updates are ordered so that a crash between steps leaves only what the reaper
removes (index first on add, entry first on remove).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import unquote

from redis.exceptions import ResponseError

from wsnode.coalescer import Coalescer
from wsnode.errors import CorruptRecord
from wsnode.ids import ConnId, PodId, UserId
from wsnode.keys import RedisKeys, encode_id, member, split_member
from wsnode.outage import LogThrottle
from wsnode.presence import ConnInfo, PodInfo, PodState, UserPresence
from wsnode.redis_conn import (
    Redis,
    as_str,
    execute,
    queue_script,
    script,
    translate,
    translated,
)

log = logging.getLogger("wsnode.presence")

_SCAN_BATCH = 500
_QUARANTINE_MS = 7 * 86_400_000


class RedisPresence:
    """Presence over one Redis. ``live_cache_ms`` bounds how stale the set of
    live pods may be for readers (default 1 s, well under one lease)."""

    def __init__(self, client: Redis, keys: RedisKeys, *, lease_ms: int = 15_000,
                 live_cache_ms: int = 1000) -> None:
        self._r = client
        self._k = keys
        self.lease_ms = lease_ms
        self._script = script(client, "presence")
        self._epochs: dict[PodId, int] = {}  # lives this process joined
        self._admin: dict[PodId, str] = {}
        self._live: dict[str, int] = {}  # encoded pod -> epoch of its live life
        self._live_until = 0.0
        self._live_cache_s = live_cache_ms / 1000
        self._live_refresh: asyncio.Future[dict[str, int]] | None = None
        self._dead_lives: set[tuple[str, int]] = set()
        self._asked: dict[tuple[str, int], float] = {}
        self._batch = Coalescer(client)
        self._throttle = LogThrottle(log)

    def epoch(self, pod: PodId) -> int | None:
        """The epoch of the life of ``pod`` this process joined (None: not joined)."""
        return self._epochs.get(pod)

    async def live_lives(self, seen: set[tuple[str, int]] | None = None) -> dict[str, int]:
        """Encoded pod -> epoch of its live life (cached as for ``pods_of``); read
        again when ``seen`` names a life the cache does not hold as live."""
        live = await self._live_lives()
        unknown = {(p, e) for p, e in seen or () if live.get(p) != e}
        return await self._fresher_lives(live, unknown) if unknown else live

    # -- writes (a pod's own) ---------------------------------------------

    async def join(self, pod: PodId, state: PodState = PodState.ACTIVE,
                   admin: str | None = None) -> None:
        if admin is not None:
            self._admin[pod] = admin
        with translated("presence join"):
            epoch, _ = await self._script(
                keys=[self._k.pod_epoch(pod), self._k.pod_lease(pod), self._k.pod_info(pod)],
                args=["join", self.lease_ms, state.value, self._admin.get(pod, "")])
            self._epochs[pod] = int(epoch)
            await self._r.sadd(self._k.lives, member(pod, int(epoch)))
        self._live_until = 0.0
        # An earlier life of this pod no longer counts (its epoch is not the
        # lease's); the next reap() purges it, after the caller re-announced.

    async def heartbeat(self, pod: PodId, state: PodState) -> bool:
        epoch = self._epochs.get(pod)
        if epoch is not None:
            with translated("presence heartbeat"):
                renewed = await self._script(
                    keys=[self._k.pod_lease(pod), self._k.pod_info(pod), self._k.pod_epoch(pod)],
                    args=["heartbeat", epoch, self.lease_ms, state.value])
            if renewed:
                return True
        await self.join(pod, state)
        return False

    async def leave(self, pod: PodId) -> None:
        epoch = self._epochs.pop(pod, None)
        if epoch is not None:
            await self._reap_life(pod, epoch)
            self._live_until = 0.0

    async def add(self, pod: PodId, user: UserId, conn: ConnId, since: int) -> None:
        epoch = self._epochs.get(pod)
        if epoch is None:
            return
        index, life = self._k.pod_index(pod, epoch), member(pod, epoch)
        entry, key, value = member(user, conn), self._k.user_conns(user), f"{life} {since}"

        async def write() -> None:
            # One connect: coalesced with this tick's others. Within the pipeline
            # the index comes first (an entry is never written without a way to
            # reap it), and the life is listed again in case a reaper dropped it.
            with translated("presence add"):
                await asyncio.gather(
                    self._batch.run(lambda pipe: pipe.sadd(index, entry)),
                    self._batch.run(lambda pipe: pipe.sadd(self._k.lives, life)))
            with translated("presence add", key):
                await self._batch.run(lambda pipe: pipe.hset(key, conn, value))

        try:
            await write()
        except CorruptRecord as exc:
            await self._quarantine(exc)
            await write()

    async def add_many(self, pod: PodId, entries: Sequence[tuple[UserId, ConnId, int]]) -> None:
        epoch = self._epochs.get(pod)
        if epoch is None or not entries:
            return
        index = self._k.pod_index(pod, epoch)
        value_prefix = f"{member(pod, epoch)} "
        with translated("presence add"):
            for start in range(0, len(entries), _SCAN_BATCH):
                chunk = entries[start:start + _SCAN_BATCH]
                async with self._r.pipeline(transaction=False) as pipe:
                    # The index first: an entry is never written without a way to reap it.
                    pipe.sadd(index, *(member(u, c) for u, c, _ in chunk))
                    # Re-list the life in case a reaper dropped it while we were stalled.
                    pipe.sadd(self._k.lives, member(pod, epoch))
                    for user, conn, since in chunk:
                        pipe.hset(self._k.user_conns(user), conn, f"{value_prefix}{since}")
                    await pipe.execute()

    async def remove(self, pod: PodId, user: UserId, conn: ConnId) -> None:
        epoch = self._epochs.get(pod)
        if epoch is None:
            return
        index, entry = self._k.pod_index(pod, epoch), member(user, conn)
        with translated("presence remove"):
            # The entry first, then the index: a crash between leaves an index
            # member the reaper skips, never an entry it cannot find.
            await asyncio.gather(
                self._batch.script(self._script, [self._k.user_conns(user)],
                                   ["unlink", conn, f"{member(pod, epoch)} "]),
                self._batch.run(lambda pipe: pipe.srem(index, entry)))

    # -- reads --------------------------------------------------------------

    async def pods_of(self, users: Sequence[UserId]) -> dict[UserId, set[PodId]]:
        if not users:
            return {}
        live = await self._live_lives()
        with translated("presence lookup"):
            if len(users) == 1:
                # One lookup per message: coalesced with the others of this tick.
                key = self._k.user_conns(users[0])
                try:
                    rows = [await self._batch.run(lambda pipe: pipe.hvals(key))]
                except ResponseError as exc:
                    rows = [exc]
            else:
                async with self._r.pipeline(transaction=False) as pipe:
                    for user in users:
                        pipe.hvals(self._k.user_conns(user))
                    rows = await pipe.execute(raise_on_error=False)
        for i, (user, row) in enumerate(zip(users, rows, strict=True)):
            if isinstance(row, Exception):
                # A user's record that cannot be read: moved aside, the user offline.
                await self._quarantine(translate(row, "presence lookup",
                                                 self._k.user_conns(user)))
                rows[i] = []
        entries = [list(map(_parse, values)) for values in rows]
        unknown = {(p, e) for row in entries for p, e, _ in row if live.get(p) != e}
        if unknown:
            live = await self._fresher_lives(live, unknown)
        out: dict[UserId, set[PodId]] = {}
        for user, row in zip(users, entries, strict=True):
            pods = {PodId(unquote(p)) for p, e, _ in row if live.get(p) == e}
            if pods:
                out[user] = pods
        return out

    async def connections(self, user: UserId) -> list[ConnInfo]:
        live = await self._live_lives()
        with translated("presence lookup", self._k.user_conns(user)):
            raw = await self._r.hgetall(self._k.user_conns(user))
        entries = [(as_str(conn), *_parse(value)) for conn, value in raw.items()]
        unknown = {(p, e) for _, p, e, _ in entries if live.get(p) != e}
        if unknown:
            live = await self._fresher_lives(live, unknown)
        out = []
        for conn, pod, epoch, since in entries:
            if live.get(pod) == epoch:
                out.append(ConnInfo(ConnId(conn), PodId(unquote(pod)), since))
        return sorted(out, key=lambda c: (c.since, c.conn))

    async def users(self, pod: PodId | None = None) -> list[UserPresence]:
        live = await self._live_lives()
        counts: dict[str, int] = defaultdict(int)
        pods: dict[str, set[str]] = defaultdict(set)
        for enc_pod, epoch in live.items():
            pod_id = unquote(enc_pod)
            async for user, _ in self._index(PodId(pod_id), epoch):
                counts[user] += 1
                pods[user].add(pod_id)
        rows = [UserPresence(UserId(u), counts[u], sorted(PodId(p) for p in pods[u]))
                for u in counts if pod is None or pod in pods[u]]
        return sorted(rows, key=lambda r: r.user)

    async def pods(self) -> list[PodInfo]:
        live = await self._live_lives()
        out = []
        for enc_pod, epoch in sorted(live.items()):
            pod_id = PodId(unquote(enc_pod))
            with translated("presence pods"):
                info = await self._r.hgetall(self._k.pod_info(pod_id))
            users: set[str] = set()
            conns = 0
            async for user, _ in self._index(pod_id, epoch):
                users.add(user)
                conns += 1
            state = as_str(info.get(b"state", b"active"))
            admin = as_str(info[b"admin"]) if info.get(b"admin") else None
            if state not in {s.value for s in PodState}:
                state = PodState.ACTIVE.value
            out.append(PodInfo(pod_id, PodState(state), conns, len(users),
                               int(info.get(b"heartbeat", 0)), admin))
        return out

    async def live_pods(self) -> list[PodId]:
        return sorted(PodId(unquote(p)) for p in await self._live_lives())

    async def reap(self) -> list[PodId]:
        lives = await self._lives()
        with translated("presence reap"):
            async with self._r.pipeline(transaction=False) as pipe:
                for pod, _ in lives:
                    pipe.get(self._k.pod_lease(pod))
                leases = await pipe.execute()
        reaped = []
        for (pod, epoch), lease in zip(lives, leases, strict=True):
            if lease is None or as_str(lease) != str(epoch):
                await self._reap_life(PodId(pod), epoch)
                reaped.append(PodId(pod))
        if reaped:
            self._live_until = 0.0
        return reaped

    async def stale(self) -> list[tuple[PodId, int]]:
        lives = await self._lives()
        with translated("presence stale"):
            async with self._r.pipeline(transaction=False) as pipe:
                for pod, epoch in lives:
                    pipe.get(self._k.pod_lease(pod))
                    pipe.scard(self._k.pod_index(pod, epoch))
                rows = await pipe.execute()
        out = []
        for (pod, epoch), lease, left in zip(lives, rows[0::2], rows[1::2], strict=True):
            if (lease is None or as_str(lease) != str(epoch)) and left:
                out.append((PodId(pod), int(left)))
        return out

    # -- internals ------------------------------------------------------------

    async def _reap_life(self, pod: PodId, epoch: int) -> None:
        """Unlink every entry of one life of ``pod``, then forget the life.
        Idempotent: several pods may reap the same life at once."""
        index = self._k.pod_index(pod, epoch)
        prefix = f"{member(pod, epoch)} "
        with translated("presence reap"):
            cursor = 0
            while True:
                cursor, members = await self._r.sscan(index, cursor, count=_SCAN_BATCH)
                if members:
                    def unlink_all(pipe: Any, members: list[Any] = members) -> None:
                        for raw in members:
                            user, conn = split_member(as_str(raw))
                            queue_script(pipe, self._script, [self._k.user_conns(user)],
                                         ["unlink", conn, prefix])
                    await execute(self._r, unlink_all, [self._script])
                if cursor == 0:
                    break
            await self._script(
                keys=[index, self._k.pod_info(pod), self._k.pod_lease(pod)],
                args=["forget_life", epoch])
            await self._r.srem(self._k.lives, member(pod, epoch))

    async def _live_lives(self) -> dict[str, int]:
        """Encoded pod -> epoch of its live life, cached for ``live_cache_ms``; one
        refresh at a time, however many lookups wait for it."""
        if time.monotonic() < self._live_until:
            return self._live
        if self._live_refresh is None:
            self._live_refresh = asyncio.ensure_future(self._read_lives())
        refresh = self._live_refresh
        try:
            return await asyncio.shield(refresh)
        finally:
            if refresh.done() and self._live_refresh is refresh:
                self._live_refresh = None

    async def _fresher_lives(self, seen: dict[str, int],
                             unknown: set[tuple[str, int]]) -> dict[str, int]:
        """The live set again, when entries name lives the cache does not hold as
        live: a pod that joined (or rejoined) since the cache was read must not
        look offline for the rest of ``live_cache_ms``. Lives the last read saw
        dead (entries not reaped yet) do not ask again."""
        now = time.monotonic()
        if len(self._asked) > 1000 or any(now - t > self._live_cache_s
                                          for t in self._asked.values()):
            self._asked = {life: t for life, t in self._asked.items()
                           if now - t <= self._live_cache_s}
        # Once per unknown life per cache period: entries of a life that is not
        # even listed (a pod between a reap and its re-listing) must not make
        # every lookup read again.
        fresh = unknown - self._dead_lives - self._asked.keys()
        if not fresh:
            return seen
        self._asked.update(dict.fromkeys(fresh, now))
        self._live_until = 0.0
        return await self._live_lives()

    async def _lives(self) -> list[tuple[str, int]]:
        """Every listed pod life; a member that is not one is logged and removed
        (one bad member must not stop the reaper or the readers)."""
        with translated("presence lives"):
            raw = await self._r.smembers(self._k.lives)
            out = []
            for m in raw:
                life = _life(m)
                if life is None:
                    self._throttle.warn("life", "removing a corrupt member %r of %s", m,
                                        self._k.lives)
                    await self._r.srem(self._k.lives, m)
                else:
                    out.append(life)
        return out

    async def _read_lives(self) -> dict[str, int]:
        now = time.monotonic()
        lives = await self._lives()
        with translated("presence lives"):
            async with self._r.pipeline(transaction=False) as pipe:
                for pod, _ in lives:
                    pipe.get(self._k.pod_lease(pod))
                leases = await pipe.execute()
        live: dict[str, int] = {}
        dead: set[tuple[str, int]] = set()
        for (pod, epoch), lease in zip(lives, leases, strict=True):
            if lease is not None and as_str(lease) == str(epoch):
                live[encode_id(pod)] = epoch
            else:
                dead.add((encode_id(pod), epoch))
        self._live, self._live_until = live, now + self._live_cache_s
        self._dead_lives = dead
        return live

    async def _quarantine(self, exc: Exception) -> None:
        if not isinstance(exc, CorruptRecord) or not exc.key.startswith(f"{self._k.prefix}:{{"):
            raise exc
        dest = self._k.quarantined(exc.key)
        with translated("quarantine"):
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.rename(exc.key, dest)
                pipe.pexpire(dest, _QUARANTINE_MS)
                await pipe.execute()
        log.error("quarantined a corrupt record: %s moved to %s (%s)", exc.key, dest,
                  exc.detail)

    async def _index(self, pod: PodId, epoch: int) -> AsyncIterator[tuple[str, str]]:
        with translated("presence index"):
            async for raw in self._r.sscan_iter(self._k.pod_index(pod, epoch),
                                                count=_SCAN_BATCH):
                user, conn = split_member(as_str(raw))
                yield user, conn


def _parse(value: bytes | str) -> tuple[str, int, int]:
    """``"<encoded pod> <epoch> <since>"`` -> (encoded pod, epoch, since); an entry
    that does not parse names no life (epoch -1), so no reader counts it."""
    try:
        pod, epoch, since = as_str(value).split(" ")
        return pod, int(epoch), int(since)
    except ValueError:
        return "", -1, 0


def _life(raw: bytes | str) -> tuple[str, int] | None:
    """A member of the lives set, ``(pod, epoch)``, or None when it is not one."""
    pod, epoch = split_member(as_str(raw))
    if not pod or not epoch.isdigit():
        return None
    return pod, int(epoch)
