"""``wsctl doctor``: is the cluster healthy? Each check is OK, WARN or FAIL with a hint.

Checks, in cluster mode (``WSNODE_REDIS_URL`` and ``WSNODE_AMQP_URL``):

* Redis and RabbitMQ answer, and how fast;
* ``pods``: every pod with a live lease and its state (``active``,
  ``draining``, or ``unreachable`` when its admin port does not answer);
* every such pod answers its admin ``/readyz`` (the URL it advertises in
  presence): a crashed pod whose lease has not run out yet (unreachable), a
  pod that lost a backend, a deaf pod (up, but its canary does not come back)
  FAIL;
* every live pod's queue has exactly one consumer and no backlog (passive
  declares, no management plugin needed), nothing sits in the poison queue;
* no presence is left behind by pods whose lease expired (a reaper is missing).

One probe per pod (:mod:`wsnode.podprobe`) decides every line about that pod,
so the lines agree: ``pods`` is not OK beside an unreachable pod, and a
queue without a consumer is called deaf only when its pod is up.
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

from wsnode import podprobe
from wsnode.podprobe import Answer
from wsnode.presence import PodState
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


def pod_check(name: str, admin: str | None, answer: Answer | None) -> Check:
    """One pod's line, from what its admin ``/readyz`` answered (``None``: it
    advertises no URL to ask)."""
    if answer is None:
        return Check(f"pod {name}", Status.WARN, "advertises no usable admin URL",
                     "set WSNODE_ADMIN_ADVERTISE on the pod")
    if not answer.reachable:
        return Check(f"pod {name}", Status.FAIL,
                     f"unreachable: its lease is live but {admin} does not answer "
                     f"({answer.error})", "crashed or cut off: its presence goes when the "
                     "lease expires; check the pod's process and network")
    body = answer.body or {}
    failing = answer.failing
    if body.get("ready"):
        return Check(f"pod {name}", Status.OK, f"ready ({body.get('state')})")
    if failing == ["accepting"]:
        return Check(f"pod {name}", Status.WARN, f"not accepting ({body.get('state')})",
                     "draining or stopping: new clients go to other pods")
    if "bus" in failing:
        return Check(f"pod {name}", Status.FAIL, "deaf: up, but its bus consumer does not "
                     "hear its own canary", "messages routed to it are not delivered; "
                     "restart it or check RabbitMQ")
    return Check(f"pod {name}", Status.FAIL, f"not ready: {', '.join(failing)} failing",
                 "see the pod's log")


def census(pods: list[tuple[str, str]]) -> Check:
    """The ``pods`` line from ``(pod, state)`` pairs: FAIL when one is unreachable,
    so it never reads OK beside a pod that FAILs for not answering."""
    if not pods:
        return Check("pods", Status.WARN, "no live pod", "start one: wsnode serve")
    listed = ", ".join(f"{pod} ({state})" for pod, state in pods)
    lost = [pod for pod, state in pods if state == PodState.UNREACHABLE]
    if lost:
        return Check("pods", Status.FAIL, f"{len(pods)} with a live lease, {len(lost)} "
                     f"unreachable: {listed}", "see the lines of the unreachable pods")
    return Check("pods", Status.OK, f"{len(pods)} live: {listed}")


async def cluster_checks(settings: NodeSettings) -> list[Check]:
    from wsnode.backends import build_backends
    from wsnode.keys import AmqpNames
    from wsnode.metrics import Metrics

    assert settings.redis_url is not None
    checks: list[Check] = []
    backends = build_backends(settings, Metrics(), tool=True)
    try:
        try:
            await asyncio.wait_for(backends.acks.stats(), 3)
            # Timed the second time: the first connects (and, on a Redis Cluster,
            # learns the slot map from every node).
            started = time.perf_counter()
            await asyncio.wait_for(backends.acks.stats(), 3)
        except Exception as exc:
            return [Check("redis", Status.FAIL, f"unreachable: {exc}",
                          "check WSNODE_REDIS_URL and that Redis runs")]
        ms = (time.perf_counter() - started) * 1000
        checks.append(Check("redis", Status.OK if ms < SLOW_MS else Status.WARN,
                            f"answers in {ms:.1f} ms"))
        # One probe per pod decides every line about it, so the lines agree.
        pods = await backends.presence.pods()
        answers = await podprobe.ask(pods)
        pods = podprobe.with_states(pods, answers)
        checks.append(census([(p.pod, p.state.value) for p in pods]))
        checks += [pod_check(p.pod, p.admin, answers.get(p.pod)) for p in pods]
        checks += _leftovers(await backends.presence.stale())
        checks += _ack_checks(await backends.acks.stats(), settings.ack_ttl)
    finally:
        await backends.close()
    if settings.amqp_url is None:
        checks.append(Check("rabbitmq", Status.WARN, "WSNODE_AMQP_URL is not set",
                            "without a bus pods only reach their own connections"))
    else:
        checks += await _bus_checks(settings.amqp_url, AmqpNames(settings.key_prefix),
                                    {p.pod: p.state for p in pods})
    return checks


def _leftovers(stale: list[tuple[Any, int]]) -> list[Check]:
    """Lives whose lease is gone but whose connections are still indexed."""
    if not stale:
        return [Check("presence", Status.OK, "nothing left behind by dead pods")]
    left_by = ", ".join(f"{pod} ({left} connection(s))" for pod, left in stale)
    # Named "presence", not "pod X": X may live again under the same id (a new life).
    return [Check("presence", Status.FAIL, "left behind by pods whose lease expired: "
                  + left_by, "live pods purge it within a heartbeat; if this stays, no "
                  "live pod is reaping (are all pods down?)")]


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


async def _bus_checks(url: str, names: Any, pods: dict[str, PodState]) -> list[Check]:
    """Every broker URL of ``WSNODE_AMQP_URL`` (the nodes of one cluster) is
    connected to; the queues are inspected through the first that answers."""
    from wsnode.urls import split_amqp_urls

    urls = split_amqp_urls(url)
    answers = await asyncio.gather(*(_connect(u) for u in urls))
    try:
        checks = [_broker_check(urls, answers)]
        connection = next((a.connection for a in answers if a.connection is not None), None)
        if connection is None:
            return checks
        for pod, state in pods.items():
            checks.append(await _queue_check(connection, names.pod_queue(pod), f"queue {pod}",
                                             want_consumers=True,
                                             pod_answers=state != PodState.UNREACHABLE))
        checks.append(await _queue_check(connection, names.poison_queue, "poison queue",
                                         want_consumers=False))
        return checks
    finally:
        for answer in answers:
            if answer.connection is not None:
                with contextlib.suppress(Exception):
                    await answer.connection.close()


@dataclass(slots=True)
class _Broker:
    connection: Any
    ms: float = 0.0
    error: str = ""


async def _connect(url: str) -> _Broker:
    import aio_pika

    started = time.perf_counter()
    try:
        connection = await aio_pika.connect(url, timeout=3)
    except Exception as exc:
        return _Broker(None, error=type(exc).__name__)
    return _Broker(connection, (time.perf_counter() - started) * 1000)


def _broker_check(urls: list[str], answers: list[_Broker]) -> Check:
    from wsnode.urls import redact

    hint = "check WSNODE_AMQP_URL and that RabbitMQ runs"
    down = [f"{redact(u)} ({a.error})" for u, a in zip(urls, answers, strict=True)
            if a.connection is None]
    slowest = max((a.ms for a in answers if a.connection is not None), default=0.0)
    status = Status.OK if slowest < 10 * SLOW_MS else Status.WARN
    if len(urls) == 1:
        if down:
            return Check("rabbitmq", Status.FAIL, f"unreachable at {redact(urls[0])}: "
                         f"{answers[0].error}", hint)
        return Check("rabbitmq", status, f"connects in {slowest:.0f} ms")
    if len(down) == len(urls):
        return Check("rabbitmq", Status.FAIL, f"no node answers: {', '.join(down)}", hint)
    if down:
        return Check("rabbitmq", Status.WARN, f"{len(urls) - len(down)} of {len(urls)} nodes "
                     f"connect; unreachable: {', '.join(down)}", "the pods fail over to the "
                     "nodes that answer; bring it back, or take its URL out of WSNODE_AMQP_URL")
    return Check("rabbitmq", status, f"{len(urls)} nodes connect, in {slowest:.0f} ms at most")


async def _queue_check(connection: Any, queue: str, name: str, *,
                       want_consumers: bool, pod_answers: bool = True) -> Check:
    """A queue's consumers and backlog. ``pod_answers``: whether its pod answered
    the probe; a queue without consumer is a deaf pod only when the pod is up."""
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
    if consumers == 0 and not pod_answers:
        return Check(name, Status.FAIL, f"no consumer ({messages} waiting): its pod does "
                     "not answer either", "a crashed pod: its queue expires and its messages "
                     "are re-routed by the live pods; restart it to get its clients back")
    if consumers == 0:
        return Check(name, Status.FAIL, f"no consumer ({messages} waiting): the pod is up "
                     "but deaf", "restart the pod; its messages are re-routed once they expire")
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
        checks.append(pod_check(url, url, await podprobe.ask_admin(session, url)))
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
            checks.append(census([(str(p.get("pod")), str(p.get("state"))) for p in pods]))
    return checks
