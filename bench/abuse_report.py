"""The two tables of ``bench/abuse.py``: what the bystander felt and what each
flood cost the pod; what the attacker got."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _ms(value: object) -> str:
    return "-" if value is None else f"{float(str(value)):.1f}"


def _counts(counts: dict[str, int], skip: tuple[str, ...] = ()) -> str:
    return "\n".join(f"{k}:{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])
                    if k not in skip) or "-"


def _probes(by: dict[str, Any]) -> str:
    failed = [f"{kind} {sum(by[kind]['failed'].values())}"
              for kind in ("handshake", "healthz", "admin") if by[kind]["failed"]]
    slowest = max((by[k]["max_ms"] or 0.0 for k in ("handshake", "healthz", "admin")),
                  default=0.0)
    return (", ".join(failed) + " failed") if failed else f"ok (max {slowest:.0f} ms)"


def print_tables(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    console = Console(width=max(Console().width, 130))
    felt = Table(title=f"abuse bench, pod from {summary['tree']}: what the bystander felt")
    for name in ("phase", "s", "pings", "p50 ms", "p99 ms", "max ms", "lost", "disconnects",
                 "probes (handshake, healthz, admin)"):
        felt.add_column(name, justify="left" if name[0] in "pdP" else "right",
                        overflow="fold", min_width=11 if name == "phase" else None)
    cost = Table(title="what each flood cost the pod",
                 caption="Redis used Δ and CPU: the whole shared server; prefix: this run's keys")
    for name in ("phase", "CPU s", "CPU %", "RSS peak MiB", "fds peak", "log KiB",
                 "Redis used Δ KiB", "prefix keys", "prefix Δ KiB", "Redis CPU s"):
        cost.add_column(name, justify="left" if name == "phase" else "right",
                        overflow="fold", min_width=11 if name == "phase" else None)
    for r in rows:
        by, pod, red = r["bystander"], r["pod"], r["redis"]
        p99 = by["p99_ms"]
        bad = p99 is None or p99 >= summary["target_p99_ms"] or by["lost"]
        felt.add_row(r["phase"], f"{r['seconds']:.0f}", str(by["pings"]), _ms(by["p50_ms"]),
                     f"[red]{_ms(p99)}[/]" if bad else _ms(p99), _ms(by["max_ms"]),
                     str(by["lost"]), _counts(by["disconnects"]), _probes(by))
        cost.add_row(r["phase"], f"{pod['cpu_s']:.1f}", str(pod["cpu_pct"]),
                     f"{pod['rss_peak_mib']:.0f}", str(pod["fds_peak"]), f"{pod['log_kib']:.0f}",
                     str(red["used_memory_delta_kib"]), str(red["prefix_keys"]),
                     str(red["prefix_delta_kib"]), f"{red['server_cpu_s']:.1f}")
    console.print(felt)
    console.print(cost)
    got = Table(title="what the attacker got")
    for name in ("phase", "sent", "handshakes", "answers", "error codes", "closed by pod",
                 "busy s", "MiB in", "client CPU s"):
        got.add_column(name, justify="right" if name in ("sent", "busy s", "MiB in",
                                                         "client CPU s") else "left",
                       overflow="fold", min_width=11 if name == "phase" else None)
    for r in rows[1:]:
        a = r["attacker"]
        got.add_row(r["phase"], str(a["sent"]), _counts(a["handshakes"]),
                    _counts(a["frames"], ("welcome",)), _counts(a["errors"]),
                    _counts(a["closes"]), f"{a['busy_s']:.0f}", f"{a['mib_in']:.1f}",
                    f"{a['client_cpu_s']:.1f}")
    console.print(got)
    verdict = "met" if summary["p99_target_met"] else "NOT met"
    console.print(f"bystander p99 under {summary['target_p99_ms']:.0f} ms in every flood: "
                  f"{verdict}; pings lost: {summary['bystander_lost']}")
    if "chat_stored" in summary:
        console.print(
            f"chat flood: {summary['chat_stored']} messages stored, "
            f"{summary['chat_redis_bytes'] / 2**20:.1f} MiB of Redis "
            f"({summary['redis_bytes_per_message'] / 1024:.1f} KiB each); "
            + ("capped by the per-sender budget: at most that per account"
               if summary["chat_capped"] else
               f"no cap: {summary['redis_bytes_per_account_day'] / 2**30:.1f} GiB per account "
               "per day at the default "
               "rate limit (20/10s)"))
