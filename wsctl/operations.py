"""What each command does with a :class:`~wsctl.target.Target`, apart from
parsing and printing: the calls, the bounded ``--wait`` polls, and the verdict.

Every function returns an :class:`Outcome`: the document to print (what
``--json`` shows) and, when what was asked did not happen, the
:class:`~wsctl.errors.NotDone` to exit 3 with after printing it. Errors that
leave nothing to print are raised. Polls start every 50 ms and back off to
250 ms, and never run past their bound by more than one call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Generic, TypeVar

from wsctl import documents as doc
from wsctl.errors import NotDone, NotFound
from wsctl.target import Target
from wsnode.protocol import Envelope

D = TypeVar("D")

FIRST_INTERVAL = 0.05
MAX_INTERVAL = 0.25
SETTLED_STATES = frozenset({"acked", "dead"})
DRAIN_GRACE_SECONDS = 30.0  # on top of --over: how long drain --wait waits at most


@dataclass(frozen=True, slots=True)
class Outcome(Generic[D]):
    document: D
    problem: NotDone | None = None


def offline(report: doc.SendReport) -> bool:
    """Nobody got it and nothing keeps it: no connection reached, not stored."""
    return report["local"] == 0 and not report["pods"] and not report["stored"]


async def send(target: Target, user: str, envelope: Envelope,
               wait: float | None = None, *, trace: bool = False) -> Outcome[doc.SendReport]:
    """Send; with ``wait`` (ACK-required only), poll until acked, dead or timed out."""
    report = await target.send(user, envelope, trace=trace)
    if envelope.id is not None:
        report["id"] = envelope.id
    if offline(report):
        failed = report.get("failedPods") or []
        why = f"publishing to {', '.join(failed)} failed" if failed else "nothing delivered"
        return Outcome(report, NotDone(f"user {user} is offline: {why}"))
    if wait is None or envelope.id is None:
        return Outcome(report)
    status = await wait_settled(target, user, envelope.id, wait)
    report["state"] = status["state"]
    if status["state"] == "acked":
        return Outcome(report)
    if status["state"] == "dead":
        return Outcome(report, NotDone(f"message {envelope.id} to {user} was dead-lettered "
                                       "before an ACK", "see wsctl dlq ls --user " + user))
    return Outcome(report, NotDone(f"not acked within {wait:g}s",
                                   "it stays stored and is resent; wsctl send --wait "
                                   "again with the same --id to keep waiting"))


async def send_many(target: Target, users: list[str],
                    envelope: Envelope) -> Outcome[doc.ManySendReport]:
    """Send to several users; NotDone when any of them neither got it nor has it
    stored (offline for an at-most-once message, refused by a limit)."""
    report = await target.send_many(users, envelope)
    if envelope.id is not None:
        report["id"] = envelope.id
    kept = set(report.get("stored", [])) | set(report.get("duplicate", [])) \
        | set(report.get("settled", []))
    missed = [u for u in report["offline"] if u not in kept]
    if not missed:
        return Outcome(report)
    shown = ", ".join(missed[:5]) + (f" and {len(missed) - 5} more" if len(missed) > 5 else "")
    return Outcome(report, NotDone(f"{len(missed)} of {report['users']} users did not get "
                                   f"it: {shown}"))


async def broadcast(target: Target, envelope: Envelope) -> Outcome[doc.BroadcastReport]:
    report = await target.broadcast(envelope)
    if not report["local"] and not report["pods"]:
        failed = report["failedPods"]
        why = f"publishing to {', '.join(failed)} failed" if failed else "no live pod"
        return Outcome(report, NotDone(f"the broadcast reached no pod: {why}"))
    return Outcome(report)


async def publish(target: Target, topic: str,
                  envelope: Envelope) -> Outcome[doc.PublishReport]:
    report = await target.publish(topic, envelope)
    if not report["subscribers"]:
        return Outcome(report, NotDone(f"nobody is subscribed to {topic}: nobody got it"))
    return Outcome(report)


async def topic(target: Target, name: str) -> Outcome[doc.TopicDetail]:
    document = await target.topic(name)
    if not document["connections"]:
        return Outcome(document, NotDone(f"nobody is subscribed to {name}"))
    return Outcome(document)


async def wait_settled(target: Target, user: str, msg_id: str,
                       seconds: float) -> doc.MessageStatus:
    """Poll the message until acked or dead, or ``seconds`` pass (then the last
    status, normally ``pending``)."""
    loop = asyncio.get_running_loop()
    deadline, interval = loop.time() + seconds, FIRST_INTERVAL
    while True:
        status = await target.message_status(user, msg_id)
        remaining = deadline - loop.time()
        if status["state"] in SETTLED_STATES or remaining <= 0:
            return status
        await asyncio.sleep(min(interval, remaining))
        interval = min(interval * 1.5, MAX_INTERVAL)


async def user_presence(target: Target, user: str) -> Outcome[doc.UserPresence]:
    document = await target.user_presence(user)
    if not document["connections"]:
        return Outcome(document, NotDone(f"user {user} is offline"))
    return Outcome(document)


async def drain(target: Target, pod: str, over: float, wait: bool = False,
                then_exit: bool = False) -> Outcome[doc.DrainStarted]:
    """Start draining (``then_exit``: the pod's process ends once drained); with
    ``wait``, poll until the pod has left the pod list or holds no connection,
    for at most ``over`` + 30 s."""
    try:
        started = await target.drain(pod, over, then_exit)
    except NotFound as exc:
        raise NotFound(f"pod {pod} not found", "see the live pods: wsctl pods ls") from exc
    if not wait:
        return Outcome(started)
    left = await wait_drained(target, pod, over + DRAIN_GRACE_SECONDS)
    started["drained"] = left is None
    if left is None:
        return Outcome(started)
    return Outcome(started, NotDone(f"pod {pod} still holds {left['connections']} "
                                    f"connection(s) after {over + DRAIN_GRACE_SECONDS:g}s"))


async def wait_drained(target: Target, pod: str, seconds: float) -> doc.PodSummary | None:
    """Poll the pod list until ``pod`` is gone from it or holds no connection
    (then None), or ``seconds`` pass (then its last summary)."""
    loop = asyncio.get_running_loop()
    deadline, interval = loop.time() + seconds, FIRST_INTERVAL
    while True:
        pods = await target.pods()
        info = next((p for p in pods["pods"] if p["pod"] == pod), None)
        if info is None or info["connections"] == 0:
            return None
        remaining = deadline - loop.time()
        if remaining <= 0:
            return info
        await asyncio.sleep(min(interval, remaining))
        interval = min(interval * 1.5, MAX_INTERVAL)


async def retry_dead(target: Target, msg_id: str,
                     user: str | None = None) -> Outcome[doc.RetryResult]:
    try:
        return Outcome(await target.retry_dead(msg_id, user))
    except NotFound as exc:
        whose = f" for user {user}" if user else ""
        raise NotFound(f"no dead letter with id {msg_id}{whose}",
                       "see the dead letters: wsctl dlq ls") from exc


async def trace(target: Target, msg_id: str, user: str | None = None) -> Outcome[doc.Trail]:
    try:
        return Outcome(await target.trace(msg_id, user))
    except NotFound as exc:
        whose = f" of user {user}" if user else ""
        raise NotFound(f"no trail for message {msg_id}{whose}",
                       "ACK-required messages leave one (for TRACE_TTL); others with "
                       "wsctl send --trace") from exc
