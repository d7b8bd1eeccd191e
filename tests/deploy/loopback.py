"""The docker-compose topology on loopback, with real processes.

``docker-compose.yml`` runs three pods behind HAProxy, which finds them by asking
Docker's DNS for the service name (``server-template``): the name resolves to
every replica, and every replica listens on the same two ports. Here the pods
listen on 127.0.0.2, 127.0.0.3 and 127.0.0.4 (all of 127/8 is loopback on
Linux) on one port pair, and :class:`DnsResponder` answers for the service name
as Docker's DNS does, so ``deploy/haproxy/haproxy.cfg`` runs unchanged: only its
``LB_*`` addresses come from the environment. Redis and RabbitMQ are the shared
ones on 127.0.0.1 (the caller picks a key prefix).

Used by ``tests/deploy/test_loopback_cluster.py`` and ``make cluster``
(``scripts/cluster.py``). Every process is started here and stopped by pid.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.installs import one_at_a_time
from tests.support.pods import PodProcess

ROOT = Path(__file__).resolve().parents[2]
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
ENSURE_HAPROXY = ROOT / "scripts" / "ensure-haproxy.sh"
SERVICE = "wsnode"  # the pods' service name in docker-compose.yml
BACKEND = "pods"  # the backend of haproxy.cfg
POD_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
SPARE_HOSTS = ("127.0.0.5", "127.0.0.6", "127.0.0.7")  # for pods added later (scale up)


def haproxy_binary() -> str | None:
    found = shutil.which("haproxy")
    if found:
        return found
    return "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None


def ensure_haproxy() -> str:
    """The haproxy binary, installed with ``scripts/ensure-haproxy.sh`` if missing."""
    with one_at_a_time():  # apt-get of another worker holds dpkg's lock
        binary = haproxy_binary()
        if binary is None:
            subprocess.run([str(ENSURE_HAPROXY)], check=True, timeout=600)
            binary = haproxy_binary()
    if binary is None:
        raise RuntimeError("haproxy is not installed and scripts/ensure-haproxy.sh failed")
    return binary


def port_free_on(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` (as servers do, with
    SO_REUSEADDR: connections of a previous run in TIME_WAIT do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def shared_free_port(hosts: tuple[str, ...] = POD_HOSTS, avoid: tuple[int, ...] = ()) -> int:
    """A TCP port that is free on every one of ``hosts`` (the pods share ports)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind((hosts[0], 0))
            port = int(sock.getsockname()[1])
        if port not in avoid and all(port_free_on(h, port) for h in hosts):
            return port
    raise RuntimeError(f"no port free on all of {hosts}")


class DnsResponder:
    """A UDP DNS server for one name: A queries get every address of ``addresses``
    (as Docker's DNS answers for a service name), other types an empty answer,
    other names NXDOMAIN. Runs in a daemon thread; :meth:`close` stops it."""

    def __init__(self, name: str, addresses: list[str], host: str = "127.0.0.1") -> None:
        self.name = name.rstrip(".").lower()
        self.addresses = list(addresses)
        self.queries = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self._sock.settimeout(0.2)
        self.address = f"{host}:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dns", daemon=True)

    def start(self) -> DnsResponder:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            answer = self.answer(query)
            if answer is not None:
                self.queries += 1
                with contextlib.suppress(OSError):
                    self._sock.sendto(answer, peer)

    def answer(self, query: bytes) -> bytes | None:
        """The response to one query message, or None for garbage."""
        if len(query) < 12:
            return None
        ident, flags, qdcount = struct.unpack("!HHH", query[:6])
        if flags & 0x8000 or qdcount != 1:
            return None
        labels, pos = [], 12
        while pos < len(query) and query[pos] != 0:
            length = query[pos]
            labels.append(query[pos + 1:pos + 1 + length].decode("ascii", "replace"))
            pos += 1 + length
        pos += 1
        if pos + 4 > len(query):
            return None
        qtype, _qclass = struct.unpack("!HH", query[pos:pos + 4])
        question = query[12:pos + 4]
        known = ".".join(labels).lower() == self.name
        records = [ip for ip in self.addresses if known and qtype == 1]
        rcode = 0 if known else 3  # NXDOMAIN
        # QR, AA, RA, and RD echoed from the query.
        out_flags = 0x8000 | 0x0400 | 0x0080 | (flags & 0x0100) | rcode
        header = struct.pack("!HHHHHH", ident, out_flags, 1, len(records), 0, 0)
        body = b"".join(struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(ip)
                        for ip in records)
        return header + question + body


class LoopbackPod(PodProcess):
    """A pod listening on its own loopback address (``--host``), on shared ports."""

    def __init__(self, pod_id: str, host: str, port: int, admin_port: int, log_dir: Path,
                 env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        super().__init__(pod_id, log_dir, env, args)
        self.host, self.port, self.admin_port = host, port, admin_port

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    def launch(self, *, own_session: bool = False) -> None:
        """Start the process without waiting (see :meth:`wait_up`). ``own_session``
        keeps a terminal's Ctrl-C away from it, so its owner decides how it stops."""
        cmd = [sys.executable, "-m", "wsnode", "serve", "--pod-id", self.pod_id,
               "--host", self.host, "--port", str(self.port),
               "--admin-port", str(self.admin_port), *self.args]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=ROOT,
                                         start_new_session=own_session)

    def wait_up(self, timeout: float = 20.0) -> None:
        """Wait until the pod answers ``/readyz`` with 200, the balancer's own
        check. Not ``/healthz``: the admin port answers before the pod opens
        ``/ws`` (once its bus queue is consumed), and haproxy takes a server UP
        as soon as DNS names it, before its first check; a client it sent to a
        pod not yet serving would be redispatched to another."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pod {self.pod_id} exited {self.proc.returncode}:\n"
                                   + self.log())
            try:
                with urllib.request.urlopen(self.admin_url + "/readyz", timeout=1):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        raise RuntimeError(f"pod {self.pod_id} not ready within {timeout}s:\n" + self.log())

    def start(self, timeout: float = 20.0) -> LoopbackPod:
        self.launch()
        self.wait_up(timeout)
        return self


class Balancer:
    """``haproxy -db -f deploy/haproxy/haproxy.cfg`` with the loopback addresses."""

    def __init__(self, log_dir: Path, nameserver: str, pod_port: int, admin_port: int,
                 *, host: str = "127.0.0.1", port: int = 0, stats_port: int = 0) -> None:
        self.host = host
        self.port = port or shared_free_port((host,))
        self.stats_port = stats_port or shared_free_port((host,), avoid=(self.port,))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
        self.env.update(LB_BIND=f"{host}:{self.port}",
                        LB_STATS_BIND=f"{host}:{self.stats_port}", LB_NAMESERVER=nameserver)
        self.set_pod_ports(pod_port, admin_port)
        self.log_path = log_dir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    def set_pod_ports(self, pod_port: int, admin_port: int) -> None:
        """Where the pods listen (before :meth:`start`)."""
        self.env.update(LB_PODS=f"{SERVICE}:{pod_port}", LB_POD_ADMIN_PORT=str(admin_port))

    @property
    def stats_url(self) -> str:
        return f"http://{self.host}:{self.stats_port}"

    def start(self, binary: str, *, own_session: bool = False) -> Balancer:
        cmd = [binary, "-db", "-f", str(HAPROXY_CFG)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         start_new_session=own_session)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def servers(self) -> dict[str, str]:
        """``address -> status`` (UP, DOWN, MAINT, ...) of the pod slots that have an
        address, from the stats page's CSV."""
        with urllib.request.urlopen(self.stats_url + "/stats;csv", timeout=2) as resp:
            text = resp.read().decode()
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {row["addr"].rsplit(":", 1)[0]: row["status"].split()[0] for row in rows
                if row["pxname"] == BACKEND and row.get("addr")
                and row["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_for(self, want: dict[str, str], timeout: float = 20.0) -> dict[str, str]:
        """Wait until every address in ``want`` has its status; the last reading."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited {self.proc.returncode}:\n{self.log()[-4000:]}")
            with contextlib.suppress(OSError):
                seen = self.servers()
                if all(seen.get(addr) == status for addr, status in want.items()):
                    return seen
            time.sleep(0.1)
        raise RuntimeError(f"haproxy servers not {want} within {timeout}s: {seen}\n"
                           + self.log()[-4000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class LoopbackCluster:
    """Three pods (``pod_ids``) on :data:`POD_HOSTS`, found through DNS by the
    balancer. ``env`` is every pod's ``WSNODE_*`` environment."""

    def __init__(self, log_dir: Path, env: dict[str, str], *,
                 pod_ids: tuple[str, ...] = ("pod-1", "pod-2", "pod-3"),
                 args: tuple[str, ...] = ("--app", "wsnode.examples.chat"),
                 port: int = 0, admin_port: int = 0, lb_port: int = 0,
                 stats_port: int = 0) -> None:
        hosts = POD_HOSTS[:len(pod_ids)]
        every_host = POD_HOSTS + SPARE_HOSTS
        self._fixed_ports = bool(port or admin_port)
        self.port = port or shared_free_port(every_host)
        self.admin_port = admin_port or shared_free_port(every_host, avoid=(self.port,))
        self.log_dir, self.env, self.args = log_dir, env, list(args)
        self.pods = [LoopbackPod(pod_id, host, self.port, self.admin_port, log_dir, env,
                                 self.args) for pod_id, host in zip(pod_ids, hosts, strict=True)]
        self.dns = DnsResponder(SERVICE, list(hosts))
        self.balancer = Balancer(log_dir, self.dns.address, self.port, self.admin_port,
                                 port=lb_port, stats_port=stats_port)

    @property
    def url(self) -> str:
        return self.balancer.url

    def pod(self, pod_id: str) -> LoopbackPod:
        return next(p for p in self.pods if p.pod_id == pod_id)

    def start(self, haproxy: str, *, own_session: bool = False,
              timeout: float = 20.0) -> LoopbackCluster:
        """Start the DNS responder, the pods and haproxy; return once the balancer
        sees every pod UP."""
        self.dns.start()
        for attempt in range(3):
            for pod in self.pods:  # in parallel: each pod takes a second to import
                pod.launch(own_session=own_session)
            try:
                for pod in self.pods:
                    pod.wait_up(timeout)
                break
            except RuntimeError as exc:
                # A free port found here can be taken by another test before the pod
                # binds it: pick other ports (unless the caller fixed them) and retry.
                if "address already in use" not in str(exc) or self._fixed_ports \
                        or attempt == 2:
                    raise
                for pod in self.pods:
                    pod.kill()
                self.port = shared_free_port(POD_HOSTS + SPARE_HOSTS)
                self.admin_port = shared_free_port(POD_HOSTS + SPARE_HOSTS,
                                                   avoid=(self.port,))
                for pod in self.pods:
                    pod.port, pod.admin_port = self.port, self.admin_port
                self.balancer.set_pod_ports(self.port, self.admin_port)
        self.balancer.start(haproxy, own_session=own_session)
        self.balancer.wait_for({pod.host: "UP" for pod in self.pods}, timeout)
        return self

    def scale_up(self, pod_id: str, timeout: float = 20.0) -> LoopbackPod:
        """Start one more pod and publish its address under the service name, as
        ``docker compose up --scale`` does; return once the balancer has it UP."""
        host = next(h for h in POD_HOSTS + SPARE_HOSTS
                    if h not in {p.host for p in self.pods})
        pod = LoopbackPod(pod_id, host, self.port, self.admin_port, self.log_dir, self.env,
                          self.args)
        self.pods.append(pod)
        pod.start(timeout)
        self.dns.addresses.append(host)
        self.balancer.wait_for({host: "UP"}, timeout)
        return pod

    def kill(self) -> None:
        """SIGKILL the pods, stop haproxy and the DNS responder; safe to call twice."""
        for pod in self.pods:
            pod.kill()
        self.balancer.stop()
        self.dns.close()
