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
* short, on a node with no confirmation for ``grace`` seconds (its replica is
  gone, or it never had one: a replica just promoted in place of a dead
  master): accepted, with a warning once per outage. Such a master has no
  replica in sync that could take over without the write; if it dies, its
  shard is down until it restarts from its own AOF. Its ``WAIT`` then uses a
  1 ms timeout, a probe that costs no latency; the first full answer makes it
  a confirmed node again.

``grace`` should exceed the failover's detection time (Sentinel's
``down-after-milliseconds``, a cluster's ``cluster-node-timeout``). On the
servers, ``min-replicas-to-write 1`` with ``min-replicas-max-lag`` bounds the
partition case from the other side (the isolated master stops taking writes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.exceptions import ResponseError

from wsnode.outage import LogThrottle

log = logging.getLogger("wsnode.acks")

GRACE_S = 30.0
PROBE_MS = 1


class ReplicaWait:
    """The ``WAIT`` to send to each node and the verdict on its answer (see the module)."""

    def __init__(self, replicas: int, wait_ms: int = 1000, grace_s: float = GRACE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.replicas = replicas
        self.wait_ms = wait_ms
        self.grace_s = grace_s
        self._clock = clock
        self._confirmed_at: dict[str, float] = {}
        self._throttle = LogThrottle(log)

    def _recent(self, node: str) -> bool:
        at = self._confirmed_at.get(node)
        return at is not None and self._clock() - at < self.grace_s

    def timeout_ms(self, node: str) -> int:
        """The ``WAIT`` timeout for ``node``: the full one while it is a confirmed
        node, a 1 ms probe otherwise."""
        return self.wait_ms if self._recent(node) else PROBE_MS

    def verdict(self, node: str, reply: object) -> Exception | None:
        """None when the writes before this ``WAIT`` count; else the error for them."""
        if isinstance(reply, Exception):
            return reply
        confirmed = int(reply)  # type: ignore[call-overload]
        where = f" on {node}" if node else ""
        if confirmed >= self.replicas:
            self._confirmed_at[node] = self._clock()
            return None
        if self._recent(node):
            return ResponseError(
                f"NOREPLICAS {confirmed} of {self.replicas} replica(s) confirmed the write "
                f"within {self.wait_ms} ms{where} (a failover may be under way)")
        self._throttle.warn(
            f"unconfirmed{node}", "ACK-store writes%s are not confirmed by a replica (%d of "
            "%d answered; none confirmed them in the last %.0fs): kept, but a failover now "
            "could lose them", where, confirmed, self.replicas, self.grace_s)
        return None
