"""``wsnode``: run a pod. Parses, configures, runs; nothing else.

``wsnode serve`` exits 0 after a SIGTERM/SIGINT drain, 2 on a bad setting or
option, 1 when it cannot start (port taken, bad ``--app``). ``wsnode
--version`` prints the version.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import importlib
import logging
import signal
import sys
from typing import Annotated

import typer

from wsnode import admission, clihelp, logs
from wsnode.errors import SettingsError
from wsnode.eventloop import run_loop
from wsnode.node import Node
from wsnode.settings import load_settings

log = logging.getLogger("wsnode.cli")

app = typer.Typer(cls=clihelp.Group, add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  help="wsnode: a distributed WebSocket transport.")

PORT_TAKEN_HINT = ("another process listens there (another pod, or `make run`?): stop it, "
                   "or pick free ports with --port/--admin-port or WSNODE_PORT/"
                   "WSNODE_ADMIN_PORT (`make run` honours those two as well)")


def _fail(message: str, code: int, hint: str | None = None) -> typer.Exit:
    typer.echo(f"wsnode: error: {message}", err=True)
    if hint:
        typer.echo(f"hint: {hint}", err=True)
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


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"wsnode {clihelp.installed_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    """Run and manage wsnode pods."""


@app.command(cls=clihelp.Command,
             epilog="Example: wsnode serve --pod-id a --app wsnode.examples.chat")
def serve(
    pod_id: Annotated[str | None, typer.Option(
        "--pod-id", metavar="ID", help="Pod id [WSNODE_POD_ID; default: the hostname]")] = None,
    host: Annotated[str | None, typer.Option(
        metavar="HOST", help="Interface of both ports [WSNODE_HOST; 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(
        metavar="PORT", help="WebSocket port, 0 for any free one [WSNODE_PORT; 8765]")] = None,
    admin_port: Annotated[int | None, typer.Option(
        metavar="PORT", help="Admin API port [WSNODE_ADMIN_PORT; 9765]")] = None,
    admin_host: Annotated[str | None, typer.Option(
        metavar="HOST", help="Interface of the admin port [WSNODE_ADMIN_HOST; --host]")] = None,
    redis_url: Annotated[str | None, typer.Option(
        metavar="URL", help="Redis URL, cluster mode [WSNODE_REDIS_URL]")] = None,
    amqp_url: Annotated[str | None, typer.Option(
        metavar="URL", help="RabbitMQ URL, cluster mode [WSNODE_AMQP_URL]")] = None,
    app_spec: Annotated[str | None, typer.Option(
        "--app", metavar="MODULE",
        help="Module whose setup(node) registers handlers, e.g. wsnode.examples.chat")] = None,
    log_level: Annotated[str | None, typer.Option(
        metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR [WSNODE_LOG_LEVEL; INFO]")] = None,
    log_format: Annotated[str | None, typer.Option(
        metavar="FORMAT", help="text or json [WSNODE_LOG_FORMAT; text]")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Accept ?user=NAME without a token. Development only.")] = False,
) -> None:
    """Run one pod in the foreground. SIGTERM drains it, then it exits 0.

    Every setting is a WSNODE_* environment variable, also read from a .env file
    in the working directory; an option given here wins over both. Settings
    without an option (WSNODE_JWT_SECRET, WSNODE_API_KEY, WSNODE_RATE_LIMIT,
    WSNODE_ACK_TTL, ...) are listed in the README's "Settings" table.
    """
    try:
        settings = load_settings(pod_id=pod_id, host=host, port=port, admin_port=admin_port,
                                 admin_host=admin_host,
                                 redis_url=redis_url, amqp_url=amqp_url, log_level=log_level,
                                 log_format=log_format)
        logs.configure(settings.log_level, settings.log_format)
        # Every descriptor the hard limit allows: MAX_CONNECTIONS defaults from it.
        admission.raise_fd_limit()
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
        run_loop(_run(node), settings.event_loop)
    except OSError as exc:
        hint = PORT_TAKEN_HINT if exc.errno == errno.EADDRINUSE else None
        raise _fail(f"cannot start: {exc.strerror or exc}", 1, hint) from None


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
        # What the pod allocated to start (modules, settings, backends: ~80,000
        # objects) lives as long as the process: out of the collector's sight, a
        # full collection under load walks only what connections and messages
        # allocate (with them, full collections took 50 to 160 ms under a flood,
        # and every connection of the pod waited).
        gc.freeze()
        log.info("%d objects of the start frozen: full garbage collections skip them",
                 gc.get_freeze_count())
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
