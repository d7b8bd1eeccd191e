"""One soak, start to end: world up, clients in, traffic under faults, heal,
settle, check, clean up. Returns the figures (see :mod:`bench.chaos.report`)."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rich.console import Console

from bench.chaos.checker import Verdict, amo_repeats, inspect, probe, settle
from bench.chaos.devices import Device, make_devices
from bench.chaos.faults import FaultInjector
from bench.chaos.report import figures
from bench.chaos.traffic import Ledger, Traffic
from bench.chaos.world import POD_SETTINGS, World

# Bounds of the steps around the traffic: the whole run ends within
# minutes + settle + these.
START_BOUND, HEAL_BOUND, TAIL_BOUND = 120.0, 120.0, 120.0


@dataclass(frozen=True, slots=True)
class Options:
    minutes: float
    settle: float
    pods: int
    users: int
    ack_rate: float
    amo_rate: float
    expiring: float
    fault_every: float
    churn_every: float | None
    kinds: tuple[str, ...]
    seed: int
    amqp_url: str
    app: str
    keep_logs: bool

    @property
    def bound(self) -> float:
        """Seconds after which the run stops whatever happens."""
        return self.minutes * 60 + self.settle + START_BOUND + HEAL_BOUND + TAIL_BOUND


async def _until(probe_: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not probe_():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


async def soak(o: Options, console: Console) -> dict[str, Any]:
    t0 = time.monotonic()

    def clock() -> float:
        return time.monotonic() - t0

    rng = random.Random(o.seed)
    workdir = Path(tempfile.mkdtemp(prefix="wsnode-chaos-"))
    world = World(workdir, pods=o.pods, amqp_url=o.amqp_url, app=o.app)
    devices: list[Device] = []
    device_tasks: list[asyncio.Task[None]] = []
    keep = o.keep_logs  # and the logs of a run with losses, or that failed
    # Should this process die before the finally below runs, no pod outlives it.
    atexit.register(world.kill_processes)
    try:
        console.log(f"starting Redis, {o.pods} pods (prefix {world.prefix}, logs {workdir})")
        await world.start()
        users = [f"u{i:02d}" for i in range(o.users)]
        devices = make_devices(users, world.pod_ids,
                               [world.pods[p].ws_url for p in world.pod_ids], clock, rng,
                               o.churn_every)
        device_tasks = [asyncio.create_task(d.run(), name=d.name) for d in devices]
        if not await _until(lambda: all(d.connected for d in devices), 60):
            raise RuntimeError("the clients did not all connect within 60 s")
        ledger = Ledger()
        traffic = Traffic(world, ledger, users, rng, clock,
                          ack_rate=o.ack_rate, amo_rate=o.amo_rate, expiring=o.expiring)
        injector = FaultInjector(world, rng, clock, kinds=o.kinds, mean_interval=o.fault_every)
        started = clock()
        until = started + o.minutes * 60
        console.log(f"traffic and faults for {o.minutes:g} min "
                    f"({o.ack_rate:g} ACK + {o.amo_rate:g} at-most-once msg/s, "
                    f"{len(devices)} devices, a fault every ~{o.fault_every:g}s)")
        traffic_task = asyncio.create_task(traffic.run(until))
        ticker = asyncio.create_task(_progress(console, clock, until, ledger, injector,
                                               devices))
        try:
            await injector.run(until)
        finally:
            ticker.cancel()
        traffic_seconds = clock() - started
        for device in devices:
            device.settle()
        console.log("faults stopped: healing the cluster")
        heal_problems = await world.heal()
        await traffic_task
        readiness = await world.wait_ready(60)
        connected = await _until(lambda: all(d.connected for d in devices), 60)
        console.log(f"settling (at most {o.settle:g}s)")
        verdict = await settle(world, ledger, devices, clock, o.settle)
        await inspect(world, injector, verdict)
        unreachable = await _unreachable(world, devices, verdict)
        await probe(world, verdict)
        repeated = await amo_repeats(world, ledger, devices)
        keep = keep or bool(verdict.lost)
        run = {"prefix": world.prefix, "seed": o.seed, "minutes": o.minutes,
               "pods": o.pods, "users": o.users, "ackRate": o.ack_rate,
               "amoRate": o.amo_rate, "expiring": o.expiring, "faultEvery": o.fault_every,
               "churnEvery": o.churn_every, "settleBound": o.settle,
               "settings": POD_SETTINGS, "logs": str(workdir),
               "startedAt": datetime.now(UTC).isoformat(timespec="seconds"),
               "seconds": {"traffic": round(traffic_seconds, 1),
                           "settle": round(verdict.settle_seconds, 1),
                           "total": round(clock(), 1)}}
        fig = figures(run=run, ledger=ledger, devices=devices, faults=injector,
                       verdict=verdict, extra={
                           "healProblems": heal_problems,
                           "restartFailures": world.restart_failures,
                           "harnessErrors": ledger.harness_errors,
                           "readinessAtEnd": readiness,
                           "devicesConnectedAtEnd": connected,
                           "usersMissingFromPresence": unreachable,
                           "amoRepeated": repeated,
                       })
    except (RuntimeError, OSError, TimeoutError):
        keep = True
        raise
    finally:
        for device in devices:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await device.stop()
        for task in device_tasks:
            task.cancel()
        await asyncio.gather(*device_tasks, return_exceptions=True)
        left = await world.close()
        atexit.unregister(world.kill_processes)
        if left:
            console.log(f"[yellow]AMQP names left behind: {left}[/]")
        if keep:
            console.log(f"pod logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return fig


async def _unreachable(world: World, devices: list[Device], verdict: Verdict) -> list[str]:
    """Users with a connected device whom presence does not know (messages to
    them would be dropped: the symptom of a dead heartbeat)."""
    out = []
    for user in sorted({d.user for d in devices if d.connected}):
        try:
            answer = await world.ask("GET", f"/v1/presence/{quote(user, safe='')}")
        except RuntimeError as exc:
            verdict.problems.append(f"presence of {user}: {exc}")
            continue
        if not (answer or {}).get("connections"):
            out.append(user)
    return out


async def _progress(console: Console, clock: Callable[[], float], until: float,
                    ledger: Ledger, injector: FaultInjector, devices: list[Device]) -> None:
    while clock() < until:
        await asyncio.sleep(min(30.0, max(0.1, until - clock())))
        accepted = sum(m.accepted for m in ledger.acks.values())
        console.log(f"t={clock():.0f}s ACK accepted {accepted}/{len(ledger.acks)}, "
                    f"at-most-once {len(ledger.amos)}, faults {len(injector.timeline)}, "
                    f"devices connected {sum(d.connected for d in devices)}/{len(devices)}")
