"""The soak's own cluster: a private Redis, RabbitMQ through proxies, real pods.

* a private ``redis-server`` on a free port with AOF (``appendfsync always``),
  so a SIGKILL restart keeps every acknowledged write;
* the shared RabbitMQ, reached by each pod through its own :class:`TcpProxy`
  (cutting one is a RabbitMQ outage for that pod alone);
* ``wsnode serve`` pods on ports pinned at the first start, so a pod restarted
  with the same id is found again by clients and producers at the same URLs;
* a unique ``KEY_PREFIX``, whose AMQP queues and exchanges :meth:`World.close`
  deletes after killing every process by pid (Redis keys go with the private
  server and its directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tests.support.amqp import delete_amqp_names
from tests.support.pods import API_KEY, PodProcess, free_port
from tests.support.proxy import TcpProxy
from tests.support.redis_server import RedisServer

# Short timers so that resends, leases and drains fit in a soak of minutes: an
# unacked message is resent 1, 2, 4, 8, 16, 16 and 16 s after each delivery and
# dead-lettered 16 s after the 8th, about 79 s after it was stored.
POD_SETTINGS = {
    "WSNODE_HEARTBEAT_INTERVAL": "1s",
    "WSNODE_ACK_RETRY_INTERVAL": "1s",
    "WSNODE_ACK_MAX_ATTEMPTS": "8",
    "WSNODE_RATE_LIMIT": "0",
    "WSNODE_DRAIN_OVER": "1s",
    "WSNODE_DRAIN_TIMEOUT": "10s",
    "WSNODE_PING_INTERVAL": "5s",
    "WSNODE_PING_TIMEOUT": "10s",
    # Trails of at-most-once messages too: a repeated one can then be explained.
    "WSNODE_TRACE": "all",
}
DRAIN_TIMEOUT = 10.0
# The last exception line of a pod's log says why it did not start.
_ERROR_LINE = re.compile(r"^\w*(?:Error|Exception): .*$", re.MULTILINE)
AUTH = {"Authorization": f"Bearer {API_KEY}"}


class World:
    """Everything one soak runs against. Start with :meth:`start`, always
    :meth:`close` (idempotent, also after a failed start)."""

    def __init__(self, workdir: Path, *, pods: int, amqp_url: str, app: str) -> None:
        self.workdir = workdir
        self.amqp_url = amqp_url
        self.prefix = f"chaos{uuid.uuid4().hex[:8]}"
        self.redis = RedisServer(workdir)
        self.pod_ids = [f"p{i}" for i in range(pods)]
        self.proxies = {p: TcpProxy(*_host_port(amqp_url)) for p in self.pod_ids}
        self.pods: dict[str, PodProcess] = {}
        self._app = app
        self.http: aiohttp.ClientSession | None = None
        self.restart_failures: list[str] = []
        self._closed = False

    # -- life ----------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.redis.start)
        for pod in self.pod_ids:
            await self.proxies[pod].start()
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        for pod in self.pod_ids:
            self.pods[pod] = self._new_pod(pod)
            if not await self.start_pod(pod, attempts=3):
                raise RuntimeError(f"pod {pod} did not start: {self.restart_failures[-1]}")

    def _new_pod(self, pod: str) -> PodProcess:
        env = {"WSNODE_REDIS_URL": self.redis.url, "WSNODE_KEY_PREFIX": self.prefix,
               "WSNODE_AMQP_URL": self.proxies[pod].url(
                   userinfo=_userinfo(self.amqp_url), path=_vhost_path(self.amqp_url)),
               **POD_SETTINGS}
        # The later --port/--admin-port win over the 0s PodProcess passes first.
        args = ["--port", str(free_port()), "--admin-port", str(free_port()),
                "--app", self._app]
        return PodProcess(pod, self.workdir, env=env, args=args)

    def alive(self, pod: str) -> bool:
        proc = self.pods[pod].proc
        return proc is not None and proc.poll() is None

    async def start_pod(self, pod: str, attempts: int = 10) -> bool:
        """(Re)start ``pod`` with its id and ports; retried, since a pod may
        refuse to start while Redis is being restarted. False if it never came up."""
        for attempt in range(attempts):
            try:
                await asyncio.to_thread(self.pods[pod].start, 30.0)
                return True
            except (RuntimeError, OSError) as exc:
                self.pods[pod].kill()  # not up in time: do not leave it behind
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                errors = _ERROR_LINE.findall(self.pods[pod].log()[-20_000:])
                self.restart_failures.append(f"{pod} attempt {attempt + 1}: {first} "
                                             f"{errors[-1] if errors else ''}"[:300])
                await asyncio.sleep(1.0)
        return False

    async def heal(self) -> list[str]:
        """Undo every fault: proxies listening, Redis up and writable, every pod
        running. Returns what could not be healed."""
        problems: list[str] = []
        for proxy in self.proxies.values():
            await proxy.restore()
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            await asyncio.to_thread(self.redis.start)
        try:
            async with self.redis_client() as client:
                await client.replicaof("NO", "ONE")
                await client.config_set("min-replicas-to-write", 0)
        except (RedisError, OSError) as exc:
            problems.append(f"redis: {exc!r}")
        for pod in self.pod_ids:
            if not self.alive(pod) and not await self.start_pod(pod):
                problems.append(f"pod {pod} does not start")
        return problems

    async def close(self) -> list[str]:
        """Kill every process by pid, delete the AMQP names of the prefix, the
        Redis data; returns AMQP names that could not be deleted."""
        if self._closed:
            return []
        self._closed = True
        self.kill_processes()
        for proxy in self.proxies.values():
            with contextlib.suppress(Exception):
                await proxy.close()
        if self.http is not None:
            await self.http.close()
        failed = await delete_amqp_names(self.amqp_url, self.prefix, self.pod_ids)
        shutil.rmtree(self.redis.dir, ignore_errors=True)
        return failed

    def kill_processes(self) -> None:
        """SIGKILL every pod and the Redis server, by pid (safe to call twice)."""
        for pod in self.pods.values():
            with contextlib.suppress(Exception):
                pod.kill()
        with contextlib.suppress(Exception):
            self.redis.kill()

    # -- talking to it -------------------------------------------------------

    @contextlib.asynccontextmanager
    async def redis_client(self) -> AsyncIterator[aioredis.Redis]:
        """A fresh client of the private Redis (faults kill long-lived ones)."""
        client = aioredis.from_url(self.redis.url, socket_timeout=5)
        try:
            yield client
        finally:
            await client.aclose()

    async def call(self, pod: str, method: str, path: str, body: Any = None,
                   timeout: float = 5.0) -> tuple[str, Any]:
        """One admin API call: ("200", decoded JSON), ("503", ...), ("timeout",
        None) or ("error: <kind>", None). Never raises for a pod that is down."""
        assert self.http is not None
        url = self.pods[pod].admin_url + path
        data = orjson.dumps(body) if body is not None else None
        headers = {**AUTH, "Content-Type": "application/json"} if data else AUTH
        try:
            async with asyncio.timeout(timeout), \
                    self.http.request(method, url, data=data, headers=headers) as resp:
                raw = await resp.read()
                status = str(resp.status)
        except TimeoutError:
            return "timeout", None
        except (aiohttp.ClientError, OSError) as exc:
            return f"error: {type(exc).__name__}", None
        try:
            return status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return status, raw.decode(errors="replace")

    async def ask(self, method: str, path: str, timeout: float = 10.0) -> Any:
        """A read that must succeed: asks each running pod in turn, for up to
        ``timeout`` seconds; returns the decoded answer (404: None)."""
        deadline = asyncio.get_running_loop().time() + timeout
        last = ""
        while asyncio.get_running_loop().time() < deadline:
            for pod in self.pod_ids:
                if not self.alive(pod):
                    continue
                status, answer = await self.call(pod, method, path)
                if status == "200":
                    return answer
                if status == "404":
                    return None
                last = f"{pod}: {status} {answer!r:.200}"
            await asyncio.sleep(0.5)
        raise RuntimeError(f"{method} {path}: no pod answered ({last})")

    async def readiness(self) -> dict[str, Any]:
        """Each pod's ``/readyz`` answer (or why there is none)."""
        out: dict[str, Any] = {}
        for pod in self.pod_ids:
            status, answer = await self.call(pod, "GET", "/readyz")
            out[pod] = {"status": status, "answer": answer}
        return out

    async def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Until every pod's ``/readyz`` answers 200, or ``timeout``; the last answers."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            ready = await self.readiness()
            if all(r["status"] == "200" for r in ready.values()) \
                    or asyncio.get_running_loop().time() > deadline:
                return ready
            await asyncio.sleep(0.5)


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5672


def _userinfo(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.username or 'guest'}:{parts.password or 'guest'}"


def _vhost_path(url: str) -> str:
    return urlsplit(url).path or "/"
