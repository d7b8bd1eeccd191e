"""The Coalescer: Redis commands issued in one event-loop tick go out as one pipeline.

This is what lets one process do tens of thousands of Redis calls per second:
under load, hundreds of concurrent per-message calls (a presence lookup, a
limiter hit, an ACK store) become one round trip and one socket write instead
of one each. Idle, a lone command waits for one loop iteration at most.

Contract: each ``await run(queue)`` gets the reply of the one command its
``queue(pipe)`` adds to the shared pipeline, or raises that command's error
(a redis-py exception: callers translate it with ``redis_conn.translated``).
A pipeline that fails as a whole (connection lost) fails every caller in it.

At most ``max_in_flight`` pipelines run at once; what arrives meanwhile waits
and goes out in the next (larger) pipeline: a group commit, so pipelines grow
with load instead of staying at the few commands of one tick (each pipeline
costs the client ~150 µs of CPU whatever it holds). On a Redis Cluster the pipeline is
redis-py's cluster pipeline: it splits the commands by node (each node gets
its commands in order, in one round trip) and never wraps them in MULTI, so no
command ever spans two slots.

Durable writes: a call made with ``durable`` keys (the ACK store's) is
followed, in the same pipeline and so on the same connection, by ``WAIT`` on
the node of each of those keys; when ``wsnode.redis_wait`` judges a node's
answer short, that call fails with a ``NOREPLICAS`` error (the caller sees
``BackendUnavailable`` and the message is not reported stored). Replication is
asynchronous: without this, a write acknowledged by a master that dies before
its replica copied it would be lost when the replica takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, SlotNotCoveredError

from wsnode.redis_conn import Redis, is_cluster, queue_script
from wsnode.redis_lean import run_queued
from wsnode.redis_sentinel import sentinel_pool
from wsnode.redis_wait import ReplicaWait


@dataclass(slots=True)
class _Queued:
    queue: Callable[[Any], Any]
    count: int  # commands it adds (0: one, its reply unwrapped)
    future: asyncio.Future[Any]
    durable: Sequence[str] = field(default_factory=tuple)
    nodes: list[str] = field(default_factory=list)  # where its durable keys went


class Coalescer:
    """One shared pipeline per loop tick (see the module contract). ``replicas``:
    how many replicas must confirm durable writes (0: no WAIT)."""

    def __init__(self, client: Redis, *, max_batch: int = 512, max_in_flight: int = 8,
                 replicas: int = 0) -> None:
        self._client = client
        self._max = max_batch
        self._cap = max_in_flight
        self._wait = ReplicaWait(replicas) if replicas else None
        self._pending: list[_Queued] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.pipelines = 0
        """Pipelines sent so far (the figure the group commit keeps low)."""

    async def run(self, queue: Callable[[Any], Any], *, durable: Sequence[str] = ()) -> Any:
        """``queue(pipe)`` adds one command to ``pipe``; returns that command's
        reply, or raises its error. ``durable``: the keys it writes that must
        reach a replica before it counts (see the module)."""
        return await self._add(queue, 0, durable)

    async def run_group(self, queue: Callable[[Any], Any], count: int, *,
                        durable: Sequence[str] = ()) -> list[Any]:
        """``queue(pipe)`` adds ``count`` commands, which go out together and in
        this order in one pipeline; returns their replies, errors included as
        exception objects (not raised)."""
        return list(await self._add(queue, count, durable))

    def _add(self, queue: Callable[[Any], Any], count: int,
             durable: Sequence[str]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Queued(queue, count, future, durable if self._wait else ()))
        if len(self._pending) >= self._max and len(self._tasks) < self._cap:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    async def script(self, script: AsyncScript, keys: Sequence[Any],
                     args: Sequence[Any], *, durable: bool = False) -> Any:
        """One script call, coalesced. After a NOSCRIPT (Redis restarted, or a
        replica took over) the script is loaded (on every master of a cluster)
        and called again. Scripts run through here must be safe to run twice
        (ours carry a request token). ``durable``: its first key is written
        durably (see the module)."""
        def queue(pipe: Any) -> None:
            queue_script(pipe, script, keys, args)

        durable_keys = [keys[0]] if durable and keys else []
        try:
            return await self.run(queue, durable=durable_keys)
        except NoScriptError:
            await self._client.script_load(script.script)
            return await self.run(queue, durable=durable_keys)

    def _flush(self) -> None:
        self._scheduled = False
        loop = asyncio.get_running_loop()
        while self._pending and len(self._tasks) < self._cap:
            batch, self._pending = self._pending[:self._max], self._pending[self._max:]
            self.pipelines += 1
            task = loop.create_task(self._execute(batch))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _execute(self, batch: list[_Queued]) -> None:
        try:
            client = self._client
            if isinstance(client, RedisCluster):
                async with client.pipeline(transaction=False) as cpipe:
                    nodes = self._fill(cpipe, batch)
                    replies = await cpipe.execute(raise_on_error=False)
            else:
                # One server: redis-py's pipeline machinery costs more than the
                # commands (see wsnode.redis_lean); only its queueing is used.
                pipe = client.pipeline(transaction=False)
                nodes = self._fill(pipe, batch)
                replies = await run_queued(client, pipe)
        except BaseException as exc:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        unconfirmed = await self._unconfirmed(nodes, replies[len(replies) - len(nodes):])
        pool = sentinel_pool(self._client)
        if unconfirmed and pool is not None:
            with contextlib.suppress(Exception):  # best effort: the next write tries again
                await pool.recheck()
        at = 0
        for item in batch:
            if item.count:
                reply: Any = replies[at:at + item.count]
                at += item.count
            else:
                reply = replies[at]
                at += 1
            if item.future.done():
                continue
            failed = [unconfirmed[n] for n in item.nodes if n in unconfirmed]
            if failed:
                item.future.set_exception(failed[0])
            elif isinstance(reply, Exception):
                item.future.set_exception(reply)
            else:
                item.future.set_result(reply)

    def _fill(self, pipe: Any, batch: list[_Queued]) -> list[tuple[str, Any]]:
        """Queue ``batch``'s commands on ``pipe``, then its WAITs (see below)."""
        for item in batch:
            item.queue(pipe)
        return self._queue_waits(pipe, batch)

    def _queue_waits(self, pipe: Any, batch: list[_Queued]) -> list[tuple[str, Any]]:
        """Queue a WAIT on every node that durable writes of ``batch`` went to;
        their names and nodes (None: the one server), in the order of the WAITs."""
        durable = [item for item in batch if item.durable]
        if not durable or self._wait is None:
            return []
        wait, client = self._wait, self._client
        if not is_cluster(client):
            # One server: Sentinel's master (named by its address, so that a new
            # master is judged on its own), or a single Redis.
            pool = sentinel_pool(client)
            name = pool.master_name if pool is not None else ""
            pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms(name))
            for item in durable:
                item.nodes = [name]
            return [(name, None)]
        names: dict[str, Any] = {}
        for item in durable:
            for key in item.durable:
                # The slot map the cluster pipeline routes by (it was initialised
                # on entering the pipeline).
                node = client.get_node_from_key(key)
                if node is None:
                    raise SlotNotCoveredError(f"no node serves the slot of {key!r}")
                names.setdefault(node.name, node)
                item.nodes.append(node.name)
        for name, node in names.items():
            pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms(name),
                                 target_nodes=node)
        return list(names.items())

    async def _unconfirmed(self, nodes: list[tuple[str, Any]],
                           replies: Sequence[Any]) -> dict[str, Exception]:
        """Node name -> the error for the durable writes it did not confirm."""
        out: dict[str, Exception] = {}
        if self._wait is None:
            return out
        for (name, node), reply in zip(nodes, replies, strict=True):
            error = await self._wait.verdict(name, reply, partial(self._online, node))
            if error is not None:
                out[name] = error
        return out

    async def _online(self, node: Any) -> int:
        """How many replicas ``node`` (None: the one server) has online."""
        if node is None:
            info = await self._client.info("replication")
        else:
            info = await self._client.execute_command("INFO", "replication",
                                                      target_nodes=node)
        return sum(1 for key, value in info.items() if key.startswith("slave")
                   and isinstance(value, dict) and value.get("state") == "online")
