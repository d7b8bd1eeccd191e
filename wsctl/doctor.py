"""``wsctl doctor``: is the cluster healthy? Each check is OK, WARN or FAIL with a hint.

Checks, in cluster mode (``WSNODE_REDIS_URL`` and ``WSNODE_AMQP_URL``):

* Redis and RabbitMQ answer, and how fast;
* every pod with a live lease answers its admin ``/readyz`` (the URL it
  advertises in presence): a crashed pod whose lease has not run out yet, a
  pod that lost a backend, a deaf pod (its canary does not come back) FAIL;
* every live pod's queue has exactly one consumer and no backlog (passive
  declares, no management plugin needed), nothing sits in the poison queue;
* no presence is left behind by pods whose lease expired (a reaper is missing);
* the ACK store: pending messages and the oldest of them; the dead-letter store.

With ``--node URL`` only that pod's view is checked (its readiness and its pod
list). The verdict is FAIL if any check failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import aiohttp

from wsnode.settings import NodeSettings

BACKLOG_WARN = 1000
SLOW_MS = 50.0


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str
    hint: str = ""

    def to_json(self) -> dict[str, str]:
        return {**asdict(self), "status": self.status.value}


def verdict(checks: list[Check]) -> Status:
    if any(c.status is Status.FAIL for c in checks):
        return Status.FAIL
    return Status.WARN if any(c.status is Status.WARN for c in checks) else Status.OK


async def readyz(session: aiohttp.ClientSession, name: str, admin: str | None) -> Check:
    """One pod's /readyz, as a check."""
    if not admin or not admin.startswith(("http://", "https://")):
        return Check(f"pod {name}", Status.WARN, "advertises no usable admin URL",
                     "set WSNODE_ADMIN_ADVERTISE on the pod")
    try:
        # Only the pod's own answer: the URL comes from Redis, redirects are not ours.
        async with session.get(f"{admin}/readyz", allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=3)) as resp:
            body = await resp.json(content_type=None)
        if not isinstance(body, dict) or resp.status not in (200, 503):
            raise ValueError(f"unexpected answer (HTTP {resp.status})")
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Check(f"pod {name}", Status.FAIL,
                     f"its lease is live but {admin} does not answer ({type(exc).__name__})",
                     "crashed or cut off: its presence goes when the lease expires; "
                     "check the pod's process and network")
    failing = [k for k, ok in (body.get("checks") or {}).items() if not ok]
    if body.get("ready"):
        return Check(f"pod {name}", Status.OK, f"ready ({body.get('state')})")
    if failing == ["accepting"]:
        return Check(f"pod {name}", Status.WARN, f"not accepting ({body.get('state')})",
                     "draining or stopping: new clients go to other pods")
    if "bus" in failing:
        return Check(f"pod {name}", Status.FAIL, "deaf: its bus consumer does not hear "
                     "its own canary", "messages routed to it are not delivered; restart "
                     "it or check RabbitMQ")
    return Check(f"pod {name}", Status.FAIL, f"not ready: {', '.join(failing)} failing",
                 "see the pod's log")


async def cluster_checks(settings: NodeSettings) -> list[Check]:
    from wsnode.backends import build_backends
    from wsnode.keys import AmqpNames
    from wsnode.metrics import Metrics

    assert settings.redis_url is not None
    checks: list[Check] = []
    backends = build_backends(settings, Metrics(), tool=True)
    try:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(backends.acks.stats(), 3)
        except Exception as exc:
            return [Check("redis", Status.FAIL, f"unreachable: {exc}",
                          "check WSNODE_REDIS_URL and that Redis runs")]
        ms = (time.perf_counter() - started) * 1000
        checks.append(Check("redis", Status.OK if ms < SLOW_MS else Status.WARN,
                            f"answers in {ms:.1f} ms"))
        pods = await backends.presence.pods()
        checks.append(Check("pods", Status.OK if pods else Status.WARN,
                            f"{len(pods)} live: " + ", ".join(p.pod for p in pods) if pods
                            else "no live pod", "" if pods else "start one: wsnode serve"))
        async with aiohttp.ClientSession() as session:
            checks += await asyncio.gather(*(readyz(session, p.pod, p.admin) for p in pods))
        checks += _leftovers(await backends.presence.stale())
        checks += _ack_checks(await backends.acks.stats(), settings.ack_ttl)
    finally:
        await backends.close()
    if settings.amqp_url is None:
        checks.append(Check("rabbitmq", Status.WARN, "WSNODE_AMQP_URL is not set",
                            "without a bus pods only reach their own connections"))
    else:
        checks += await _bus_checks(settings.amqp_url, AmqpNames(settings.key_prefix),
                                    [p.pod for p in pods])
    return checks


def _leftovers(stale: list[tuple[Any, int]]) -> list[Check]:
    """Lives whose lease is gone but whose connections are still indexed."""
    out = [Check(f"pod {pod}", Status.FAIL,
                 f"dead (lease expired) with {left} connection(s) still in presence",
                 "live pods purge it within a heartbeat; if this stays, no live pod is "
                 "reaping (are all pods down?)") for pod, left in stale]
    return out or [Check("presence", Status.OK, "nothing left behind by dead pods")]


def _ack_checks(stats: Any, ack_ttl: float) -> list[Check]:
    detail = f"{stats.pending} pending"
    if stats.first_expiry is not None:
        # The oldest pending message expires first (expiresAt aside): its age.
        age = max(0.0, time.time() - (stats.first_expiry / 1000 - ack_ttl))
        detail += f", oldest {age:.0f}s old"
    out = [Check("ack store", Status.OK, detail)]
    if stats.dead:
        out.append(Check("dead letters", Status.WARN, f"{stats.dead} in the dead-letter store",
                         "inspect: wsctl dlq ls; send again: wsctl dlq retry ID"))
    else:
        out.append(Check("dead letters", Status.OK, "none"))
    return out


async def _bus_checks(url: str, names: Any, pods: list[str]) -> list[Check]:
    import aio_pika

    from wsnode.urls import redact

    started = time.perf_counter()
    try:
        connection = await aio_pika.connect(url, timeout=3)
    except Exception as exc:
        return [Check("rabbitmq", Status.FAIL, f"unreachable at {redact(url)}: "
                      f"{type(exc).__name__}", "check WSNODE_AMQP_URL and that RabbitMQ runs")]
    ms = (time.perf_counter() - started) * 1000
    checks = [Check("rabbitmq", Status.OK if ms < 10 * SLOW_MS else Status.WARN,
                    f"connects in {ms:.0f} ms")]
    async with connection:
        for pod in pods:
            checks.append(await _queue_check(connection, names.pod_queue(pod), f"queue {pod}",
                                             want_consumers=True))
        checks.append(await _queue_check(connection, names.poison_queue, "poison queue",
                                         want_consumers=False))
    return checks


async def _queue_check(connection: Any, queue: str, name: str, *,
                       want_consumers: bool) -> Check:
    import aio_pika
    from aiormq.exceptions import ChannelLockedResource

    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        if want_consumers:
            return Check(name, Status.FAIL, "queue missing",
                         "the pod's bus has not declared it: is it connected to RabbitMQ?")
        return Check(name, Status.OK, "empty")
    except ChannelLockedResource:
        return Check(name, Status.FAIL, "held exclusively by another connection: the pod "
                     "cannot consume it", "find and close that connection (RabbitMQ UI)")
    except aio_pika.exceptions.AMQPError as exc:
        return Check(name, Status.FAIL, f"cannot be inspected: {type(exc).__name__}",
                     "see RabbitMQ's log")
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    result = declared.declaration_result
    messages, consumers = result.message_count or 0, result.consumer_count or 0
    if not want_consumers:
        if messages:
            return Check(name, Status.WARN, f"{messages} undecodable message(s) parked",
                         f"read them from {queue} with the RabbitMQ tools")
        return Check(name, Status.OK, "empty")
    if consumers == 0:
        return Check(name, Status.FAIL, f"no consumer ({messages} waiting): the pod is deaf",
                     "restart the pod; its messages are re-routed once they expire")
    if consumers > 1:
        return Check(name, Status.WARN, f"{consumers} consumers (one expected)",
                     "two pods run with the same pod id?")
    if messages > BACKLOG_WARN:
        return Check(name, Status.WARN, f"backlog of {messages} messages",
                     "the pod cannot keep up: add pods or look at its CPU")
    return Check(name, Status.OK, f"1 consumer, {messages} waiting")


async def node_checks(url: str, api_key: str | None) -> list[Check]:
    """The view of one pod (``--node``): its readiness and the pods it sees."""
    checks = []
    async with aiohttp.ClientSession() as session:
        checks.append(await readyz(session, url, url))
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            async with session.get(f"{url}/v1/pods", headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=3)) as resp:
                pods = (await resp.json(content_type=None)).get("pods", []) \
                    if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            pods = None
        if pods is None:
            checks.append(Check("pods", Status.WARN, "the pod list is not readable",
                                "set WSNODE_API_KEY to the pod's key"))
        else:
            checks.append(Check("pods", Status.OK, f"{len(pods)} live: "
                                + ", ".join(p["pod"] for p in pods)))
    return checks
