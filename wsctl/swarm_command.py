"""``wsctl swarm``, the command: options, the live view, the summary, the verdict.

The swarm itself (running Locust, reading its files, what failures mean) is
:mod:`wsctl.swarm`; ``wsctl.cli`` registers this function as the command.
"""

from __future__ import annotations

from typing import Annotated

import typer

from wsctl import output
from wsctl.envelope import parse_seconds
from wsctl.errors import CtlError, UsageProblem


def swarm_command(
    host: Annotated[str, typer.Option(
        "--host", metavar="URLS", help="Pod(s) to load: ws:// URLs, comma-separated.",
        show_default=False)],
    users: Annotated[int, typer.Option("--users", "-u", min=1, metavar="N",
                                       help="Swarm users.")] = 100,
    spawn_rate: Annotated[float, typer.Option(
        "--spawn-rate", "-r", min=0.1, metavar="RATE", help="Users started per second.")] = 20.0,
    run_time: Annotated[str, typer.Option("--run-time", "-t", metavar="DURATION",
                                          help="How long to run.")] = "60s",
    processes: Annotated[int | None, typer.Option(
        "--processes", metavar="N", help="Locust worker processes (-1: one per core).")] = None,
    scenario: Annotated[list[str] | None, typer.Option(
        "--scenario", metavar="USERCLASS",
        help="ChatUser, NotificationUser or ChurnUser (repeatable; default: the mix).")
    ] = None,
    locustfile: Annotated[str | None, typer.Option(
        "--locustfile", metavar="PATH", help="The swarm (default: ./loadtests).")] = None,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the summary (figures, failure reasons, hints) as one JSON "
        "document on stdout.")] = False,
) -> None:
    """Run the Locust swarm of loadtests/ headless and summarize it.

    Tokens are minted with WSNODE_JWT_SECRET; NotificationUser pushes through the
    pods' admin API with WSNODE_API_KEY (WSNODE_LOAD_ADMIN: its URLs). The pods
    need the chat app (--app wsnode.examples.chat). With WSNODE_REDIS_URL set,
    what the swarm left in Redis is deleted at the end. Exits 1 when a message
    was lost or a request failed, with the top failure reasons.
    """
    from wsctl import swarm as swarm_mod

    seconds = parse_seconds("--run-time", run_time)
    if seconds < 1:
        raise UsageProblem("--run-time must be at least 1s")
    path = swarm_mod.find_loadtests(locustfile)
    with output.progress() as show:
        final, code, log = swarm_mod.run_swarm(
            host=host, users=users, spawn_rate=spawn_rate, run_time=seconds,
            locustfile=path, processes=processes, scenarios=scenario or [],
            on_progress=lambda snap: show(output.swarm_table(snap.summary(), live=True)))
    summary = final.summary()
    if json_out:
        output.print_json(summary)
    else:
        output.print_table(output.swarm_table(summary), "no request made")
        if summary["failures"]:
            output.print_table(output.failures_table(summary["failures"]), "")
    if not final.rows:
        tail = " | ".join(log.strip().splitlines()[-3:])
        raise CtlError(f"the swarm made no request (locust exited {code}): {tail}")
    if summary["lost"] or summary["errors"]:
        top = summary["failures"][0] if summary["failures"] else None
        why = f"; most often: {top['reason']} ({top['count']}x)" if top else ""
        raise CtlError(f"{summary['lost']} message(s) lost, {summary['errors']} failed "
                       f"request(s){why}", "; ".join(summary["hints"])
                       or "see the failure reasons above (or --json)")
