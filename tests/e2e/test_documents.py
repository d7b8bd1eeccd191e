"""wsctl/documents.py against reality.

Every document the admin API of a real pod answers, and every document
``wsctl ... --json`` prints (over ``--node`` and over Redis and RabbitMQ), is
validated strictly against its TypedDict: no key more, none missing, no value
of another JSON type. The answers are the truth; a failure here means either
the TypedDict or the pod changed without the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ConfigDict, TypeAdapter, ValidationError
from websockets.exceptions import ConnectionClosed

from tests.cli.conftest import Wsctl
from tests.conftest import PodFactory
from tests.support.client import Client
from tests.support.cluster import ClusterSlice
from tests.support.pods import SECRET, PodProcess, base_env
from tests.support.waits import eventually
from wsctl import documents as doc
from wsnode.auth import mint_token

CLOSED = ConfigDict(extra="forbid", strict=True)
ACKS = {"WSNODE_ACK_RETRY_INTERVAL": "200ms", "WSNODE_ACK_MAX_ATTEMPTS": "2"}
EVERY_DOCUMENT = {doc.SendReport, doc.MessageStatus, doc.PresenceList, doc.UserPresence,
                  doc.PodList, doc.DrainStarted, doc.DeadLetterList, doc.RetryResult, doc.Trail,
                  doc.ManySendReport, doc.BroadcastReport, doc.PublishReport, doc.TopicList,
                  doc.TopicDetail}
WSCTL_DOCUMENTS = EVERY_DOCUMENT - {doc.MessageStatus}  # wsctl prints no bare status
EVENTS = {"stored", "duplicate", "routed", "resent", "acked", "replayed", "dead", "revived"}


@functools.cache
def _closed(kind: Any) -> TypeAdapter[list[Any]]:
    # TypeAdapter takes no config for a TypedDict itself; given to a list of it,
    # the config holds for that TypedDict and every TypedDict nested in it.
    return TypeAdapter(list[kind], config=CLOSED)


def mismatch(kind: Any, document: Any) -> str | None:
    """Why ``document`` is not exactly a ``kind``, or None when it is."""
    try:
        _closed(kind).validate_python([document])
    except ValidationError as exc:
        return str(exc)
    return None


@dataclass
class Seen:
    """Documents collected from one source (the API, or wsctl over one target)."""

    source: str
    documents: list[tuple[Any, Any]] = field(default_factory=list)

    def add(self, kind: Any, document: Any) -> Any:
        self.documents.append((kind, document))
        return document

    def kinds(self) -> set[Any]:
        return {kind for kind, _ in self.documents}

    def events(self) -> set[str]:
        return {e["event"] for kind, d in self.documents if kind is doc.Trail
                for e in d["events"]}

    def problems(self) -> list[str]:
        found = ((kind, d, mismatch(kind, d)) for kind, d in self.documents)
        return [f"{self.source}: {kind.__name__} {orjson.dumps(d).decode()}\n{why}"
                for kind, d, why in found if why is not None]


# -- the sources ------------------------------------------------------------------

async def api_documents(front: PodProcess, home: PodProcess, seen: Seen) -> None:
    """Every admin API call, through ``front``; the users' connections are on ``home``."""
    async def call(kind: Any, method: str, path: str, body: Any = None) -> Any:
        status, answer = await asyncio.to_thread(front.api, method, path, body)
        assert status < 300, (method, path, status, answer)
        return seen.add(kind, answer)

    def send(user: str, **envelope: Any) -> Awaitable[Any]:
        return call(doc.SendReport, "POST", "/v1/send",
                    {"user": user, "envelope": {"type": "note", **envelope}})

    await send("ann", payload={"n": 1})
    await send("ann", id="api-a", requiresAck=True)
    await eventually(lambda: _state(call(doc.MessageStatus, "GET", "/v1/messages/ann/api-a"),
                                    "acked"), 15, "api-a acked")
    assert (await send("ann", id="api-a", requiresAck=True))["duplicate"] is True
    await send("olga", payload="offline")
    await send("dan", id="api-d", requiresAck=True)
    await eventually(lambda: _has(call(doc.DeadLetterList, "GET", "/v1/dlq?user=dan"),
                                  "api-d"), 15, "api-d dead-lettered")
    await call(doc.RetryResult, "POST", "/v1/dlq/retry", {"id": "api-d", "user": "dan"})
    await call(doc.PresenceList, "GET", "/v1/presence")
    await call(doc.UserPresence, "GET", "/v1/presence/ann")
    await call(doc.UserPresence, "GET", "/v1/presence/olga")  # offline: no connection
    await call(doc.PodList, "GET", "/v1/pods")
    # Many users, every connection, topics (ann's token subscribes her to "news")
    envelope = {"type": "note"}
    await call(doc.ManySendReport, "POST", "/v1/send", {"users": ["ann", "olga"],
                                                        "envelope": envelope})
    await call(doc.ManySendReport, "POST", "/v1/send", {"users": ["ann", "dan"], "envelope": {
        **envelope, "id": "api-m", "requiresAck": True}})
    await call(doc.BroadcastReport, "POST", "/v1/broadcast", {"envelope": envelope})
    await call(doc.PublishReport, "POST", "/v1/publish", {"topic": "news", "envelope": envelope})
    await call(doc.PublishReport, "POST", "/v1/publish", {"topic": "void", "envelope": envelope})
    await call(doc.TopicList, "GET", "/v1/topics")
    await call(doc.TopicDetail, "GET", "/v1/topics/news")
    await call(doc.TopicDetail, "GET", "/v1/topics/void")

    # A replay: stored while olga is offline, replayed when she connects, acked.
    await send("olga", id="api-o", requiresAck=True)
    async with await Client.open(home.ws_url, home.token("olga")) as olga:
        assert [f["id"] for f in olga.replay] == ["api-o"]
        await olga.ack("api-o")
        for msg_id, last in (("api-a", "acked"), ("api-d", "revived"), ("api-o", "acked")):
            trail = functools.partial(call, doc.Trail, "GET", f"/v1/trace/{msg_id}")
            await eventually(functools.partial(_trail_has, trail, last), 15,
                             f"trail of {msg_id} with {last}")
    await call(doc.DrainStarted, "POST", "/v1/drain", {"pod": home.pod_id, "overSeconds": 0})


# Runs ``wsctl ARGS``: (exit code, stdout, stderr).
WsctlRun = Callable[..., Awaitable[tuple[int, str, str]]]


def over_node(pod: PodProcess) -> WsctlRun:
    """wsctl --node (WSNODE_NODE) to ``pod``, in-process as tests/cli run it."""
    async def run(*args: str) -> tuple[int, str, str]:
        result = await Wsctl().arun(*args, pod=pod)
        return result.exit_code, result.stdout, result.stderr
    return run


def over_cluster(cluster: ClusterSlice) -> WsctlRun:
    """wsctl over Redis and RabbitMQ, as a process of its own (in-process runs of
    the cluster target leave Redis connections for the next test's gc to find)."""
    async def run(*args: str) -> tuple[int, str, str]:
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "wsctl", *args],
            env=base_env(**cluster.env(**ACKS)), capture_output=True, text=True, timeout=60,
            check=False)
        return done.returncode, done.stdout, done.stderr
    return run


async def wsctl_documents(wsctl: WsctlRun, prefix: str, seen: Seen) -> None:
    """Every wsctl command with ``--json``, each id starting with ``prefix``."""
    async def run(kind: Any, *args: str, code: int = 0) -> Any:
        exit_code, out, err = await wsctl(*args, "--json")
        assert exit_code == code, (args, exit_code, out, err)
        return seen.add(kind, orjson.loads(out))

    await run(doc.SendReport, "send", "ann", "--type", "note", "--payload", '{"n": 1}')
    report = await run(doc.SendReport, "send", "ann", "--type", "note", "--ack",
                       "--id", f"{prefix}a", "--wait", "15")
    assert report["state"] == "acked", report
    duplicate = await run(doc.SendReport, "send", "ann", "--type", "note", "--ack",
                          "--id", f"{prefix}a")
    assert duplicate["duplicate"] is True, duplicate
    await run(doc.SendReport, "send", "olga-away", "--type", "note", code=3)
    await run(doc.SendReport, "send", "dan", "--type", "note", "--ack", "--id", f"{prefix}d")
    await eventually(lambda: _has(run(doc.DeadLetterList, "dlq", "ls", "--user", "dan"),
                                  f"{prefix}d"), 15, f"{prefix}d dead-lettered")
    await run(doc.RetryResult, "dlq", "retry", f"{prefix}d", "--user", "dan")
    await run(doc.PresenceList, "presence", "ls")
    await run(doc.UserPresence, "presence", "get", "ann")
    await run(doc.UserPresence, "presence", "get", "olga-away", code=3)
    await run(doc.PodList, "pods", "ls")
    await run(doc.ManySendReport, "send", "ann", "olga-away", "--type", "note", code=3)
    await run(doc.ManySendReport, "send", "ann", "dan", "--type", "note", "--ack",
              "--id", f"{prefix}m")
    await run(doc.BroadcastReport, "broadcast", "--type", "note")
    await run(doc.PublishReport, "publish", "news", "--type", "note")
    await run(doc.PublishReport, "publish", "void", "--type", "note", code=3)
    await run(doc.TopicList, "topics", "ls")
    await run(doc.TopicDetail, "topics", "get", "news")
    await run(doc.TopicDetail, "topics", "get", "void", code=3)
    for msg_id, last in ((f"{prefix}a", "acked"), (f"{prefix}d", "revived")):
        trail = functools.partial(run, doc.Trail, "trace", msg_id)
        await eventually(functools.partial(_trail_has, trail, last), 15,
                         f"trail of {msg_id} with {last}")


async def wsctl_drain(wsctl: WsctlRun, pod: str, seen: Seen) -> None:
    for extra in ([], ["--wait"]):
        code, out, err = await wsctl("drain", pod, "--over", "0", *extra, "--json")
        assert code == 0, (out, err)
        seen.add(doc.DrainStarted, orjson.loads(out))


async def _state(status: Awaitable[Any], state: str) -> bool:
    return bool((await status)["state"] == state)


async def _has(dead: Awaitable[Any], msg_id: str) -> bool:
    return any(m["id"] == msg_id for m in (await dead)["messages"])


async def _trail_has(fetch: Callable[[], Awaitable[Any]], event: str) -> bool:
    try:
        trail = await fetch()
    except AssertionError:  # not found yet: pods write trails a moment later
        return False
    return any(e["event"] == event for e in trail["events"])


# -- the users ----------------------------------------------------------------------

@contextlib.asynccontextmanager
async def users(home: PodProcess) -> AsyncIterator[None]:
    """ann acks everything, dan acks nothing (his messages die), both on ``home``."""
    ann = await Client.open(home.ws_url, mint_token(SECRET, "ann", 3600, topics=["news"]))
    dan = await Client.open(home.ws_url, home.token("dan"))

    async def ack_all() -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = await ann.recv(timeout=3600)
                if frame.get("requiresAck"):
                    await ann.ack(frame["id"])

    acking = asyncio.create_task(ack_all())
    try:
        yield
    finally:
        acking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acking
        for client in (ann, dan):
            await client.close()


def verdict(sources: list[Seen], wanted: dict[str, set[Any]], events: set[str]) -> None:
    problems = [p for s in sources for p in s.problems()]
    assert not problems, "\n\n".join(problems)
    for s in sources:
        assert wanted[s.source] <= s.kinds(), (s.source, wanted[s.source] - s.kinds())
    got = set().union(*(s.events() for s in sources))
    assert events <= got, events - got


# -- the tests -------------------------------------------------------------------------

def test_validation_is_strict() -> None:
    """The check itself can fail: a key more, a key less, a number as text."""
    good = {"users": [{"user": "u", "connections": 1, "pods": ["p"]}]}
    assert mismatch(doc.PresenceList, good) is None
    assert mismatch(doc.PresenceList, {"users": [{**good["users"][0], "x": 1}]})
    assert mismatch(doc.PresenceList, {"users": [{"user": "u", "connections": 1}]})
    assert mismatch(doc.PresenceList, {"users": [{"user": "u", "connections": "1",
                                                  "pods": []}]})
    event = {"at": 1, "user": "u", "pod": None, "event": "acked", "conn": "c"}
    assert mismatch(doc.Trail, {"id": "m", "events": [event]}) is None
    assert mismatch(doc.Trail, {"id": "m", "events": [{**event, "seq": 1}]})


async def test_embedded_pod_answers_match_the_documents(pod_factory: PodFactory) -> None:
    pod = pod_factory("pod-e", env=ACKS)
    api, node = Seen("api"), Seen("wsctl --node")
    async with users(pod):
        await wsctl_documents(over_node(pod), "n-", node)
        await api_documents(pod, pod, api)
        await wsctl_drain(over_node(pod), pod.pod_id, node)
    verdict([api, node], {"api": EVERY_DOCUMENT, "wsctl --node": WSCTL_DOCUMENTS}, EVENTS)


async def test_cluster_answers_match_the_documents(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    home, front = (cluster.adopt(pod_factory(name, env=cluster.env(**ACKS)))
                   for name in ("pod-a", "pod-b"))
    api, node, direct = Seen("api"), Seen("wsctl --node"), Seen("wsctl cluster")
    async with users(home):
        await wsctl_documents(over_node(front), "n-", node)
        await wsctl_documents(over_cluster(cluster), "c-", direct)
        await api_documents(front, home, api)
        await wsctl_drain(over_node(front), home.pod_id, node)
        await wsctl_drain(over_cluster(cluster), home.pod_id, direct)
    verdict([api, node, direct],
            {"api": EVERY_DOCUMENT, "wsctl --node": WSCTL_DOCUMENTS,
             "wsctl cluster": WSCTL_DOCUMENTS}, EVENTS | {"delivered"})

