"""The presence feed over Redis pub/sub (contract: ``wsnode.presence_cache.PresenceFeed``).

One channel per key prefix (``keys.RedisKeys.presence_feed``). A pod buffers
the users whose presence it just changed and publishes them together, once per
loop tick, as percent-encoded ids separated by spaces. Pub/sub keeps nothing for
a subscriber that is away: ``listen`` says so (``on_listening(False)``) and the
cache starts over when it hears again.

On a Redis Cluster, plain pub/sub is broadcast over the cluster bus: a message
published on any node reaches the subscribers of every node. A pod subscribes
on one node, another at each attempt (so a node that failed is left behind
when the loop starts again), and publishes through whichever node the client
picks.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from wsnode.errors import WsnodeError
from wsnode.ids import UserId
from wsnode.keys import RedisKeys, encode_id
from wsnode.outage import LogThrottle
from wsnode.redis_conn import Redis, is_cluster, translated

log = logging.getLogger("wsnode.presence")


class RedisPresenceFeed:
    def __init__(self, client: Redis, keys: RedisKeys) -> None:
        self._r = client
        self._channel = keys.presence_feed
        self._buffer: set[UserId] = set()
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._throttle = LogThrottle(log)
        self._attempts = random.randrange(1 << 16)  # which node a cluster listener tries

    def changed(self, user: UserId) -> None:
        self._buffer.add(user)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        users, self._buffer = self._buffer, set()
        if users:
            task = asyncio.get_running_loop().create_task(self._publish(users))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _publish(self, users: set[UserId]) -> None:
        try:
            with translated("presence feed"):
                await self._r.publish(self._channel, " ".join(encode_id(u) for u in users))
        except WsnodeError as exc:
            # Others' caches keep a stale entry until it expires: the pass-on path
            # covers a user who left; a new device waits at most that long.
            self._throttle.warn("publish", "presence change not announced: %s", exc)

    async def listen(self, on_changed: Callable[[list[UserId]], None],
                     on_listening: Callable[[bool], None]) -> None:
        with translated("presence feed"):
            pubsub = await self._pubsub()
        try:
            with translated("presence feed"):
                await pubsub.subscribe(self._channel)
                on_listening(True)
                async for message in pubsub.listen():
                    data = message.get("data")
                    if isinstance(data, bytes | str):
                        text = data.decode() if isinstance(data, bytes) else data
                        on_changed([UserId(unquote(u)) for u in text.split(" ") if u])
        finally:
            on_listening(False)
            try:
                await pubsub.aclose()
            except Exception as exc:  # closing a broken connection: nothing to keep
                log.debug("closing the presence feed: %r", exc)

    async def _pubsub(self) -> Any:
        client = self._r
        if not is_cluster(client):
            return client.pubsub(ignore_subscribe_messages=True)
        await client.initialize()
        nodes = sorted(client.get_nodes(), key=lambda n: n.name)
        self._attempts += 1
        return client.pubsub(node=nodes[self._attempts % len(nodes)],
                             ignore_subscribe_messages=True)
