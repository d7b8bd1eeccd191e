"""``python -m bench.chaos`` (``make chaos MINUTES=5``): see the package docstring.

Exit status: 0 nothing lost, 1 something lost, 2 the harness could not
finish (start failed, bound exceeded), 130 interrupted (Ctrl-C, SIGTERM).
Everything it started is cleaned up in every case.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
from pathlib import Path

import orjson
from rich.console import Console

from bench.chaos.faults import KINDS
from bench.chaos.report import render
from bench.chaos.soak import Options, soak

DEFAULT_AMQP = os.environ.get("WSNODE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _kinds(value: str) -> tuple[str, ...]:
    if value == "all":
        return KINDS
    if value == "none":
        return ()
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown fault kind {', '.join(unknown)}: use all, none or some of "
            + ", ".join(KINDS))
    return kinds


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return number


def parse(argv: list[str] | None = None) -> tuple[Options, Path]:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=(
        "Randomized chaos soak of a 3-pod wsnode cluster on loopback: ACK-required and "
        "at-most-once traffic under pod kills, RabbitMQ cuts and Redis faults, then a "
        "check that every accepted ACK-required message was delivered or dead-lettered."))
    p.add_argument("--minutes", type=_positive, default=5.0, help="traffic and faults (5)")
    p.add_argument("--settle", type=_positive, default=120.0,
                   help="upper bound in seconds of the wait before the check (120; keep "
                        "it above the ~80 s a message takes to exhaust its resends)")
    p.add_argument("--pods", type=int, default=3, choices=range(2, 10), metavar="N",
                   help="pods, 2-9 (3)")
    p.add_argument("--users", type=int, default=12, choices=range(1, 1001), metavar="N",
                   help="users, every third with two devices (12)")
    p.add_argument("--ack-rate", type=float, default=15.0, help="ACK-required msg/s (15)")
    p.add_argument("--amo-rate", type=float, default=5.0, help="at-most-once msg/s (5)")
    p.add_argument("--expiring", type=float, default=0.05,
                   help="share of ACK-required messages with an expiresAt 2-10 s ahead (0.05)")
    p.add_argument("--fault-every", type=_positive, default=5.0,
                   help="mean seconds between faults (5)")
    p.add_argument("--churn-every", type=float, default=30.0,
                   help="mean seconds before a client away from its home pod goes back "
                        "(30; 0: never)")
    p.add_argument("--faults", type=_kinds, default=KINDS,
                   help="all (default), none, or a comma list of: " + ", ".join(KINDS))
    p.add_argument("--seed", type=int, default=None, help="random seed (printed)")
    p.add_argument("--amqp-url", default=DEFAULT_AMQP, help="the shared RabbitMQ")
    p.add_argument("--app", default="wsnode.examples.chat", help="--app of the pods")
    p.add_argument("--json", type=Path, default=Path("bench/results/chaos-latest.json"),
                   help="where the figures go (bench/results/chaos-latest.json)")
    p.add_argument("--keep-logs", action="store_true", help="keep the pod logs of a clean run")
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 31)
    return Options(minutes=a.minutes, settle=a.settle, pods=a.pods, users=a.users,
                   ack_rate=a.ack_rate, amo_rate=a.amo_rate, expiring=a.expiring,
                   fault_every=a.fault_every, churn_every=a.churn_every or None,
                   kinds=a.faults, seed=seed, amqp_url=a.amqp_url, app=a.app,
                   keep_logs=a.keep_logs), a.json


async def _main(options: Options, json_path: Path, console: Console) -> int:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        async with asyncio.timeout(options.bound):
            fig = await soak(options, console)
    except TimeoutError:
        console.log(f"[bold red]the run exceeded its bound of {options.bound:.0f}s[/]")
        return 2
    except asyncio.CancelledError:
        console.log("[yellow]interrupted: cleaned up[/]")
        return 130
    except RuntimeError as exc:
        console.log(f"[bold red]the harness could not finish: {exc}[/]")
        return 2
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_bytes(orjson.dumps(fig, option=orjson.OPT_INDENT_2))
    render(fig, str(json_path), console)
    return 1 if fig["ack"]["lost"] else 0


def main(argv: list[str] | None = None) -> int:
    options, json_path = parse(argv)
    # Piped output (make, CI logs) gets room for the two tables side by side.
    console = Console() if sys.stdout.isatty() else Console(width=110)
    console.log(f"chaos soak: seed {options.seed}, stops by itself within "
                f"{options.bound / 60:.1f} min")
    try:
        return asyncio.run(_main(options, json_path, console))
    except KeyboardInterrupt:  # Ctrl-C: asyncio.run cancelled the soak, which cleaned up
        return 130


if __name__ == "__main__":
    sys.exit(main())
