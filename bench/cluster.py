"""Shared harness of the cluster benchmarks: real pods on the real Redis and
RabbitMQ, under a key prefix of the run alone, removed afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

REDIS_URL = os.environ.get("WSNODE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("WSNODE_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pod:
    def __init__(self, pod_id: str, env: dict[str, str], log_dir: Path) -> None:
        self.pod_id = pod_id
        self.port, self.admin_port = free_port(), free_port()
        log = (log_dir / f"{pod_id}.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wsnode", "serve", "--insecure", "--pod-id", pod_id,
             "--port", str(self.port), "--admin-port", str(self.admin_port),
             "--app", "wsnode.examples.chat"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/readyz",
                                            timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.pod_id} not ready")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU time the pod process used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.asynccontextmanager
async def cluster(pod_ids: list[str], **settings: str) -> AsyncIterator[list[Pod]]:
    """Start pods (cluster mode, ``--insecure`` identities, no rate limit), yield,
    then kill them and delete the run's Redis keys and AMQP names."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSNODE_")}
    env.update(WSNODE_REDIS_URL=REDIS_URL, WSNODE_AMQP_URL=AMQP_URL, WSNODE_KEY_PREFIX=prefix,
               WSNODE_RATE_LIMIT="0", WSNODE_LOG_LEVEL="WARNING",
               WSNODE_SEND_QUEUE_SIZE="8MiB",
               # A benchmark's clients are trusted: the limits on what a client may
               # store through the chat app must not throttle its ACK runs.
               WSNODE_RELAYED_MAX_PENDING="1000000", WSNODE_RELAYED_BUDGET="1000000")
    env.update(settings)
    # WSNODE_BENCH_POD_<NAME>=value: a pod setting for an A/B run (the rest of
    # the caller's WSNODE_* environment is ignored on purpose).
    env.update({f"WSNODE_{k[len('WSNODE_BENCH_POD_'):]}": v for k, v in os.environ.items()
                if k.startswith("WSNODE_BENCH_POD_")})
    log_dir = Path(os.environ.get("WSNODE_BENCH_LOGS", "/tmp/wsnode-bench"))
    log_dir.mkdir(parents=True, exist_ok=True)
    pods = [Pod(p, env, log_dir) for p in pod_ids]
    try:
        for pod in pods:
            await asyncio.to_thread(pod.wait_ready)
        yield pods
    finally:
        for pod in pods:
            pod.stop()
        await _cleanup(prefix, pod_ids)


async def _cleanup(prefix: str, pods: list[str], redis_url: str = REDIS_URL,
                   amqp_url: str = AMQP_URL) -> None:
    import aio_pika
    import redis.asyncio as aioredis

    from wsnode.keys import AmqpNames

    client = aioredis.from_url(redis_url)
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
    for i in range(0, len(keys), 1000):
        await client.delete(*keys[i:i + 1000])
    await client.aclose()
    names = AmqpNames(prefix)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for queue in [*(names.pod_queue(p) for p in pods), names.stranded_queue,
                      names.poison_queue]:
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
        for exchange in (names.exchange, names.stranded_exchange):
            with contextlib.suppress(Exception):
                await channel.exchange_delete(exchange)
