"""The admin HTTP port: health, readiness, metrics and the JSON API (DESIGN §6).

Not for the internet. ``/healthz``, ``/readyz`` and ``/metrics`` are open (for
probes and scrapers); every ``/v1`` call needs ``Authorization: Bearer
<WSNODE_API_KEY>``, compared in constant time. Errors are JSON:
``{"error": {"code": ..., "message": ...}}``.

Path parameters are percent-decoded once and may hold any character but an
unencoded ``/`` (``{``, ``}``, ``%``, spaces, ``/`` as ``%2F``): any user or
message id is reachable. User ids follow the login's rule everywhere
(:func:`~wsnode.auth.user_id_problem`: 1-256 characters), else 400.
"""

from __future__ import annotations

import hmac
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from aiohttp import web
from pydantic import SecretStr

from wsnode import podprobe
from wsnode.acks import AckBackend
from wsnode.auth import user_id_problem
from wsnode.errors import NotFound, ProtocolError, SendError, WsnodeError
from wsnode.fanout import Fanout
from wsnode.ids import MsgId, PodId, UserId
from wsnode.presence import PresenceReader
from wsnode.protocol import Envelope
from wsnode.sender import Sender, SendReport
from wsnode.sendmany import ManySender
from wsnode.settings import POD_ID, NodeSettings
from wsnode.topics import TopicInfo, TopicRegistry, topic_problem
from wsnode.trace import Tracer

log = logging.getLogger("wsnode.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

EVERY_INTERFACE = ("0.0.0.0", "::", "[::]", "")  # noqa: S104 (compared, not bound)
# Logged at start (host, port) when the admin port binds every interface by default.
EXPOSED_WARNING = ("the admin port listens on every interface too (%s:%d): /metrics, /readyz "
                   "and /healthz answer there without a key; bind it to an internal address "
                   "with --admin-host (WSNODE_ADMIN_HOST), e.g. --admin-host 127.0.0.1, or "
                   "firewall it")


def advertised_url(settings: NodeSettings, port: int) -> str:
    """Where other tools reach a pod's admin port bound on ``port``:
    ``ADMIN_ADVERTISE``, or the bound address (the hostname when bound to every
    interface)."""
    if settings.admin_advertise:
        return settings.admin_advertise.rstrip("/")
    host = settings.admin_host or settings.host
    if host in EVERY_INTERFACE:
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json({"error": {"code": code, "message": message}}, status)


def _bad_request(message: str, code: str = "bad_request") -> web.HTTPBadRequest:
    # text=, not body=: aiohttp deprecates a body on its HTTP exceptions.
    return web.HTTPBadRequest(
        text=orjson.dumps({"error": {"code": code, "message": message}}).decode(),
        content_type="application/json")


def _user(value: object, where: str = "'user'") -> UserId:
    """A user id from a request, or 400 saying what is wrong with it."""
    problem = user_id_problem(value)
    if problem is not None:
        raise _bad_request(f"{where}: {problem}")
    return UserId(str(value))


def _topic(value: object, where: str) -> str:
    """A topic name from a request, or 400 saying what is wrong with it."""
    problem = topic_problem(value)
    if problem is not None:
        raise _bad_request(f"{where}: {problem}")
    return str(value)


def _optional_user(value: str | None) -> UserId | None:
    return _user(value, "'user'") if value else None


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise _bad_request(exc.msg, "bad_json") from exc
    if not isinstance(body, dict):
        raise _bad_request("the body must be a JSON object")
    return body


class AdminPort(Protocol):
    """What the admin API needs of a pod (the node implements it)."""

    @property
    def pod(self) -> PodId: ...

    @property
    def presence(self) -> PresenceReader: ...

    @property
    def sender(self) -> Sender: ...

    @property
    def many(self) -> ManySender: ...

    @property
    def fanout(self) -> Fanout: ...

    @property
    def topics(self) -> TopicRegistry | None: ...

    @property
    def acks(self) -> AckBackend: ...

    @property
    def tracer(self) -> Tracer: ...

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the pod should get new connections, and the document of why."""
        ...

    async def metrics_text(self) -> bytes: ...

    async def drain_pod(self, pod: PodId, over: float, *, then_exit: bool = False) -> None: ...

    async def retry_dead(self, msg_id: MsgId, user: UserId | None) -> list[SendReport]: ...


class AdminApi:
    """Routes of the admin port, over an :class:`AdminPort`."""

    def __init__(self, port: AdminPort, api_key: SecretStr | None) -> None:
        self.node = port
        self._key = api_key.get_secret_value().encode() if api_key is not None else None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=4 * 1024 * 1024)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/send", self.send)
        app.router.add_post("/v1/broadcast", self.broadcast)
        app.router.add_post("/v1/publish", self.publish)
        app.router.add_get("/v1/topics", self.topics)
        app.router.add_get("/v1/topics/{topic:[^/]+}", self.topic)
        app.router.add_get("/v1/presence", self.presence)
        # "[^/]+": aiohttp's default pattern refuses "{" and "}" in a segment.
        app.router.add_get("/v1/presence/{user:[^/]+}", self.presence_user)
        app.router.add_get("/v1/pods", self.pods)
        app.router.add_post("/v1/drain", self.drain)
        app.router.add_get("/v1/messages/{user:[^/]+}/{id:[^/]+}", self.message)
        app.router.add_get("/v1/trace/{id:[^/]+}", self.trace)
        app.router.add_get("/v1/dlq", self.dlq)
        app.router.add_post("/v1/dlq/retry", self.dlq_retry)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/v1/") and not self._authorized(request):
            if self._key is None:
                return _error(401, "unauthorized",
                              "the admin API is disabled: set WSNODE_API_KEY on the pod")
            return _error(401, "unauthorized",
                          "missing or wrong API key: send Authorization: Bearer <WSNODE_API_KEY>")
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except ProtocolError as exc:
            return _error(400, exc.code, exc.message)
        except SendError as exc:
            return _error(400, "bad_request", str(exc))
        except NotFound as exc:
            return _error(404, "not_found", str(exc))
        except WsnodeError as exc:
            return _error(503, "unavailable", str(exc))

    def _authorized(self, request: web.Request) -> bool:
        if self._key is None:
            return False
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                  self._key)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        ready, document = self.node.readiness()
        return _json(document, 200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=await self.node.metrics_text(),
                            content_type="text/plain", charset="utf-8")

    async def send(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if "users" in body:
            users = body["users"]
            if "user" in body or not isinstance(users, list):
                return _error(400, "bad_request", "'users' is a list of user ids, given "
                              "instead of 'user' (not both)")
            env = Envelope.from_wire(body.get("envelope"))
            many = await self.node.many.send_to_users(users, env, on_behalf_of=None)
            return _json(many.to_json())
        user = _user(body.get("user"))
        env = Envelope.from_wire(body.get("envelope"))
        report = await self.node.sender.send_to_user(user, env, trace=body.get("trace") is True,
                                                     on_behalf_of=None)
        return _json(report.to_json())

    async def broadcast(self, request: web.Request) -> web.Response:
        env = Envelope.from_wire((await _body(request)).get("envelope"))
        report = await self.node.fanout.broadcast(env, on_behalf_of=None)
        return _json(report.to_json())

    async def publish(self, request: web.Request) -> web.Response:
        body = await _body(request)
        topic = _topic(body.get("topic"), "'topic'")
        env = Envelope.from_wire(body.get("envelope"))
        report = await self.node.fanout.publish(topic, env, on_behalf_of=None)
        return _json(report.to_json())

    async def topics(self, request: web.Request) -> web.Response:
        infos = await self._registry().topics()
        return _json({"topics": [t.summary() for t in infos]})

    async def topic(self, request: web.Request) -> web.Response:
        topic = _topic(request.match_info["topic"], "the topic in the path")
        return _json(TopicInfo(topic, await self._registry().pods_of(topic)).to_json())

    def _registry(self) -> TopicRegistry:
        registry = self.node.topics
        if registry is None:
            raise WsnodeError("this pod keeps no topic registry")
        return registry

    async def presence(self, request: web.Request) -> web.Response:
        pod = request.query.get("pod")
        users = await self.node.presence.users(PodId(pod) if pod else None)
        return _json({"users": [u.to_json() for u in users]})

    async def presence_user(self, request: web.Request) -> web.Response:
        user = _user(request.match_info["user"], "the user in the path")
        conns = await self.node.presence.connections(user)
        return _json({"user": user, "connections": [c.to_json() for c in conns]})

    async def pods(self, request: web.Request) -> web.Response:
        # A lease outlives a SIGKILLed pod by up to 3 heartbeats: ask each other
        # pod's admin port (not this one's: it may not reach its own advertised URL).
        pods = await podprobe.probe(await self.node.presence.pods(), skip={self.node.pod})
        return _json({"pods": [p.to_json() for p in pods]})

    async def drain(self, request: web.Request) -> web.Response:
        body = await _body(request)
        pod, over = body.get("pod", self.node.pod), body.get("overSeconds", 0)
        then_exit = body.get("exit", False)
        if not isinstance(pod, str) or isinstance(over, bool) or not isinstance(over, int | float) \
                or over < 0 or not isinstance(then_exit, bool):
            return _error(400, "bad_request", "'pod' must be a string, 'overSeconds' a number "
                          ">= 0 and 'exit' a boolean")
        if not POD_ID.fullmatch(pod):
            return _error(404, "not_found", f"pod {pod!r} is not running (not a valid pod id)")
        await self.node.drain_pod(PodId(pod), float(over), then_exit=then_exit)
        return _json({"pod": pod, "state": "draining", "overSeconds": over, "exit": then_exit},
                     202)

    async def message(self, request: web.Request) -> web.Response:
        user = _user(request.match_info["user"], "the user in the path")
        msg_id = MsgId(request.match_info["id"])
        state = await self.node.acks.status(user, msg_id)
        if state is None:
            return _error(404, "not_found", f"no message {msg_id!r} for user {user!r}")
        return _json({"user": user, "id": msg_id, "state": state.value})

    async def trace(self, request: web.Request) -> web.Response:
        msg_id = MsgId(request.match_info["id"])
        events = await self.node.tracer.trail(msg_id, _optional_user(request.query.get("user")))
        if not events:
            return _error(404, "not_found", f"no trail for message {msg_id!r}")
        return _json({"id": msg_id, "events": events})

    async def dlq(self, request: web.Request) -> web.Response:
        user = _optional_user(request.query.get("user"))
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            return _error(400, "bad_request", "'limit' must be an integer from 1 to 1000")
        rows = await self.node.acks.dead_letters(user, limit)
        return _json({"messages": [d.to_json() for d in rows]})

    async def dlq_retry(self, request: web.Request) -> web.Response:
        body = await _body(request)
        msg_id, user = body.get("id"), body.get("user")
        if not isinstance(msg_id, str) or (user is not None and not isinstance(user, str)):
            return _error(400, "bad_request", "'id' (and optional 'user') must be strings")
        reports = await self.node.retry_dead(MsgId(msg_id), _optional_user(user))
        return _json({"retried": [r.to_json() for r in reports]})
