"""The soak's figures: one JSON document, and the same on one screen (rich)."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from bench.chaos.checker import NEAR_BEFORE, Lost, Verdict
from bench.chaos.devices import Device
from bench.chaos.faults import FaultInjector
from bench.chaos.traffic import Ledger

# How many loss clusters the screen lists (the JSON lists all, and every loss).
SHOWN = 6
CLUSTER_GAP = 10.0


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def clusters(verdict: Verdict, faults: FaultInjector, gap: float = CLUSTER_GAP
             ) -> list[dict[str, Any]]:
    """Lost messages grouped by why they were lost (:func:`explain`), then by
    send time (a new group after ``gap`` seconds without such a loss), each
    with the faults active in the ``NEAR_BEFORE`` seconds before its first
    message: which faults preceded which losses. In order of first loss."""
    out: list[dict[str, Any]] = []
    by_why: dict[str, list[Lost]] = {}
    for lost in sorted(verdict.lost, key=lambda x: x.msg.created):
        by_why.setdefault(lost.why, []).append(lost)
    for why, losts in by_why.items():
        group: list[Lost] = []
        for lost in losts:
            if group and lost.msg.created - group[-1].msg.created > gap:
                out.append(_cluster(why, group, faults))
                group = []
            group.append(lost)
        out.append(_cluster(why, group, faults))
    return sorted(out, key=lambda c: float(c["from"]))


def _cluster(why: str, group: list[Lost], faults: FaultInjector) -> dict[str, Any]:
    first, last = group[0].msg.created, group[-1].msg.created
    return {
        "from": round(first, 1), "to": round(last, 1), "lost": len(group), "why": why,
        "users": len({x.msg.user for x in group}),
        "replayedOnFreshConnection": sum(x.replayed is True for x in group),
        "faultsBefore": [e.describe() for e in faults.near(first - NEAR_BEFORE, first)],
    }


def _lost_json(lost: Lost) -> dict[str, Any]:
    msg = lost.msg
    return {
        "id": msg.id, "user": msg.user, "created": round(msg.created, 3),
        "acceptedAt": None if msg.accepted_at is None else round(msg.accepted_at, 3),
        "calls": [c.to_json() for c in msg.calls], "report": msg.report,
        "state": lost.state, "store": lost.store, "overdueSeconds": lost.overdue,
        "replayedOnFreshConnection": lost.replayed,
        "why": lost.why, "faultsBefore": [e.describe() for e in lost.faults],
        "trail": lost.trail[-30:],
    }


def figures(*, run: dict[str, Any], ledger: Ledger, devices: list[Device],
            faults: FaultInjector, verdict: Verdict, extra: dict[str, Any]) -> dict[str, Any]:
    """Every figure of the run, JSON-ready."""
    ack_dups = sum(d.suppressed + d.repeats(ledger.acks) for d in devices)
    amo_repeats = sum(d.repeats(ledger.amos) for d in devices)
    amo_got = {(d.user, i) for d in devices for i in d.copies if i in ledger.amos}
    amo_accepted = [m for m in ledger.amos.values() if m.accepted]
    amo_delivered = sum((m.user, m.id) in amo_got for m in amo_accepted)
    amo_unaccepted_got = sum((m.user, m.id) in amo_got for m in ledger.amos.values()
                             if not m.accepted)
    lat = verdict.latencies
    near = Counter(kind for lost in verdict.lost for kind in {e.kind for e in lost.faults})
    return {
        "verdict": "FAIL" if verdict.lost else "PASS",
        "run": run,
        "ack": {
            "created": len(ledger.acks), "accepted": verdict.accepted,
            "notAccepted": verdict.not_accepted,
            "notAcceptedButDelivered": verdict.not_accepted_delivered,
            "delivered": verdict.delivered, "deadLettered": len(verdict.dead),
            "deadReasons": dict(Counter(verdict.dead.values())),
            "deliveredAndDeadLettered": verdict.delivered_and_dead,
            "lost": len(verdict.lost), "duplicates": ack_dups,
            "deliveredStillPending": verdict.received_still_pending,
            "withExpiresAt": sum(m.expires_at is not None for m in ledger.acks.values()),
            "deliveredAfterExpiry": len({i for d in devices for i in d.late}),
            "latencySeconds": {"p50": _pct(lat, 0.5), "p99": _pct(lat, 0.99),
                               "max": round(max(lat), 3) if lat else None,
                               "mean": round(statistics.fmean(lat), 3) if lat else None},
        },
        "amo": {
            "sent": len(ledger.amos), "accepted": len(amo_accepted),
            "delivered": amo_delivered, "deliveredNotAccepted": amo_unaccepted_got,
            "deliveredShare": round(amo_delivered / len(amo_accepted), 4)
            if amo_accepted else None,
            "repeats": amo_repeats,
        },
        "faults": {"byKind": faults.counts(), "total": len(faults.timeline),
                   "failed": faults.errors},
        "clients": {
            "devices": len(devices), "connections": sum(d.total_connections for d in devices),
            "clientRestarts": sum(d.client_restarts for d in devices),
            "wentHome": sum(d.churns for d in devices),
            "podsAtEnd": dict(Counter(str(d.pod) for d in devices)),
            "serverErrors": dict(sum((d.server_errors for d in devices), Counter[str]())),
            "errors": [e for d in devices for e in d.errors][:50],
            "notConnectedAtEnd": {d.name: d.last_change for d in devices if not d.connected},
        },
        "lossesNearFault": dict(near),
        "lossClusters": clusters(verdict, faults),
        "lost": [_lost_json(lost) for lost in verdict.lost],
        "problems": verdict.problems,
        **extra,
        "timeline": [e.to_json() for e in faults.timeline],
    }


def render(fig: dict[str, Any], json_path: str, console: Console | None = None) -> None:
    """The one-screen summary of :func:`figures`."""
    console = console or Console()
    run, ack, amo = fig["run"], fig["ack"], fig["amo"]
    head = Table.grid(padding=(0, 2))
    head.add_row("prefix", run["prefix"], "seed", str(run["seed"]))
    head.add_row("traffic", f"{run['seconds']['traffic']:.0f}s",
                 "settle", f"{run['seconds']['settle']:.0f}s of {run['settleBound']:.0f}s")
    head.add_row("pods", str(run["pods"]),
                 "users/devices", f"{run['users']}/{fig['clients']['devices']}")

    msgs = Table(title="messages", title_justify="left", show_header=True)
    for col in ("", "count"):
        msgs.add_column(col, justify="right" if col else "left")
    lat = ack["latencySeconds"]
    rows = [
        ("ACK-required sent", ack["created"]),
        ("  accepted (a 200)", ack["accepted"]),
        ("  delivered", ack["delivered"]),
        ("  dead-lettered", ack["deadLettered"]),
        ("  LOST", ack["lost"]),
        ("  extra copies (per device)", ack["duplicates"]),
        ("  with expiresAt (late)", f"{ack['withExpiresAt']} "
                                    f"({ack['deliveredAfterExpiry']})"),
        ("  not accepted (delivered)", f"{ack['notAccepted']} "
                                       f"({ack['notAcceptedButDelivered']})"),
        ("  latency p50/p99/max", f"{lat['p50']}/{lat['p99']}/{lat['max']}s"),
        ("at-most-once sent/accepted", f"{amo['sent']}/{amo['accepted']}"),
        ("  delivered", f"{amo['delivered']} ({_share(amo['deliveredShare'])})"),
        ("  repeated copies", amo["repeats"]),
    ]
    if ack["deadReasons"]:
        rows.insert(4, ("  dead reasons", _reasons(ack["deadReasons"])))
    for label, value in rows:
        style = "bold red" if label.strip() == "LOST" and ack["lost"] else None
        msgs.add_row(label, str(value), style=style)

    kinds = Table(title="faults", title_justify="left")
    kinds.add_column("kind")
    kinds.add_column("n", justify="right")
    kinds.add_column(f"losses <{NEAR_BEFORE:.0f}s after", justify="right")
    for kind, n in fig["faults"]["byKind"].items():
        kinds.add_row(kind, str(n), str(fig["lossesNearFault"].get(kind, 0)))

    parts: list[Any] = [head, _side(msgs, kinds)]
    if fig["lossClusters"]:
        shown = fig["lossClusters"][:SHOWN]
        table = Table(title=f"losses by cause and send time ({len(shown)} of "
                            f"{len(fig['lossClusters'])} groups)", title_justify="left")
        for col in ("sent", "lost (users)", "why", "a fresh conn replays",
                    f"faults in the {NEAR_BEFORE:.0f}s before the first"):
            table.add_column(col, overflow="fold")
        for c in shown:
            table.add_row(f"{c['from']}-{c['to']}s", f"{c['lost']} ({c['users']})", c["why"],
                          str(c["replayedOnFreshConnection"]),
                          "\n".join(c["faultsBefore"]) or "-")
        parts.append(table)
    notes = _notes(fig)
    if notes:
        parts.append("\n".join(notes))
    verdict = "[bold red]FAIL[/]" if fig["verdict"] == "FAIL" else "[bold green]PASS[/]"
    parts.append(f"{verdict}  figures: {json_path}")
    console.print(Panel(Group(*parts), title="wsnode chaos soak", expand=False))


def _side(left: Table, right: Table) -> Table:
    grid = Table.grid(padding=(0, 3))
    grid.add_row(left, right)
    return grid


def _reasons(reasons: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _notes(fig: dict[str, Any]) -> list[str]:
    notes = []
    if fig["faults"]["failed"]:
        notes.append(f"[yellow]faults that failed: {len(fig['faults']['failed'])}, first: "
                     f"{fig['faults']['failed'][0]:.120}[/]")
    drains = [e for e in fig["timeline"]
              if e["kind"] == "pod_sigterm" and e["detail"] not in ("exit 0", "")]
    if drains:
        notes.append(f"[yellow]SIGTERM drains that did not exit 0: {len(drains)} "
                     f"({', '.join(sorted({d['detail'] for d in drains}))})[/]")
    for key in ("healProblems", "restartFailures", "harnessErrors", "problems"):
        if fig.get(key):
            notes.append(f"[yellow]{key}: {len(fig[key])}, first: {fig[key][0]!s:.150}[/]")
    unready = [p for p, r in fig.get("readinessAtEnd", {}).items() if r.get("status") != "200"]
    if unready:
        notes.append(f"[yellow]pods not ready at the end: {', '.join(unready)}[/]")
    if not fig.get("devicesConnectedAtEnd", True):
        notes.append("[yellow]some devices were not connected when the settle began[/]")
    for name, change in fig["clients"]["notConnectedAtEnd"].items():
        notes.append(f"[yellow]device {name} not connected at the end: {change:.100}[/]")
    missing = fig.get("usersMissingFromPresence") or []
    if missing:
        notes.append(f"[yellow]connected users unknown to presence at the end: "
                     f"{len(missing)} of {fig['run']['users']}[/]")
    errors = fig["clients"]["serverErrors"]
    if errors:
        notes.append(f"error frames sent to clients: {errors}")
    if fig["ack"]["deliveredStillPending"]:
        notes.append(f"delivered but still pending in the store: "
                     f"{fig['ack']['deliveredStillPending']}")
    return notes
