"""The pod under test of ``bench/abuse.py``, its meters, and the cleanup of a run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from cluster import AMQP_URL, REDIS_URL, free_port


class PodProcess:
    """``wsnode serve`` from ``tree`` (with ``tree/.venv`` if it has one)."""

    def __init__(self, tree: Path, env: dict[str, str], nofile: int, log: Path) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.log = log
        python = tree / ".venv" / "bin" / "python"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(python if python.exists() else sys.executable), "-m", "wsnode", "serve",
                 "--pod-id", env["WSNODE_POD_ID"], "--port", str(self.port),
                 "--admin-port", str(self.admin_port), "--app", "wsnode.examples.chat"],
                cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C is ours to handle: no drain, a kill
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                                      (nofile, nofile)))

    async def ready(self, timeout: float = 30) -> None:
        import aiohttp
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the pod exited ({self.proc.returncode}): see {self.log}")
                with contextlib.suppress(OSError, aiohttp.ClientError, TimeoutError):
                    async with session.get(f"http://127.0.0.1:{self.admin_port}/readyz",
                                           timeout=aiohttp.ClientTimeout(total=1)) as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the pod was not ready in {timeout:g} s: see {self.log}")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Meter:
    """Samples the pod every 100 ms (peaks per phase) and reads Redis."""

    def __init__(self, pod: PodProcess, prefix: str) -> None:
        import redis.asyncio as aioredis
        self.pod, self.prefix = pod, prefix
        self.redis = aioredis.from_url(REDIS_URL)
        self.rss_peak = self.fds_peak = 0

    async def sample(self) -> None:
        while self.pod.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.rss_peak = max(self.rss_peak, self.pod.rss_kib())
                self.fds_peak = max(self.fds_peak, self.pod.fds())
            await asyncio.sleep(0.1)

    async def snapshot(self) -> dict[str, float]:
        info = await self.redis.info()
        return {"cpu_s": self.pod.cpu_s(), "log": self.pod.log.stat().st_size,
                "used_memory": info["used_memory"], "redis_cpu_s":
                float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
                "redis_commands": info["total_commands_processed"], "at": time.monotonic(),
                "own_cpu_s": sum(os.times()[:2])}

    async def prefix_usage(self) -> tuple[int, int]:
        """Keys under the run's prefix, and their bytes by ``MEMORY USAGE``."""
        keys = [k async for k in self.redis.scan_iter(match=f"{self.prefix}:*", count=1000)]
        total = 0
        for i in range(0, len(keys), 500):
            pipe = self.redis.pipeline(transaction=False)
            for key in keys[i:i + 500]:
                pipe.memory_usage(key, samples=0)
            total += sum(int(n or 0) for n in await pipe.execute())
        return len(keys), total


async def cleanup(prefix: str, pod_id: str) -> None:
    """Delete every Redis key and AMQP name of the run (the pod is dead by now)."""
    import aio_pika
    import redis.asyncio as aioredis

    from wsnode.keys import AmqpNames

    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for i in range(0, len(keys), 1000):
            await client.delete(*keys[i:i + 1000])
    finally:
        await client.aclose()
    names = AmqpNames(prefix)
    with contextlib.suppress(OSError, aio_pika.exceptions.AMQPError, TimeoutError):
        connection = await aio_pika.connect(AMQP_URL, timeout=5)
        async with connection:
            for queue in (names.pod_queue(pod_id), names.stranded_queue, names.poison_queue):
                channel = await connection.channel()
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await channel.queue_delete(queue)
            for exchange in (names.exchange, names.stranded_exchange):
                channel = await connection.channel()
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await channel.exchange_delete(exchange)
