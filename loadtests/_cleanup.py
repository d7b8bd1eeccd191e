"""Leave no lasting state: when Locust quits, delete what this run left in Redis.

The pods keep an ACK-required message's record for ``WSNODE_ACK_TTL`` (a day:
it is the idempotency window of its id) and its trail for ``WSNODE_TRACE_TTL``
(a day), so every swarm run would leave thousands of keys behind. Every user
and message id of a run starts with ``lt-<RUN>-`` (``_wsuser.RUN``, one per
Locust process), so each process deletes, on quitting, after a short pause
for the pods' last writes:

* every key of its users (connections, rate-limit bucket, sequence, messages,
  pending and dead-letter sets: they share the hash tag ``{u:<user>}``);
* the trails of its messages;
* its users' entries in the cluster-wide ACK expiry and dead-letter indexes.

Nothing else is touched: another swarm running at the same time has another
``RUN``. Key names come from :class:`wsnode.keys.RedisKeys`. This needs
``WSNODE_REDIS_URL`` (and ``WSNODE_KEY_PREFIX`` if the pods use another prefix
than ``ws``) in the swarm's environment; without it the swarm logs one line
saying what stays. An embedded pod keeps everything in its own memory, which
goes with the process.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
from _wsuser import RUN
from locust import events
from locust.runners import MasterRunner

log = logging.getLogger("loadtests.cleanup")

SETTLE_SECONDS = 1.0  # pods flush trails every 20 ms and remove presence at close
_MARK = "lt-MARK-"


def _pattern(make: Callable[[str], str]) -> str:
    """The SCAN pattern of keys that ``make`` names for any id of this run:
    ``make``'s name for a marker id, cut at the marker, plus ``lt-<RUN>-*``."""
    name = make(_MARK)
    return name[:name.index(_MARK)] + f"lt-{RUN}-*"


def _scan(client: Any, pattern: str) -> Iterator[bytes]:
    yield from client.scan_iter(match=pattern, count=1000)


def _client(redis_url: str) -> Any:
    """A (synchronous: Locust runs on gevent) client of what ``WSNODE_REDIS_URL``
    names: one server, Sentinel's master or a Redis Cluster (wsnode.urls)."""
    import redis
    from redis.cluster import ClusterNode, RedisCluster
    from redis.sentinel import Sentinel

    from wsnode.urls import parse_redis_url

    target = parse_redis_url(redis_url)
    auth = {"username": target.username, "password": target.password}
    if target.kind == "cluster":
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],
                            socket_timeout=10, **auth)
    if target.kind == "sentinel":
        sentinels = Sentinel(list(target.nodes), sentinel_kwargs=auth, socket_timeout=10,
                             **auth)
        return sentinels.master_for(target.service, db=target.db)
    return redis.Redis.from_url(redis_url, socket_timeout=10)


def clean(redis_url: str, prefix: str) -> int:
    """Delete this run's keys and index entries; returns how many went."""
    from wsnode.keys import BUCKETS, RedisKeys

    keys = RedisKeys(prefix)
    client = _client(redis_url)
    removed = 0
    try:
        # Every key of a swarm user (its messages and their trails too), and the
        # users index of each of the run's message ids.
        # Trails live in the bucket of their id ({t:<n>}), user then id in the name.
        trails = f"{keys.prefix}:{{tr:*}}:trace:lt-{RUN}-*"
        trail_users = f"{keys.prefix}:{{tr:*}}:traceusers:lt-{RUN}-*"
        for pattern in (_pattern(keys.user_seq), trails, trail_users):
            batch: list[bytes] = []
            for key in _scan(client, pattern):
                batch.append(key)
                if len(batch) >= 500:
                    removed += int(client.unlink(*batch))
                    batch = []
            if batch:
                removed += int(client.unlink(*batch))
        mine = f"lt-{RUN}-*"  # index members are users, or "<user> <id>", users first
        for b in range(BUCKETS):
            for index in (keys.ack_expiry(b), keys.dlq(b), keys.ack_due(b)):
                members = [m for m, _ in client.zscan_iter(index, match=mine, count=1000)]
                if members:
                    removed += int(client.zrem(index, *members))
    finally:
        client.close()
    return removed


@events.quitting.add_listener
def _on_quitting(environment: Any, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        return  # the workers ran the users: each cleans its own run
    redis_url = os.environ.get("WSNODE_REDIS_URL")
    if not redis_url:
        log.info("swarm cleanup skipped (no WSNODE_REDIS_URL): against a cluster, the ACK "
                 "records and trails of ids lt-%s-* stay in Redis for a day", RUN)
        return
    gevent.sleep(SETTLE_SECONDS)
    started = time.monotonic()
    try:
        removed = clean(redis_url, os.environ.get("WSNODE_KEY_PREFIX") or "ws")
    except Exception as exc:  # a cleanup failure must not hide the run's results
        log.warning("swarm cleanup failed, keys of ids lt-%s-* stay: %s", RUN, exc)
        return
    log.info("swarm cleanup: %d Redis keys and index entries of ids lt-%s-* deleted in "
             "%.1fs", removed, RUN, time.monotonic() - started)
