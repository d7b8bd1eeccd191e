"""When an ACK-store write counts: after a replica confirmed it (``WAIT``).

Redis replicates asynchronously. A master that dies (or is failed over by
Sentinel) after answering a write but before a replica copied it loses that
write when the replica takes over, whatever its own ``appendfsync``. So the
ACK store follows its writes with ``WAIT replicas timeout`` on the same
connection (``wsnode.coalescer``), and :class:`ReplicaWait` judges the answer
per node:

* confirmed (``WAIT`` answered ``replicas`` or more): the write counts;
* short, on a node that confirmed writes within the last ``grace`` seconds:
  refused (``NOREPLICAS``; the caller sees ``BackendUnavailable`` and the
  sender does not hear "stored"). A replica was there a moment ago: it may be
  taking over right now (a Sentinel failover promotes the replica while the old
  master still takes writes; a partitioned master keeps taking them until its
  replica is promoted), and a write it lacks would be lost;
* short, on a node that has fewer than ``replicas`` replicas online (asked with
  ``INFO replication``): kept, with a warning once per outage. Its replica is
  gone, or it never had one (a replica just promoted in place of a dead
  master): none could take over without the write; if the master dies, its
  shard is down until it restarts from its own AOF. While it stays so (asked
  again every few seconds) its ``WAIT`` uses a 1 ms timeout, which costs no
  latency;
* short, on a node whose replicas are online but slow: refused.

``grace`` should exceed the failover's detection time (Sentinel's
``down-after-milliseconds``, a cluster's ``cluster-node-timeout``). On the
servers, ``min-replicas-to-write 1`` with ``min-replicas-max-lag`` bounds the
partition case from the other side (the isolated master stops taking writes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import ResponseError

from wsnode.outage import LogThrottle

log = logging.getLogger("wsnode.acks")

GRACE_S = 30.0
PROBE_MS = 1
RECHECK_S = 5.0  # how long "fewer replicas online than wanted" is believed


class ReplicaWait:
    """The ``WAIT`` to send to each node and the verdict on its answer (see the module)."""

    def __init__(self, replicas: int, wait_ms: int = 1000, grace_s: float = GRACE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.replicas = replicas
        self.wait_ms = wait_ms
        self.grace_s = grace_s
        self._clock = clock
        self._confirmed_at: dict[str, float] = {}
        self._alone_until: dict[str, float] = {}  # node -> short of replicas until
        self._throttle = LogThrottle(log)

    def _recent(self, node: str) -> bool:
        at = self._confirmed_at.get(node)
        return at is not None and self._clock() - at < self.grace_s

    def _alone(self, node: str) -> bool:
        return self._clock() < self._alone_until.get(node, float("-inf"))

    def timeout_ms(self, node: str) -> int:
        """The ``WAIT`` timeout for ``node``: a 1 ms probe while it is known to
        have too few replicas online, the full one otherwise."""
        return PROBE_MS if self._alone(node) else self.wait_ms

    async def verdict(self, node: str, reply: object,
                      online: Callable[[], Awaitable[int]]) -> Exception | None:
        """None when the writes before this ``WAIT`` count; else the error for
        them. ``online()`` asks the node how many replicas it has online."""
        if isinstance(reply, Exception):
            return reply
        confirmed = int(reply)  # type: ignore[call-overload]
        where = f" on {node}" if node else ""
        if confirmed >= self.replicas:
            self._confirmed_at[node] = self._clock()
            self._alone_until.pop(node, None)
            return None
        if self._recent(node):
            return self._refuse(confirmed, where, "a failover may be under way")
        if not self._alone(node):
            try:
                have = await online()
            except Exception as exc:  # cannot tell: the write does not count
                return self._refuse(confirmed, where, f"replicas unknown: {exc}")
            if have >= self.replicas:
                return self._refuse(confirmed, where, f"{have} replica(s) online, slow")
            self._alone_until[node] = self._clock() + RECHECK_S
        self._throttle.warn(
            f"alone{node}", "ACK-store writes%s are not confirmed by a replica (fewer than "
            "%d online): kept, but only this master's AOF holds them", where, self.replicas)
        return None

    def _refuse(self, confirmed: int, where: str, why: str) -> Exception:
        return ResponseError(
            f"NOREPLICAS {confirmed} of {self.replicas} replica(s) confirmed the write within "
            f"{self.wait_ms} ms{where} ({why})")
