"""A pod's cache of where users are, so a steady conversation costs no Redis read.

Every message to a user needs the pods that hold the user (``pods_of``). In a
conversation the answer rarely changes, so the sender keeps it, and drops it the
moment it may have changed:

* every pod announces, on a presence feed (Redis pub/sub, ``PresenceFeed``),
  the users that got their first connection on it or lost their last one, right
  after writing that to presence; every pod drops those users' entries;
* an answer read before an announcement for its user arrived is not kept (the
  read and the announcement crossed);
* while the feed is not listening (starting, reconnecting, failed) nothing is
  cached and every read goes to Redis; a feed that (re)connects clears the cache
  (announcements may have been missed);
* entries also expire after ``ttl_s``: a lost announcement costs that long at
  most, and a dead pod's entries drop out with its lease as they always did;
* concurrent misses for one user share one read (a burst of messages to a user
  whose entry is missing, a room's senders all writing to one member, costs
  one Redis read, not one per message).

What a stale entry can cost is what a sender's race with a connect always could:
a message sent to a pod the user just left is passed on from there to wherever
the user is now (``wsnode.inbound``); a pod the user just joined gets messages
from the moment its announcement is heard, within a round trip of its presence
write.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

from wsnode.ids import PodId, UserId
from wsnode.presence import ConnInfo, PodInfo, PresenceReader, UserPresence


class PresenceFeed(Protocol):
    """Announcements of users whose set of pods changed."""

    def changed(self, user: UserId) -> None:
        """Announce ``user`` (buffered; sent within a loop tick). Never raises."""
        ...

    async def listen(self, on_changed: Callable[[list[UserId]], None],
                     on_listening: Callable[[bool], None]) -> None:
        """Deliver announcements to ``on_changed`` until cancelled; call
        ``on_listening(True)`` once subscribed and ``(False)`` when it stops
        hearing. Raises BackendUnavailable when the store is lost (the caller
        retries)."""
        ...


class CachedPresence:
    """A :class:`PresenceReader` whose ``pods_of`` is cached (see the module)."""

    def __init__(self, reader: PresenceReader, *, ttl_s: float = 10.0,
                 max_users: int = 200_000,
                 clock: Callable[[], float] = time.monotonic,
                 counted: Callable[[int, int], None] = lambda hits, misses: None) -> None:
        self._counted = counted  # (hits, misses) of each lookup
        self._reader = reader
        self.ttl_s = ttl_s
        self._max = max_users
        self._clock = clock
        self._entries: OrderedDict[UserId, tuple[frozenset[PodId], float]] = OrderedDict()
        self._changed_at: dict[UserId, float] = {}
        self._listening = False
        self._reading: dict[UserId, asyncio.Future[frozenset[PodId]]] = {}

    # -- the feed's side ------------------------------------------------------

    def listening(self, on: bool) -> None:
        """The feed (re)started or stopped hearing: start over either way."""
        self._listening = on
        self._entries.clear()
        self._changed_at.clear()

    def changed(self, users: list[UserId]) -> None:
        now = self._clock()
        for user in users:
            self._entries.pop(user, None)
            self._changed_at[user] = now
        if len(self._changed_at) > self._max:
            horizon = now - self.ttl_s
            self._changed_at = {u: t for u, t in self._changed_at.items() if t > horizon}

    # -- PresenceReader ---------------------------------------------------------

    async def pods_of(self, users: Sequence[UserId]) -> dict[UserId, set[PodId]]:
        if not self._listening:
            self._counted(0, len(users))
            return await self._reader.pods_of(users)
        now = self._clock()
        out: dict[UserId, set[PodId]] = {}
        missing: list[UserId] = []
        for user in users:
            entry = self._entries.get(user)
            if entry is not None and now - entry[1] < self.ttl_s:
                if entry[0]:
                    out[user] = set(entry[0])
            else:
                missing.append(user)
        self._counted(len(users) - len(missing), len(missing))
        if not missing:
            return out
        waiting = [(u, f) for u in missing if (f := self._reading.get(u)) is not None]
        mine = [u for u in missing if u not in self._reading]
        if mine:
            await self._read(mine, out)
        for user, future in waiting:
            try:
                pods = await asyncio.shield(future)  # raises what the shared read raised
            except asyncio.CancelledError:
                if not future.cancelled():
                    raise  # this lookup was cancelled
                # The lookup that was reading was cancelled, not this one: read.
                pods = frozenset((await self._reader.pods_of([user])).get(user) or ())
            if pods:
                out[user] = set(pods)
        return out

    async def _read(self, users: list[UserId], out: dict[UserId, set[PodId]]) -> None:
        """Read ``users`` from the store into ``out`` (and the cache), sharing the
        read with the lookups that miss the same users meanwhile."""
        loop = asyncio.get_running_loop()
        futures = {u: loop.create_future() for u in users}
        self._reading.update(futures)
        started = self._clock()
        try:
            read = await self._reader.pods_of(users)
        except Exception as exc:
            for future in futures.values():
                future.set_exception(exc)
                future.exception()  # retrieved, whether anyone waits or not
            raise
        except BaseException:
            for future in futures.values():
                future.cancel()  # its waiters read for themselves
            raise
        finally:
            for user, future in futures.items():
                if self._reading.get(user) is future:
                    del self._reading[user]
        for user in users:
            pods = frozenset(read.get(user) or ())
            futures[user].set_result(pods)
            if pods:
                out[user] = set(pods)
            if self._listening and self._changed_at.get(user, -1.0) < started:
                self._keep(user, pods, started)

    async def connections(self, user: UserId) -> list[ConnInfo]:
        return await self._reader.connections(user)

    async def users(self, pod: PodId | None = None) -> list[UserPresence]:
        return await self._reader.users(pod)

    async def pods(self) -> list[PodInfo]:
        return await self._reader.pods()

    async def live_pods(self) -> list[PodId]:
        return await self._reader.live_pods()

    def _keep(self, user: UserId, pods: frozenset[PodId], at: float) -> None:
        self._entries[user] = (pods, at)
        self._entries.move_to_end(user)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
