"""`make cluster`: the topology of docker-compose.yml on this machine, in the foreground.

Three pods (``wsnode serve`` on 127.0.0.2, .3 and .4, ports 8765/9765) on the
local Redis and RabbitMQ (``make services`` starts them), behind haproxy running
deploy/haproxy/haproxy.cfg, the same file as compose, on ws://127.0.0.1:8080/ws.
The pods use the development JWT secret and API key of ``make run`` (.dev.env).
Ctrl-C drains the pods (their clients get ``reconnect`` + 1012) and stops all.

Environment: WSNODE_REDIS_URL, WSNODE_AMQP_URL, WSNODE_KEY_PREFIX (defaults: the
local services, prefix ``ws``); CLUSTER_LB_PORT (8080), CLUSTER_STATS_PORT (8404),
CLUSTER_POD_PORT (8765), CLUSTER_ADMIN_PORT (9765).

``CLUSTER_HA=1`` (``make cluster HA=1``): highly available backends of its own,
on free loopback ports with their data in the log directory, instead of
WSNODE_AMQP_URL and WSNODE_REDIS_URL: a 3-node RabbitMQ cluster
(tests/support/rabbit_cluster.py; every pod gets the three URLs, each starting
with another node) and Redis Sentinel (tests/support/redis_cluster.py: a
master, a replica and three sentinels; the pods use ``redis+sentinel://``).
Sentinel rather than a Redis Cluster: it is the HA topology of docker-compose's
profile ha too, and what most deployments of one Redis's worth of data run; the
suite tests both (tests/cluster).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.deploy.loopback import (  # noqa: E402 (after the path is set)
    POD_HOSTS,
    LoopbackCluster,
    ensure_haproxy,
    port_free_on,
)
from tests.support.rabbit_cluster import RabbitCluster, Unavailable  # noqa: E402
from tests.support.redis_cluster import SentinelServers  # noqa: E402
from tests.support.redis_cluster import Unavailable as RedisUnavailable  # noqa: E402

DEV_ENV = ROOT / os.environ.get("WSNODE_DEV_ENV", ".dev.env")
BIN = Path(sys.executable).parent
PODS = ("pod-1", "pod-2", "pod-3")


def dev_secrets() -> dict[str, str]:
    """The JWT secret and API key of .dev.env (shared with `make run`), made once."""
    if not DEV_ENV.exists():
        old = os.umask(0o077)
        try:
            DEV_ENV.write_text(f"WSNODE_JWT_SECRET={secrets.token_hex(32)}\n"
                               f"WSNODE_API_KEY={secrets.token_hex(16)}\n")
        finally:
            os.umask(old)
    pairs = (line.split("=", 1) for line in DEV_ENV.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if k.strip().startswith("WSNODE_")}


class Tail(threading.Thread):
    """Print every new line of the cluster's log files, prefixed by their name."""

    def __init__(self, paths: dict[str, Path]) -> None:
        super().__init__(name="tail", daemon=True)
        self.paths = paths
        self.stop = threading.Event()

    def run(self) -> None:
        offsets = dict.fromkeys(self.paths, 0)
        width = max(map(len, self.paths))
        while not self.stop.wait(0.2):
            for name, path in self.paths.items():
                if not path.exists():
                    continue
                with path.open("rb") as f:
                    f.seek(offsets[name])
                    chunk = f.read()
                end = chunk.rfind(b"\n") + 1
                offsets[name] += end
                for line in chunk[:end].decode(errors="replace").splitlines():
                    say(f"{name:>{width}} | {line}")


def say(text: str, *, err: bool = False) -> None:
    """Print, but never let a closed terminal or pipe stop the shutdown."""
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr if err else sys.stdout, flush=True)


def redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def main() -> int:
    lb_port = int(os.environ.get("CLUSTER_LB_PORT", "8080"))
    stats_port = int(os.environ.get("CLUSTER_STATS_PORT", "8404"))
    pod_port = int(os.environ.get("CLUSTER_POD_PORT", "8765"))
    admin_port = int(os.environ.get("CLUSTER_ADMIN_PORT", "9765"))
    taken = [f"{h}:{p}" for h, p in [("127.0.0.1", lb_port), ("127.0.0.1", stats_port)]
             + [(h, p) for h in POD_HOSTS for p in (pod_port, admin_port)]
             if not port_free_on(h, p)]
    if taken:
        say(f"cluster: in use: {', '.join(taken)} (another `make cluster`?). Set "
            "CLUSTER_LB_PORT, CLUSTER_STATS_PORT, CLUSTER_POD_PORT or CLUSTER_ADMIN_PORT.",
            err=True)
        return 1
    haproxy = ensure_haproxy()
    redis_url = os.environ.get("WSNODE_REDIS_URL", "redis://127.0.0.1:6379/0")
    amqp_url = os.environ.get("WSNODE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    prefix = os.environ.get("WSNODE_KEY_PREFIX", "ws")
    env = {**dev_secrets(), "WSNODE_REDIS_URL": redis_url, "WSNODE_AMQP_URL": amqp_url,
           "WSNODE_KEY_PREFIX": prefix, "WSNODE_DRAIN_OVER": "2s",
           "WSNODE_DRAIN_TIMEOUT": "10s"}
    log_dir = Path(tempfile.mkdtemp(prefix="wsnode-cluster-"))
    rabbit = sentinel = None
    if os.environ.get("CLUSTER_HA", "").strip() not in ("", "0"):
        sentinel = start_redis_ha(log_dir)
        if sentinel is None:
            return 1
        redis_url = env["WSNODE_REDIS_URL"] = sentinel.url
        rabbit = start_rabbit_ha(log_dir)
        if rabbit is None:
            sentinel.close()
            return 1
        amqp_url = env["WSNODE_AMQP_URL"] = rabbit.url_list()
    cluster = LoopbackCluster(log_dir, env, pod_ids=PODS, port=pod_port, admin_port=admin_port,
                              lb_port=lb_port, stats_port=stats_port)
    if rabbit is not None:
        for i, pod in enumerate(cluster.pods):  # each pod starts on another node
            pod.env["WSNODE_AMQP_URL"] = rabbit.url_list(i)
    tail = Tail({**{p.pod_id: p.log_path for p in cluster.pods},
                 "lb": cluster.balancer.log_path})
    tail.start()
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        # Own sessions: Ctrl-C reaches this script only, which then drains the pods.
        cluster.start(haproxy, own_session=True)
        banner(cluster, redis_url, amqp_url, prefix, log_dir)
        if rabbit is not None and sentinel is not None:
            rabbit_banner(rabbit)
            redis_banner(sentinel)
        while not stopping.wait(0.5):
            if cluster.balancer.proc is not None and cluster.balancer.proc.poll() is not None:
                say("cluster: haproxy exited; stopping", err=True)
                return 1
            if all(p.proc is not None and p.proc.poll() is not None for p in cluster.pods):
                say("cluster: every pod has exited; stopping", err=True)
                return 1
        say("cluster: draining the pods (SIGTERM), then stopping haproxy")
        for pod in cluster.pods:
            if pod.proc is not None and pod.proc.poll() is None:
                pod.signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for pod in cluster.pods:
            if pod.proc is not None:
                try:
                    code = pod.proc.wait(max(0.1, deadline - time.monotonic()))
                    say(f"cluster: {pod.pod_id} exited {code}")
                except subprocess.TimeoutExpired:  # killed below
                    say(f"cluster: {pod.pod_id} did not stop in time: killed")
        return 0
    except RuntimeError as exc:
        say(f"cluster: {exc}", err=True)
        return 1
    finally:
        cluster.kill()
        if rabbit is not None:
            say("cluster: stopping the RabbitMQ nodes")
            rabbit.close()
        if sentinel is not None:
            say("cluster: stopping Redis and its sentinels")
            sentinel.close()
        time.sleep(0.3)
        tail.stop.set()
        tail.join(1)
        say(f"cluster: stopped (logs in {log_dir})")


def start_rabbit_ha(log_dir: Path) -> RabbitCluster | None:
    """HA=1: a 3-node RabbitMQ cluster of its own on free loopback ports (the
    shared broker is not touched), or None after saying why it cannot start."""
    say("cluster: HA=1: starting a 3-node RabbitMQ cluster (some seconds per node)")
    try:
        return RabbitCluster(log_dir / "rabbitmq", name="wsnode-ha").start()
    except Unavailable as exc:
        say(f"cluster: HA=1: {exc}", err=True)
        return None


def start_redis_ha(log_dir: Path) -> SentinelServers | None:
    """HA=1: a Redis master, its replica and three sentinels on free loopback
    ports (the shared Redis is not touched), or None after saying why not."""
    say("cluster: HA=1: starting Redis Sentinel (a master, a replica, three sentinels)")
    try:
        return SentinelServers(log_dir / "redis").start()
    except RedisUnavailable as exc:
        say(f"cluster: HA=1: {exc}", err=True)
        return None


def redis_banner(sentinel: SentinelServers) -> None:
    master = sentinel.current_master()
    replica = next(n for n in sentinel.data_nodes if n is not master)
    say(f"""Redis Sentinel (HA=1): master 127.0.0.1:{master.port} (pid {master.proc_pid}), replica
127.0.0.1:{replica.port}, sentinels {', '.join(s.address for s in sentinel.sentinels)}; the pods
use {sentinel.url}
Fail the master over to its replica (pods follow; ACK stores wait for the replica, none lost):
  redis-cli -p {sentinel.sentinels[0].port} SENTINEL FAILOVER {sentinel.name}
  redis-cli -p {sentinel.sentinels[0].port} SENTINEL GET-MASTER-ADDR-BY-NAME {sentinel.name}
""")


def rabbit_banner(rabbit: RabbitCluster) -> None:
    nodes = "\n".join(f"  {n.name}  {redact(n.url)}" for n in rabbit.nodes)
    say(f"""RabbitMQ cluster (HA=1), quorum queues for the shared queues; each pod lists every
node, starting with another one:
{nodes}
Stop the node pod-1 is connected to; pod-1 fails over to the next URL, nobody loses a message:
  {rabbit.nodes[0].ctl_command("stop_app")}
  {rabbit.nodes[0].ctl_command("start_app")}
""")


def banner(cluster: LoopbackCluster, redis_url: str, amqp_url: str, prefix: str,
           log_dir: Path) -> None:
    b = cluster.balancer
    rel = os.path.relpath(BIN, Path.cwd())
    # The swarm's notifications go to the pods' admin API: the balancer has none.
    admins = ",".join(p.admin_url for p in cluster.pods)
    say(f"""
wsnode cluster on loopback: {len(cluster.pods)} pods behind haproxy (deploy/haproxy/haproxy.cfg)
  balancer  {b.url}   stats {b.stats_url}/stats
  pods      {'  '.join(f'{p.pod_id} {p.ws_url} (admin {p.admin_url})' for p in cluster.pods)}
  backends  {redact(redis_url)}  {redact(amqp_url)}  key prefix {prefix!r}
  logs      {log_dir}
In another shell:
  set -a; . {os.path.relpath(DEV_ENV, Path.cwd())}; set +a
  export WSNODE_REDIS_URL={redis_url} WSNODE_AMQP_URL={amqp_url} WSNODE_KEY_PREFIX={prefix}
  export WSNODE_LOAD_ADMIN={admins}
  {rel}/python -m wsnode.examples.chat_client alice --url {b.url}
  {rel}/wsctl pods ls
  {rel}/wsctl send alice --type notification --payload '{{"text":"hi"}}' --ack --wait 5
  {rel}/wsctl drain pod-2 --over 5  # its clients reconnect through the balancer elsewhere
  {rel}/wsctl swarm --host {b.url.removesuffix("/ws")} --users 200 --spawn-rate 50 --run-time 20s
Ctrl-C drains the pods and stops everything.
""")


if __name__ == "__main__":
    sys.exit(main())
