"""``wsctl``: the operator CLI. Parses options, calls a target, prints; nothing else.

Exit codes (DESIGN §5): 0 success, 1 error, 2 usage error, 3 when what was
asked did not happen (user offline, not acked in time, not found). Errors are
one line on stderr (see :mod:`wsctl.output`), never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from wsctl import documents as doc
from wsctl import operations, output, tokens
from wsctl.envelope import build_envelope, parse_seconds, read_payload
from wsctl.errors import CtlError, UsageProblem
from wsctl.operations import Outcome
from wsctl.swarm_command import swarm_command
from wsctl.target import Target, resolve_target
from wsnode import clihelp
from wsnode.auth import user_id_problem
from wsnode.protocol import Envelope
from wsnode.topics import topic_problem

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_TIMEOUT = "10s"

app = typer.Typer(name="wsctl", cls=clihelp.Group, add_completion=True, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  help="Operate wsnode: send to users, see who is online, drain pods.",
                  epilog="Example: wsctl pods ls --node http://127.0.0.1:9765")
presence_app = typer.Typer(cls=clihelp.Group, no_args_is_help=True,
                           help="Who is online, and where.")
pods_app = typer.Typer(cls=clihelp.Group, no_args_is_help=True,
                       help="The pods with a live lease, and their states.")
dlq_app = typer.Typer(cls=clihelp.Group, no_args_is_help=True,
                      help="Dead-lettered ACK-required messages.")
topics_app = typer.Typer(cls=clihelp.Group, no_args_is_help=True,
                         help="Topics and who is subscribed to them.")
app.add_typer(presence_app, name="presence")
app.add_typer(pods_app, name="pods")
app.add_typer(dlq_app, name="dlq")
app.add_typer(topics_app, name="topics")

JsonOpt = Annotated[bool, typer.Option(
    "--json", help="Print one JSON document on stdout: the admin API's answer.")]
NodeOpt = Annotated[str | None, typer.Option(
    "--node", envvar="WSNODE_NODE", metavar="URL", show_default=False,
    help="Admin URL of one pod, e.g. http://127.0.0.1:9765.")]
ApiKeyOpt = Annotated[str | None, typer.Option(
    "--api-key", envvar="WSNODE_API_KEY", metavar="KEY", show_default=False,
    help="The pods' admin API key (prefer the environment variable).")]
WatchOpt = Annotated[float | None, typer.Option(
    "--watch", metavar="SECONDS", help="Refresh every SECONDS until Ctrl-C (e.g. --watch 2).")]
TimeoutOpt = Annotated[str, typer.Option(
    "--timeout", metavar="DURATION", help="Give up on an HTTP call after this long.")]


def _print_version(value: bool) -> None:
    if value:
        output.print_line(f"wsctl {clihelp.installed_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    """Operate wsnode: send to users, see who is online, drain pods."""


def _reporting(command: Callable[P, None]) -> Callable[P, None]:
    """Turn a :class:`CtlError` into its error line and exit code."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except CtlError as exc:
            output.print_error(exc.message, exc.hint)
            raise typer.Exit(exc.exit_code) from None

    return run


def _watch(seconds: float, json_out: bool, render: Callable[[], Any]) -> None:
    """Redraw ``render()`` every ``seconds`` until Ctrl-C (exit 0)."""
    if json_out:
        raise UsageProblem("--watch is for humans: for machines, run with --json in a loop")
    if seconds < 0.2:
        raise UsageProblem("--watch needs at least 0.2 seconds between refreshes")
    with contextlib.suppress(KeyboardInterrupt), output.live() as show:
        while True:
            show(render())
            time.sleep(seconds)


def _call(node: str | None, api_key: str | None, timeout: str,
          operation: Callable[[Target], Awaitable[T]]) -> T:
    """Run ``operation`` on the target the options name, in a fresh event loop
    that is closed, with the target, before this returns."""
    target = resolve_target(node, api_key=api_key, timeout=parse_seconds("--timeout", timeout))

    async def run() -> T:
        async with contextlib.aclosing(target):
            return await operation(target)

    return asyncio.run(run())


def _finish(outcome: Outcome[T], json_out: bool, show: Callable[[T], None]) -> None:
    """Print the outcome's document (JSON or human), then exit 3 if it fell short."""
    if json_out:
        output.print_json(outcome.document)
    else:
        show(outcome.document)
    if outcome.problem is not None:
        raise outcome.problem


def _user_id(value: str | None) -> str | None:
    """The rule of every pod (1-256 characters), checked before anything is sent."""
    problem = user_id_problem(value) if value is not None else None
    if problem is not None:
        raise typer.BadParameter(problem)
    return value


def _user_ids(values: list[str]) -> list[str]:
    for value in values:
        _user_id(value)
    return values


def _topic_name(value: str) -> str:
    """The pods' rule for topic names, checked before anything is sent."""
    problem = topic_problem(value)
    if problem is not None:
        raise typer.BadParameter(problem)
    return value


TypeOpt = Annotated[str, typer.Option("--type", "-t", metavar="TYPE", show_default=False,
                                      help="Message type, e.g. notification.")]
PayloadOpt = Annotated[str | None, typer.Option(
    "--payload", "-p", metavar="JSON|@FILE",
    help="Payload: JSON text, @file to read it from a file, @- from stdin.")]
IdOpt = Annotated[str | None, typer.Option(
    "--id", metavar="ID", help="Message id (clients dedup on it).")]
ExpiresOpt = Annotated[str | None, typer.Option(
    "--expires-in", metavar="DURATION", help="Not delivered after this, e.g. 30s, 5m.")]


# -- send ---------------------------------------------------------------------

def _show_send(report: doc.SendReport) -> None:
    if not operations.offline(report):
        output.print_line(output.send_summary(report))


@app.command(cls=clihelp.Command,
             epilog="Example: wsctl send alice --type notification "
                    "--payload '{\"text\": \"hi\"}' --ack --wait 5; "
                    "wsctl send alice bob carol --type notification")
@_reporting
def send(
    users: Annotated[list[str], typer.Argument(
        metavar="USER", help="User id(s) to send to: several make one send to many users "
        "(one message per pod).", show_default=False, callback=_user_ids)],
    msg_type: TypeOpt,
    payload: PayloadOpt = None,
    msg_id: IdOpt = None,
    ack: Annotated[bool, typer.Option(
        "--ack", help="Require an ACK: stored, resent until acked. Makes an id if none.")] = False,
    expires_in: ExpiresOpt = None,
    wait: Annotated[str | None, typer.Option(
        "--wait", metavar="SECONDS",
        help="With --ack and one USER: wait this long for the ACK.")] = None,
    trace: Annotated[bool, typer.Option(
        "--trace", help="Leave a trail for wsctl trace (ACK-required ones always do). "
        "Makes an id if none.")] = False,
    node: NodeOpt = None, api_key: ApiKeyOpt = None, timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_out: JsonOpt = False,
) -> None:
    """Send a message to every connection of each USER, on any pod.

    Exits 3 when a USER is offline (without --ack), or not acked within --wait.
    """
    if wait is not None and not ack:
        raise UsageProblem("--wait needs --ack: only ACK-required messages are acknowledged")
    if wait is not None and len(users) > 1:
        raise UsageProblem("--wait takes one USER: see each user's ACK with "
                           "wsctl trace ID --user USER")
    wait_seconds = parse_seconds("--wait", wait) if wait is not None else None
    expires = parse_seconds("--expires-in", expires_in) if expires_in is not None else None
    envelope = build_envelope(msg_type, payload=read_payload(payload), msg_id=msg_id,
                              ack=ack, expires_in=expires, now_ms=output.now_ms(),
                              need_id=trace)
    if len(users) > 1:
        many = _call(node, api_key, timeout, lambda t: operations.send_many(t, users, envelope))
        _finish(many, json_out, lambda r: output.print_line(output.many_summary(r)))
        return
    outcome = _call(node, api_key, timeout,
                    lambda t: operations.send(t, users[0], envelope, wait_seconds, trace=trace))
    _finish(outcome, json_out, _show_send)


@app.command(cls=clihelp.Command,
             epilog="Example: wsctl broadcast --type maintenance --payload '{\"in\": \"5m\"}'")
@_reporting
def broadcast(
    msg_type: TypeOpt, payload: PayloadOpt = None, msg_id: IdOpt = None,
    expires_in: ExpiresOpt = None,
    node: NodeOpt = None, api_key: ApiKeyOpt = None, timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_out: JsonOpt = False,
) -> None:
    """Send a message to every connection of every pod, once (at most once).

    No --ack: a broadcast is not stored. For a message every user must get,
    send it to the users: wsctl send U1 U2 ... --ack. Exits 3 when no pod took it.
    """
    envelope = _envelope(msg_type, payload, msg_id, expires_in)
    outcome = _call(node, api_key, timeout, lambda t: operations.broadcast(t, envelope))
    _finish(outcome, json_out, lambda r: output.print_line(output.fanout_summary(r)))


@app.command(cls=clihelp.Command,
             epilog="Example: wsctl publish room:42 --type room_message "
                    "--payload '{\"text\": \"hi\"}'")
@_reporting
def publish(
    topic: Annotated[str, typer.Argument(metavar="TOPIC", help="Topic to publish to.",
                                         show_default=False, callback=_topic_name)],
    msg_type: TypeOpt, payload: PayloadOpt = None, msg_id: IdOpt = None,
    expires_in: ExpiresOpt = None,
    node: NodeOpt = None, api_key: ApiKeyOpt = None, timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_out: JsonOpt = False,
) -> None:
    """Send a message to every connection subscribed to TOPIC, on any pod (at most once).

    Exits 3 when nobody is subscribed to TOPIC (then nobody got it).
    """
    envelope = _envelope(msg_type, payload, msg_id, expires_in)
    outcome = _call(node, api_key, timeout, lambda t: operations.publish(t, topic, envelope))
    _finish(outcome, json_out, lambda r: output.print_line(output.publish_summary(r)))


def _envelope(msg_type: str, payload: str | None, msg_id: str | None,
              expires_in: str | None) -> Envelope:
    expires = parse_seconds("--expires-in", expires_in) if expires_in is not None else None
    return build_envelope(msg_type, payload=read_payload(payload), msg_id=msg_id, ack=False,
                          expires_in=expires, now_ms=output.now_ms())


# -- topics -------------------------------------------------------------------

@topics_app.command("ls", cls=clihelp.Command, epilog="Example: wsctl topics ls --json")
@_reporting
def topics_ls(
    watch: WatchOpt = None,
    node: NodeOpt = None, api_key: ApiKeyOpt = None, timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_out: JsonOpt = False,
) -> None:
    """List the topics with a subscriber: topic, connections, pods."""
    if watch is not None:
        _watch(watch, json_out, lambda: output.topics_table(
            _call(node, api_key, timeout, lambda t: t.topics())))
        return
    document = _call(node, api_key, timeout, lambda t: t.topics())
    _finish(Outcome(document), json_out,
            lambda d: output.print_table(output.topics_table(d), "no topic has a subscriber"))


@topics_app.command("get", cls=clihelp.Command, epilog="Example: wsctl topics get room:42")
@_reporting
def topics_get(
    topic: Annotated[str, typer.Argument(metavar="TOPIC", help="Topic name.",
                                         show_default=False, callback=_topic_name)],
    node: NodeOpt = None, api_key: ApiKeyOpt = None, timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_out: JsonOpt = False,
) -> None:
    """Show who is subscribed to TOPIC: connections per pod. Exits 3 when nobody is."""
    outcome = _call(node, api_key, timeout, lambda t: operations.topic(t, topic))
    _finish(outcome, json_out, lambda d: output.print_table(output.topic_table(d), ""))


# -- presence -----------------------------------------------------------------

@presence_app.command("ls", cls=clihelp.Command,
                      epilog="Example: wsctl presence ls --pod pod-a")
@_reporting
def presence_ls(
    pod: Annotated[str | None, typer.Option("--pod", metavar="POD",
                                            help="Only users on this pod.")] = None,
    watch: WatchOpt = None,
    node: NodeOpt = None, api_key: ApiKeyOpt = None, timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_out: JsonOpt = False,
) -> None:
    """List the users online: user, connections, pods."""
    if watch is not None:
        _watch(watch, json_out, lambda: output.presence_table(
            _call(node, api_key, timeout, lambda t: t.presence(pod))))
        return
    document = _call(node, api_key, timeout, lambda t: t.presence(pod))
    _finish(Outcome(document), json_out,
            lambda d: output.print_table(output.presence_table(d), "no user online"))


def _show_user(document: doc.UserPresence) -> None:
    if document["connections"]:  # offline: the exit-3 error line says it all
        output.print_table(output.user_table(document), "")


@presence_app.command("get", cls=clihelp.Command,
                      epilog="Example: wsctl presence get alice --json")
@_reporting
def presence_get(
    user: Annotated[str, typer.Argument(metavar="USER", help="User id.", show_default=False,
                                        callback=_user_id)],
    node: NodeOpt = None, api_key: ApiKeyOpt = None, timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_out: JsonOpt = False,
) -> None:
    """Show USER's connections: conn id, pod, connected since. Exits 3 when offline."""
    outcome = _call(node, api_key, timeout, lambda t: operations.user_presence(t, user))

    _finish(outcome, json_out, _show_user)


# -- pods ---------------------------------------------------------------------

@pods_app.command("ls", cls=clihelp.Command,
                      epilog="Example: wsctl pods ls --node http://127.0.0.1:9765")
@_reporting
def pods_ls(
    watch: WatchOpt = None,
    node: NodeOpt = None, api_key: ApiKeyOpt = None, timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_out: JsonOpt = False,
) -> None:
    """List the pods with a live lease: state, connections, users, last heartbeat.

    A pod whose lease lives but whose admin port does not answer (crashed, cut
    off) is shown unreachable until its lease runs out.
    """
    if watch is not None:
        _watch(watch, json_out, lambda: output.pods_table(
            _call(node, api_key, timeout, lambda t: t.pods())))
        return
    document = _call(node, api_key, timeout, lambda t: t.pods())
    _finish(Outcome(document), json_out,
            lambda d: output.print_table(output.pods_table(d), "no live pod"))


# -- drain --------------------------------------------------------------------

def _show_drain(started: doc.DrainStarted) -> None:
    line = f"pod {started['pod']} is draining over {started['overSeconds']:g}s"
    if started.get("drained"):
        line = f"pod {started['pod']} is drained: no connection left"
    if started.get("exit"):
        line += "; its process exits once drained"
    output.print_line(line)


@app.command(cls=clihelp.Command, epilog="Example: wsctl drain pod-a --over 10 --wait")
@_reporting
def drain(
    pod: Annotated[str, typer.Argument(metavar="POD", help="Pod id to drain.",
                                       show_default=False)],
    over: Annotated[str, typer.Option(
        "--over", metavar="SECONDS", help="Spread the reconnects over this long.")] = "0",
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait until the pod holds no connection (at most --over + 30s).")
    ] = False,
    then_exit: Annotated[bool, typer.Option(
        "--exit", help="End the pod's process once drained (exit 0, as after SIGTERM); "
                       "without it a drained pod stays up, listed as draining.")] = False,
    node: NodeOpt = None, api_key: ApiKeyOpt = None, timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_out: JsonOpt = False,
) -> None:
    """Drain POD: its clients are told to reconnect elsewhere; new handshakes get 503.

    Exits 3 when POD is not found, or with --wait when it is not drained in time.
    """
    over_seconds = parse_seconds("--over", over, positive=False)
    outcome = _call(node, api_key, timeout,
                    lambda t: operations.drain(t, pod, over_seconds, wait, then_exit))
    _finish(outcome, json_out, _show_drain)


# -- dlq ----------------------------------------------------------------------

@dlq_app.command("ls", cls=clihelp.Command,
                      epilog="Example: wsctl dlq ls --user alice --limit 20")
@_reporting
def dlq_ls(
    user: Annotated[str | None, typer.Option("--user", metavar="USER", callback=_user_id,
                                             help="Only this user's.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, metavar="N",
                                       help="At most N messages.")] = 100,
    node: NodeOpt = None, api_key: ApiKeyOpt = None, timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_out: JsonOpt = False,
) -> None:
    """List dead-lettered messages: id, user, type, attempts, reason."""
    document = _call(node, api_key, timeout, lambda t: t.dead_letters(user, limit))
    _finish(Outcome(document), json_out,
            lambda d: output.print_table(output.dead_letters_table(d), "no dead letter"))


def _show_retry(result: doc.RetryResult) -> None:
    for report in result["retried"]:
        output.print_line(f"retried for {report['user']}: {output.send_summary(report)}")


@dlq_app.command("retry", cls=clihelp.Command,
                      epilog="Example: wsctl dlq retry msg-123 --user alice")
@_reporting
def dlq_retry(
    msg_id: Annotated[str, typer.Argument(metavar="ID", help="Message id.",
                                          show_default=False)],
    user: Annotated[str | None, typer.Option(
        "--user", metavar="USER", help="Only this user's dead letter of that id.",
        callback=_user_id)] = None,
    node: NodeOpt = None, api_key: ApiKeyOpt = None, timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_out: JsonOpt = False,
) -> None:
    """Send dead letters with id ID again (same id). Exits 3 when there is none."""
    outcome = _call(node, api_key, timeout, lambda t: operations.retry_dead(t, msg_id, user))
    _finish(outcome, json_out, _show_retry)


# -- trace --------------------------------------------------------------------

@app.command(name="trace", cls=clihelp.Command,
             epilog="Example: wsctl trace msg-123 --user alice")
@_reporting
def trace_cmd(
    msg_id: Annotated[str, typer.Argument(metavar="ID", help="Message id.",
                                          show_default=False)],
    user: Annotated[str | None, typer.Option(
        "--user", metavar="USER", help="Only the trail of this user's message of that id.",
        callback=_user_id)] = None,
    node: NodeOpt = None, api_key: ApiKeyOpt = None, timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_out: JsonOpt = False,
) -> None:
    """Where message ID is: stored, routed to which pods, delivered, resent, acked, dead.

    Exits 3 when no trail is known for ID.
    """
    outcome = _call(node, api_key, timeout, lambda t: operations.trace(t, msg_id, user))
    _finish(outcome, json_out, lambda d: output.print_table(output.trail_table(d), "no event"))


# -- doctor -------------------------------------------------------------------

@app.command(cls=clihelp.Command,
             epilog="Example: wsctl doctor   (with WSNODE_REDIS_URL and WSNODE_AMQP_URL set)")
@_reporting
def doctor(
    node: NodeOpt = None, api_key: ApiKeyOpt = None,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the verdict and every check as one JSON document on stdout.")
    ] = False,
) -> None:
    """Check the health of the cluster, or of one pod with --node.

    Checks Redis and RabbitMQ, every pod's readiness and queue, presence left
    behind by dead pods, and the ACK and dead-letter stores: one line each,
    OK, WARN or FAIL with a hint. Exits 1 when a check FAILs.
    """
    from wsctl import doctor as doc_mod
    from wsctl.target import NO_TARGET, check_node_url
    from wsnode.errors import SettingsError
    from wsnode.settings import load_settings

    if node:
        url = check_node_url(node)
        checks = asyncio.run(doc_mod.node_checks(url, api_key))
    else:
        try:
            settings = load_settings()
        except SettingsError as exc:
            raise UsageProblem(str(exc)) from None
        if not settings.redis_url:
            raise CtlError(NO_TARGET)
        checks = asyncio.run(doc_mod.cluster_checks(settings))
    verdict = doc_mod.verdict(checks)
    if json_out:
        output.print_json({"status": verdict.value, "checks": [c.to_json() for c in checks]})
    else:
        output.print_table(output.doctor_table(checks), "no check ran")
    if verdict is doc_mod.Status.FAIL:
        failed = [c.name for c in checks if c.status is doc_mod.Status.FAIL]
        raise CtlError(f"unhealthy: {', '.join(failed)}", "see the hints above")


# -- swarm --------------------------------------------------------------------

app.command(name="swarm", cls=clihelp.Command,
            epilog="Example: wsctl swarm --host ws://127.0.0.1:8765,ws://127.0.0.1:8766 "
                   "--users 2000 --spawn-rate 200 --run-time 60s")(_reporting(swarm_command))


# -- local commands -------------------------------------------------------------

@app.command(cls=clihelp.Command, epilog="Example: TOKEN=$(wsctl token alice --ttl 15m)")
@_reporting
def token(
    user: Annotated[str, typer.Argument(metavar="USER", help="User id the token is for.",
                                        show_default=False, callback=_user_id)],
    ttl: Annotated[str, typer.Option("--ttl", metavar="DURATION",
                                     help="Lifetime: 90, 30s, 15m, 1h, 1d.")] = "1h",
    topic: Annotated[list[str] | None, typer.Option(
        "--topic", metavar="TOPIC", callback=lambda v: [_topic_name(t) for t in v or []],
        help="Subscribe the connection to TOPIC at connect (the token's topics "
             "claim); repeat for several.")] = None,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the token, user and expiry (epoch ms) as one JSON document.")
    ] = False,
) -> None:
    """Mint a JWT for USER with WSNODE_JWT_SECRET (dev and tests). No network.

    Prints only the token, so TOKEN=$(wsctl token alice) works.
    """
    minted = tokens.mint(user, parse_seconds("--ttl", ttl), topics=topic or [])
    if json_out:
        output.print_json(minted.to_json())
    else:
        output.print_line(minted.token)


@app.command(cls=clihelp.Command, epilog="Example: wsctl version --json")
@_reporting
def version(json_out: Annotated[bool, typer.Option(
        "--json", help='Print {"wsctl": VERSION} on stdout.')] = False) -> None:
    """Print the version of wsctl (also: wsctl --version)."""
    number = clihelp.installed_version()
    if json_out:
        output.print_json({"wsctl": number})
    else:
        output.print_line(f"wsctl {number}")


def main() -> None:
    """Console entry point (``wsctl``)."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
