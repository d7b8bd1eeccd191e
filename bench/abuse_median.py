"""Medians of several ``bench/abuse.py --json`` runs, per tree, as Markdown tables.

On a busy machine one run says little: run each variant at least twice, back to
back and interleaved (before, after, before, after) so that the load falls on
both alike, then::

    .venv/bin/python bench/abuse_median.py runs/*.jsonl
    .venv/bin/python bench/abuse_median.py bench/results/abuse-*.jsonl  # the doc's

Per tree (the commit the pod ran from) and phase, the median over the runs of:
the bystander's ping p50/p99/max, its failed probes (handshake, ``/healthz``,
admin ``/healthz``; timeouts of 3 s), the pod's CPU seconds, peak RSS and
descriptors, the Redis bytes added under the run's prefix, and the load average
of the machine at the end of the phase (when the run recorded it). Each cell
also gives the range when the runs disagree by more than a tenth. Runs made
with ``--loop-probe`` get a second table: the pod's own stalls (CPU spent in one
late wake-up of its event loop), its waits for a CPU (the machine's), the
longest garbage collection.
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

Row = dict[str, Any]
LOOP_COLUMNS: list[tuple[str, Callable[[Row], float | None]]] = [
    ("p99 ms", lambda r: r["bystander"]["p99_ms"]),
    ("own stall max ms", lambda r: r["loop"]["own_max_ms"]),
    ("own stalls >= 10 ms", lambda r: float(r["loop"]["own_10ms"])),
    ("CPU wait max ms", lambda r: r["loop"]["machine_max_ms"]),
    ("CPU waits >= 10 ms", lambda r: float(r["loop"]["machine_10ms"])),
    ("GC max ms", lambda r: r["loop"]["gc_max_ms"]),
]
COLUMNS: list[tuple[str, Callable[[Row], float | None]]] = [
    ("p50 ms", lambda r: r["bystander"]["p50_ms"]),
    ("p99 ms", lambda r: r["bystander"]["p99_ms"]),
    ("max ms", lambda r: r["bystander"]["max_ms"]),
    ("probes failed", lambda r: float(sum(sum(r["bystander"][k]["failed"].values())
                                          for k in ("handshake", "healthz", "admin")))),
    ("CPU s", lambda r: r["pod"]["cpu_s"]),
    ("RSS peak MiB", lambda r: r["pod"]["rss_peak_mib"]),
    ("fds peak", lambda r: float(r["pod"]["fds_peak"])),
    ("Redis Δ KiB", lambda r: float(r["redis"]["prefix_delta_kib"])),
    ("load", lambda r: r.get("load1")),
]


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    mid = statistics.median(values)
    text = f"{mid:.0f}" if abs(mid) >= 100 or mid == int(mid) else f"{mid:.1f}"
    lo, hi = min(values), max(values)
    if len(values) > 1 and hi - lo > 0.1 * max(abs(mid), 1.0):
        text += f" ({lo:g}-{hi:g})"
    return text


def tables(rows: list[Row]) -> str:
    """The tables of the bystander and the pod, then (for runs made with
    ``--loop-probe``) those of the pod's event loop."""
    out = _tables(rows, COLUMNS)
    probed = [r for r in rows if "loop" in r or r.get("summary")]
    if any("loop" in r for r in probed):
        out += "\nthe pod's event loop (--loop-probe)\n\n" + _tables(
            [r for r in probed if "loop" in r], LOOP_COLUMNS)
    return out


def _tables(rows: list[Row], columns: list[tuple[str, Callable[[Row], float | None]]]) -> str:
    by_tree: dict[str, dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if not r.get("summary"):
            by_tree[r["tree"]][r["phase"]].append(r)
    out: list[str] = []
    for tree, phases in by_tree.items():
        runs = len(phases["baseline"])  # every run starts with one
        out.append(f"pod from {tree}, medians of {runs} runs (range when wider than a "
                   "tenth)\n")
        out.append("| phase | " + " | ".join(name for name, _ in columns) + " |")
        out.append("|---|" + "---:|" * len(columns))
        for phase, got in phases.items():
            cells = []
            for _, pick in columns:
                values = [float(v) for v in (pick(r) for r in got) if v is not None]
                cells.append(_cell(values))
            out.append(f"| {phase} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: abuse_median.py RUN.jsonl...")
    rows: list[Row] = []
    for name in sys.argv[1:]:
        for line in Path(name).read_text().splitlines():
            if line.startswith("{"):
                rows.append(orjson.loads(line))
    print(tables(rows))


if __name__ == "__main__":
    main()
