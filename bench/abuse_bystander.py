"""The bystander of ``bench/abuse.py``, in a process of its own.

It runs apart so that the attacker's event loop never delays its clock
readings: one connection sends ``ping`` every ``interval`` s and times the
``pong`` (timeout 2 s: lost), and every second it opens a new connection (up to
the ``welcome``) and reads ``/healthz`` on the public and the admin port, each
on a new TCP connection (timeout 3 s). It prints one JSON line per sample,
stamped with ``time.monotonic()`` (one clock for every process), and
:class:`Bystander` in the parent assigns the samples to phases by that stamp.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson
from abuse_clients import outcome


def _emit(kind: str, t: float, **fields: object) -> None:
    sys.stdout.write(orjson.dumps({"k": kind, "t": t, **fields}).decode() + "\n")
    sys.stdout.flush()


async def _pinger(url: str, token: str, interval: float, timeout: float) -> None:
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

    n = 0
    while True:
        try:
            async with ws_connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                  open_timeout=timeout, max_size=None) as ws:
                _emit("connected", time.monotonic())
                while True:
                    n += 1
                    t0 = time.monotonic()
                    await ws.send(f'{{"type":"ping","payload":{{"n":{n}}}}}')
                    want = f'{{"type":"pong","payload":{{"n":{n}}}}}'
                    try:
                        async with asyncio.timeout(timeout):
                            while await ws.recv() != want:
                                pass
                        _emit("ping", t0, ms=(time.monotonic() - t0) * 1000)
                    except TimeoutError:
                        _emit("ping", t0, ms=None)
                    await asyncio.sleep(max(0.0, t0 + interval - time.monotonic()))
        except ConnectionClosed as exc:
            _emit("closed", time.monotonic(), code=exc.rcvd.code if exc.rcvd else 1006)
        except InvalidStatus as exc:
            _emit("closed", time.monotonic(), code=f"http {exc.response.status_code}")
        except (OSError, TimeoutError, WebSocketException) as exc:
            _emit("closed", time.monotonic(), code=outcome(exc))
        await asyncio.sleep(0.2)


async def _prober(url: str, token: str, health: str, admin_health: str,
                  timeout: float) -> None:
    import aiohttp
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import WebSocketException

    async def handshake() -> None:
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(timeout), ws_connect(
                    url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                await ws.recv()  # the welcome
            _emit("handshake", t0, ms=(time.monotonic() - t0) * 1000)
        except (OSError, TimeoutError, WebSocketException) as exc:
            _emit("handshake", t0, ms=None, why=outcome(exc))

    async def get(kind: str, session: aiohttp.ClientSession, where: str) -> None:
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(timeout), session.get(where) as response:
                await response.read()
                ok = response.status == 200
            _emit(kind, t0, ms=(time.monotonic() - t0) * 1000 if ok else None,
                  why=None if ok else f"http {response.status}")
        except (OSError, TimeoutError, aiohttp.ClientError) as exc:
            _emit(kind, t0, ms=None, why=outcome(exc))

    # A new TCP connection per probe, as a liveness probe makes: a kept-alive one
    # would not notice a pod that can no longer accept.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) \
            as session:
        while True:
            tick = time.monotonic()
            await asyncio.gather(handshake(), get("healthz", session, health),
                                 get("admin", session, admin_health))
            await asyncio.sleep(max(0.0, tick + 1.0 - time.monotonic()))


async def bystander(config: dict[str, object]) -> None:
    """Ping every ``interval`` s on one connection; probe every second."""
    host, port, admin = str(config["host"]), int(str(config["port"])), \
        int(str(config["admin_port"]))
    url = f"ws://{host}:{port}/ws"
    await asyncio.gather(
        _pinger(url, str(config["token"]), float(str(config["interval"])), 2.0),
        _prober(url, str(config["probe_token"]), f"http://{host}:{port}/healthz",
                f"http://{host}:{admin}/healthz", 3.0))


@dataclass
class Bystander:
    """The bystander's process and the samples it printed."""

    proc: asyncio.subprocess.Process
    samples: list[dict[str, object]] = field(default_factory=list)

    async def read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.samples.append(orjson.loads(line))

    def window(self, t0: float, t1: float) -> dict[str, object]:
        inside = [s for s in self.samples if t0 <= float(str(s["t"])) < t1]
        pings = [s["ms"] for s in inside if s["k"] == "ping"]
        ms = sorted(float(str(m)) for m in pings if m is not None)
        out: dict[str, object] = {
            "pings": len(pings), "lost": len(pings) - len(ms),
            "p50_ms": _rank(ms, 0.50), "p99_ms": _rank(ms, 0.99),
            "max_ms": round(ms[-1], 2) if ms else None,
            "disconnects": dict(Counter(str(s["code"]) for s in inside if s["k"] == "closed"))}
        for kind in ("handshake", "healthz", "admin"):
            probes = [s for s in inside if s["k"] == kind]
            failed = Counter(str(s.get("why")) for s in probes if s["ms"] is None)
            done = [float(str(s["ms"])) for s in probes if s["ms"] is not None]
            out[kind] = {"ok": len(done), "failed": dict(failed),
                         "max_ms": round(max(done), 1) if done else None}
        return out


def _rank(ms: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted ``ms``."""
    return round(ms[min(len(ms) - 1, max(0, math.ceil(q * len(ms)) - 1))], 2) if ms else None
