"""``wsnode``: run a pod. Parses, configures, runs; nothing else.

``wsnode serve`` exits 0 after a SIGTERM/SIGINT drain, 2 on a bad setting or
option, 1 when it cannot start (port taken, bad ``--app``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import sys
from typing import Annotated

import typer

from wsnode import logs
from wsnode.errors import SettingsError
from wsnode.node import Node
from wsnode.settings import load_settings

log = logging.getLogger("wsnode.cli")

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="wsnode: a distributed WebSocket transport.")


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"wsnode: error: {message}", err=True)
    return typer.Exit(code)


def load_app(node: Node, spec: str) -> None:
    """Import ``pkg.module`` and call its ``setup(node)``, or ``pkg.module:func``'s
    ``func(node)``, so the module registers its handlers on this node."""
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    setup = getattr(module, attr or "setup", None)
    if not callable(setup):
        raise AttributeError(f"{module_name} has no callable {attr or 'setup'}(node)")
    setup(node)


@app.callback()
def _root() -> None:
    """Run and manage wsnode pods."""


@app.command()
def serve(
    pod_id: Annotated[str | None, typer.Option("--pod-id", help="Pod id (default: hostname)")]
    = None,
    host: Annotated[str | None, typer.Option(help="Interface for both ports")] = None,
    port: Annotated[int | None, typer.Option(help="WebSocket port [8765]")] = None,
    admin_port: Annotated[int | None, typer.Option(help="Admin API port [9765]")] = None,
    admin_host: Annotated[str | None, typer.Option(
        help="Interface of the admin port (default: --host)")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL (cluster mode)")] = None,
    amqp_url: Annotated[str | None, typer.Option(help="RabbitMQ URL (cluster mode)")] = None,
    app_spec: Annotated[str | None, typer.Option(
        "--app", help="Module whose setup(node) registers handlers, e.g. wsnode.examples.chat"
    )] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING, ERROR")] = None,
    log_format: Annotated[str | None, typer.Option(help="text or json")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Accept ?user=NAME without a token. Development only.")] = False,
) -> None:
    """Run one pod in the foreground. SIGTERM drains it, then it exits 0."""
    try:
        settings = load_settings(pod_id=pod_id, host=host, port=port, admin_port=admin_port,
                                 admin_host=admin_host,
                                 redis_url=redis_url, amqp_url=amqp_url, log_level=log_level,
                                 log_format=log_format)
        logs.configure(settings.log_level, settings.log_format)
        node = Node(settings, insecure=insecure)
    except SettingsError as exc:
        raise _fail(str(exc), 2) from None
    if insecure:
        log.warning("INSECURE MODE: connections are NOT authenticated (?user=NAME is "
                    "trusted). Never use this outside development.")
    if app_spec:
        try:
            load_app(node, app_spec)
        except (ImportError, AttributeError, ValueError) as exc:
            raise _fail(f"--app {app_spec}: {exc}", 1) from None
    try:
        asyncio.run(_run(node))
    except OSError as exc:
        raise _fail(f"cannot start: {exc.strerror or exc}", 1) from None


async def _run(node: Node) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    drain: asyncio.Task[None] | None = None

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            log.info("%s: draining, then exiting", signal.Signals(signum).name)
            stop.set()
        elif drain is not None:
            log.warning("second signal: exiting without finishing the drain")
            drain.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    async with node:
        # A signal, or a drain that asked the pod to exit when done.
        waiters = [loop.create_task(stop.wait()), loop.create_task(node.exit_requested.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        s = node.settings
        drain = loop.create_task(node.drain(min(s.drain_over, s.drain_timeout)))
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(drain, s.drain_timeout)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
