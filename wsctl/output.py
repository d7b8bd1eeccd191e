"""What wsctl prints.

* ``--json``: exactly one JSON document on stdout (:func:`print_json`).
* humans: one summary line, or a rich table, on stdout.
* errors: ``wsctl: error: <message>`` on stderr, one line, plus an optional
  ``hint: <hint>`` line (:func:`print_error`); never a traceback.

Renderers are pure (document in, text or table out) and never interpret rich
markup in data, so a user id like ``[red]x`` prints as it is.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import orjson
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from wsctl import documents as doc

STATE_STYLES = {"active": "green", "draining": "yellow", "unreachable": "bold red"}


def now_ms() -> int:
    return int(time.time() * 1000)


def _console() -> Console:
    # Built per call so that it writes to whatever sys.stdout is now (tests swap it).
    return Console(file=sys.stdout, highlight=False)


def print_json(document: Any) -> None:
    """One JSON document, one line, on stdout."""
    sys.stdout.write(orjson.dumps(document).decode() + "\n")
    sys.stdout.flush()


def print_line(text: str) -> None:
    """A plain line for humans on stdout (not wrapped, no markup)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def print_error(message: str, hint: str | None = None) -> None:
    """``wsctl: error: ...`` (and ``hint: ...``) on stderr, newlines flattened."""
    lines = [f"wsctl: error: {_one_line(message)}"]
    if hint:
        lines.append(f"hint: {_one_line(hint)}")
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()


def print_table(table: Table, empty: str) -> None:
    """The table on stdout, or the line ``empty`` when it has no row."""
    if table.row_count:
        _console().print(table)
    else:
        print_line(empty)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- times --------------------------------------------------------------------

def ago(epoch_ms: int, now: int | None = None) -> str:
    """``"2s ago"``, ``"5m ago"``, ``"3h ago"``, ``"2d ago"`` (clock skew reads as 0s)."""
    seconds = max(0, ((now if now is not None else now_ms()) - epoch_ms) // 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def local_time(epoch_ms: int, now: int | None = None) -> str:
    """``"2024-05-01 12:00:03 (5s ago)"`` in the local time zone."""
    when = datetime.fromtimestamp(epoch_ms / 1000).astimezone()
    return f"{when:%Y-%m-%d %H:%M:%S} ({ago(epoch_ms, now)})"


# -- send ---------------------------------------------------------------------

def send_summary(report: doc.SendReport) -> str:
    """One line: where a message went and whether it is stored for ACK."""
    msg_id = report.get("id")
    if report.get("duplicate"):
        return (f"duplicate: id {msg_id} was already sent to {report['user']} "
                f"(seq {report['seq']}); not stored or delivered again")
    pods = report["pods"]
    where = (f"delivered to {report['local']} connection(s) directly, "
             f"published to {len(pods)} pod(s)")
    if pods:
        where += f" ({', '.join(pods)})"
    failed = report.get("failedPods") or []
    if failed:
        where += f"; could not publish to {', '.join(failed)}"
    if report["stored"]:
        where += f"; stored for ACK as seq {report['seq']} (id {msg_id})"
    elif msg_id:
        where += f" (id {msg_id})"
    state = report.get("state")
    return f"{where}; {state}" if state else where


def many_summary(report: doc.ManySendReport) -> str:
    """One line: how many users got a message sent to several, and where."""
    pods = report["pods"]
    line = (f"{len(report['reached'])} of {report['users']} users reached: "
            f"{report['local']} connection(s) directly, published to {len(pods)} pod(s)")
    if pods:
        line += f" ({', '.join(pods)})"
    if report["failedPods"]:
        line += f"; could not publish to {', '.join(report['failedPods'])}"
    if "stored" in report:
        line += f"; stored for ACK for {len(report['stored'])}"
        others = (("duplicate", len(report.get("duplicate", []))),
                  ("settled", len(report.get("settled", []))),
                  ("refused", len(report.get("refused", {}))))
        line += "".join(f", {name} for {n}" for name, n in others if n)
    return line + (f" (id {report['id']})" if report.get("id") else "")


def fanout_summary(report: doc.BroadcastReport) -> str:
    """One line: where a broadcast went."""
    pods = report["pods"]
    line = (f"delivered to {report['local']} connection(s) directly, "
            f"published to {len(pods)} pod(s)")
    if pods:
        line += f" ({', '.join(pods)})"
    if report["failedPods"]:
        line += f"; could not publish to {', '.join(report['failedPods'])}"
    return line


def publish_summary(report: doc.PublishReport) -> str:
    """One line: who got a topic publish."""
    where = fanout_summary({"local": report["local"], "pods": report["pods"],
                            "failedPods": report["failedPods"]})
    return f"{report['subscribers']} subscriber(s) of {report['topic']}: {where}"


# -- tables -------------------------------------------------------------------

def _table(*columns: str) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def presence_table(document: doc.PresenceList) -> Table:
    table = _table("user", "connections", "pods")
    for row in document["users"]:
        table.add_row(Text(row["user"]), str(row["connections"]), Text(", ".join(row["pods"])))
    return table


def topics_table(document: doc.TopicList) -> Table:
    table = _table("topic", "connections", "pods")
    for row in document["topics"]:
        table.add_row(Text(row["topic"]), str(row["connections"]), Text(", ".join(row["pods"])))
    return table


def topic_table(document: doc.TopicDetail) -> Table:
    table = _table("pod", "connections")
    for row in document["pods"]:
        table.add_row(Text(row["pod"]), str(row["connections"]))
    return table


def user_table(document: doc.UserPresence, now: int | None = None) -> Table:
    table = _table("conn id", "pod", "connected since")
    for conn in document["connections"]:
        table.add_row(Text(conn["connId"]), Text(conn["pod"]), local_time(conn["since"], now))
    return table


def pods_table(document: doc.PodList, now: int | None = None) -> Table:
    table = _table("pod", "state", "connections", "users", "last heartbeat")
    for pod in document["pods"]:
        state = Text(pod["state"], style=STATE_STYLES.get(pod["state"], ""))
        table.add_row(Text(pod["pod"]), state, str(pod["connections"]), str(pod["users"]),
                      ago(pod["lastHeartbeat"], now))
    return table


def dead_letters_table(document: doc.DeadLetterList, now: int | None = None) -> Table:
    table = _table("id", "user", "type", "seq", "attempts", "reason", "dead")
    for msg in document["messages"]:
        table.add_row(Text(msg["id"]), Text(msg["user"]), Text(msg["type"]), str(msg["seq"]),
                      str(msg["attempts"]), msg["reason"], ago(msg["deadAt"], now))
    return table


@contextlib.contextmanager
def live() -> Iterator[Callable[[Table], None]]:
    """A view on stdout that each ``show(table)`` redraws (``--watch``)."""
    with Live(console=_console(), auto_refresh=False, screen=False) as view:
        def show(table: Table) -> None:
            table.caption = time.strftime("%H:%M:%S  (Ctrl-C to stop)")
            view.update(table, refresh=True)
        yield show


@contextlib.contextmanager
def progress() -> Iterator[Callable[[Table], None]]:
    """A live view on stderr (stdout stays for the result); yields ``show(table)``."""
    console = Console(file=sys.stderr, highlight=False)
    with Live(console=console, auto_refresh=False, transient=True) as live:
        def show(table: Table) -> None:
            live.update(table, refresh=True)
        yield show


def swarm_title(summary: dict[str, Any], live: bool = False) -> str:
    """Where the swarm is (live), or how long it ran and at how many users."""
    secs, run, users = summary["seconds"], summary["run_time_seconds"], summary["users"]
    state = summary.get("state")
    if live and state == "spawning":
        return (f"swarm ramping up: {users}/{summary.get('target_users') or '?'} users, "
                f"{secs:.0f}s of {run:g}s")
    if live and state == "running":
        return f"swarm running: {users} users, {secs:.0f}s of {run:g}s"
    if live and state in ("cleanup", "stopping", "stopped"):
        return f"swarm stopping after {secs:.0f}s"
    if live and (state is not None or not summary["requests"]):
        return "swarm: starting Locust"
    if live:  # a locustfile that writes no progress: the wall clock is all we have
        return f"swarm, {secs:.0f}s of {run:g}s (running)"
    ramp = summary.get("ramp_up_seconds")
    ramped = f", ramp-up {ramp:g}s" if ramp is not None else ""
    return f"swarm: {secs:g}s at up to {users} users{ramped}"


def swarm_table(summary: dict[str, Any], live: bool = False) -> Table:
    """The figures of a swarm run (``wsctl swarm``)."""
    title = f"{swarm_title(summary, live)}: delivery latency in ms"
    table = Table(title=title, title_justify="left", show_header=True)
    for column in ("users", "conns", "msg/s", "p50", "p95", "p99", "delivered", "lost",
                   "errors"):
        table.add_column(column, justify="right")

    def ms(value: object) -> str:
        return "-" if value is None else f"{value:g}"

    lost = Text(str(summary["lost"]), style="red" if summary["lost"] else "green")
    errors = Text(str(summary["errors"]), style="red" if summary["errors"] else "green")
    table.add_row(str(summary["users"]), str(summary["connections"]),
                  f"{summary['delivered_per_s']:g}", ms(summary["p50_ms"]),
                  ms(summary["p95_ms"]), ms(summary["p99_ms"]), str(summary["delivered"]),
                  lost, errors)
    return table


def failures_table(failures: list[dict[str, Any]], top: int = 5) -> Table:
    """The most frequent failure reasons of a swarm run, counted."""
    table = Table(title="top failure reasons", title_justify="left", show_header=True)
    table.add_column("count", justify="right")
    table.add_column("request")
    table.add_column("reason", overflow="fold")
    for failure in failures[:top]:
        table.add_row(str(failure["count"]), Text(failure["request"]),
                      Text(failure["reason"]))
    rest = failures[top:]
    if rest:
        table.add_row(str(sum(f["count"] for f in rest)), "",
                      Text(f"{len(rest)} other reason(s): see --json", style="dim"))
    return table


def trail_table(trail: doc.Trail) -> Table:
    """A message's trail as a timeline: offset from the first event, then what
    happened where."""
    table = Table(title=f"message {trail['id']}", title_justify="left")
    for column in ("+ms", "time", "event", "pod", "user", "details"):
        table.add_column(column, justify="right" if column == "+ms" else "left")
    events = trail["events"]
    first = events[0]["at"] if events else 0
    styles = {"acked": "green", "dead": "red", "resent": "yellow", "duplicate": "yellow"}
    for event in events:
        extra = {k: v for k, v in event.items() if k not in ("at", "event", "pod", "user")}
        details = " ".join(f"{k}={_brief(v)}" for k, v in extra.items())
        table.add_row(str(event["at"] - first),
                      datetime.fromtimestamp(event["at"] / 1000).strftime("%H:%M:%S.%f")[:-3],
                      Text(event["event"], style=styles.get(event["event"], "")),
                      Text(event["pod"] or "(no pod)"), Text(event["user"]), Text(details))
    return table


def _brief(value: object) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return str(value)


def doctor_table(checks: list[Any]) -> Table:
    """``wsctl doctor``: one row per check (``wsctl.doctor.Check``)."""
    table = Table(show_header=True)
    for column in ("check", "status", "detail", "hint"):
        table.add_column(column)
    styles = {"OK": "green", "WARN": "yellow", "FAIL": "bold red"}
    for check in checks:
        table.add_row(Text(check.name), Text(check.status.value, style=styles[check.status]),
                      Text(check.detail), Text(check.hint, style="dim"))
    return table
