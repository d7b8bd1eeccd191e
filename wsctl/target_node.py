"""NodeTarget: a :class:`~wsctl.target.Target` over one pod's admin HTTP API.

Calls ``/v1/*`` on the pod's admin port (DESIGN §6) with ``Authorization:
Bearer <WSNODE_API_KEY>``. aiohttp errors are translated here, at the
boundary, into :mod:`wsctl.errors` (re-raised ``from`` the original); error
messages name the URL and never the API key. Path segments (user, message
id) are percent-quoted, so any id round-trips.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import quote

import aiohttp
import orjson

from wsctl import documents as doc
from wsctl.errors import ApiError, NotFound, Unauthorized, Unreachable
from wsnode.protocol import Envelope


def _segment(value: str) -> str:
    return quote(value, safe="")


class NodeTarget:
    """One pod, reached at its admin URL (``http://host:9765``)."""

    def __init__(self, url: str, *, api_key: str | None, timeout: float) -> None:
        self.url = url.rstrip("/")
        self._api_key = api_key
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        return self.url

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # -- operations ------------------------------------------------------------

    async def send(self, user: str, envelope: Envelope, *,
                   trace: bool = False) -> doc.SendReport:
        body: dict[str, Any] = {"user": user, "envelope": envelope.to_wire()}
        if trace:
            body["trace"] = True
        return cast(doc.SendReport, await self._call("POST", "/v1/send", body=body))

    async def send_many(self, users: list[str], envelope: Envelope) -> doc.ManySendReport:
        body = {"users": users, "envelope": envelope.to_wire()}
        return cast(doc.ManySendReport, await self._call("POST", "/v1/send", body=body))

    async def broadcast(self, envelope: Envelope) -> doc.BroadcastReport:
        body = {"envelope": envelope.to_wire()}
        return cast(doc.BroadcastReport, await self._call("POST", "/v1/broadcast", body=body))

    async def publish(self, topic: str, envelope: Envelope) -> doc.PublishReport:
        body = {"topic": topic, "envelope": envelope.to_wire()}
        return cast(doc.PublishReport, await self._call("POST", "/v1/publish", body=body))

    async def topics(self) -> doc.TopicList:
        return cast(doc.TopicList, await self._call("GET", "/v1/topics"))

    async def topic(self, topic: str) -> doc.TopicDetail:
        path = f"/v1/topics/{_segment(topic)}"
        return cast(doc.TopicDetail, await self._call("GET", path))

    async def trace(self, msg_id: str, user: str | None = None) -> doc.Trail:
        params = {"user": user} if user else None
        return cast(doc.Trail, await self._call("GET", f"/v1/trace/{_segment(msg_id)}",
                                                params=params))

    async def message_status(self, user: str, msg_id: str) -> doc.MessageStatus:
        path = f"/v1/messages/{_segment(user)}/{_segment(msg_id)}"
        return cast(doc.MessageStatus, await self._call("GET", path))

    async def presence(self, pod: str | None = None) -> doc.PresenceList:
        params = {"pod": pod} if pod else None
        return cast(doc.PresenceList, await self._call("GET", "/v1/presence", params=params))

    async def user_presence(self, user: str) -> doc.UserPresence:
        path = f"/v1/presence/{_segment(user)}"
        return cast(doc.UserPresence, await self._call("GET", path))

    async def pods(self) -> doc.PodList:
        return cast(doc.PodList, await self._call("GET", "/v1/pods"))

    async def drain(self, pod: str, over: float, then_exit: bool = False) -> doc.DrainStarted:
        body = {"pod": pod, "overSeconds": over, "exit": then_exit}
        return cast(doc.DrainStarted, await self._call("POST", "/v1/drain", body=body))

    async def dead_letters(self, user: str | None = None,
                           limit: int = 100) -> doc.DeadLetterList:
        params = {"limit": str(limit)} | ({"user": user} if user else {})
        return cast(doc.DeadLetterList, await self._call("GET", "/v1/dlq", params=params))

    async def retry_dead(self, msg_id: str, user: str | None = None) -> doc.RetryResult:
        body = {"id": msg_id, "user": user}
        return cast(doc.RetryResult, await self._call("POST", "/v1/dlq/retry", body=body))

    # -- HTTP ------------------------------------------------------------------

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"Accept": "application/json", "User-Agent": "wsctl"}
            if self._api_key:
                headers["Authorization"] = f"Bearer {self._api_key}"
            self._session = aiohttp.ClientSession(
                headers=headers, timeout=aiohttp.ClientTimeout(total=self._timeout))
        return self._session

    async def _call(self, method: str, path: str, *, body: Any = None,
                    params: dict[str, str] | None = None) -> dict[str, Any]:
        """One API call; the decoded JSON object of a 2xx answer, else an error."""
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        url = self.url + path
        try:
            async with self._open().request(method, url, data=data, params=params,
                                            headers=headers) as resp:
                status, raw = resp.status, await resp.read()
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(f"cannot reach {self.url}: {_why(exc)} "
                              "(is the pod running? check --node)") from exc
        except TimeoutError as exc:
            raise Unreachable(f"no answer from {self.url} within {self._timeout:g}s",
                              "is the pod overloaded? raise --timeout to wait longer") from exc
        except aiohttp.ClientError as exc:
            raise Unreachable(f"{method} {url} failed: {exc or type(exc).__name__}") from exc
        answer = _decode(raw)
        if 200 <= status < 300 and isinstance(answer, dict):
            return answer
        raise self._failure(status, answer, raw)

    def _failure(self, status: int, answer: Any, raw: bytes) -> ApiError | NotFound:
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, dict) or not isinstance(error.get("message"), str):
            snippet = raw[:80].decode(errors="replace").strip().replace("\n", " ")
            return ApiError(f"unexpected answer from {self.url} (HTTP {status}): {snippet!r}",
                            status=status, hint="is --node the pod's admin port (9765)?")
        message, code = error["message"], str(error.get("code", ""))
        if status == 401:
            if self._api_key:
                text = "the pod refused the API key (401): set WSNODE_API_KEY to the pod's key"
            else:
                text = ("no API key given (401): set WSNODE_API_KEY to the pod's key "
                        "(or pass --api-key)")
            # The pod's own words matter when its API is off; otherwise they repeat ours.
            hint = f"the pod says: {message}" if "disabled" in message else None
            return Unauthorized(text, status=status, code=code, hint=hint)
        if status == 404:
            return NotFound(message)
        return ApiError(message, status=status, code=code)


def _decode(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _why(exc: aiohttp.ClientConnectorError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "cannot resolve the host name"
    if isinstance(exc.os_error, ConnectionRefusedError):
        return "connection refused"
    reason = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
    return reason[:1].lower() + reason[1:]
