"""``wsctl swarm``: the Locust swarm of ``loadtests/``, headless, with live progress.

Runs ``locust -f loadtests/ --headless`` as a child process with ``--csv``
into a temporary directory, reads the stats file Locust rewrites every second
for the live view, and ends with a summary of what a user of a transport wants
to know: connections, messages delivered per second, delivery latency
percentiles, losses, errors. The child is stopped (SIGINT, then SIGKILL) if
wsctl is interrupted.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsctl.errors import CtlError, UsageProblem

DELIVERY = " delivery"


def find_loadtests(given: str | None) -> Path:
    """``--locustfile``, else ``./loadtests``, else the one beside this package."""
    candidates = [Path(given)] if given else [
        Path.cwd() / "loadtests", Path(__file__).resolve().parents[1] / "loadtests"]
    for path in candidates:
        if path.exists():
            return path
    raise UsageProblem("no loadtests/ found", "pass --locustfile PATH (the repository's "
                       "loadtests/ directory)")


def locust_binary() -> str:
    here = Path(sys.executable).parent / "locust"
    found = str(here) if here.exists() else shutil.which("locust")
    if not found:
        raise CtlError("locust is not installed", "pip install 'wsnode[load]'")
    return found


@dataclass
class Row:
    type: str
    name: str
    count: int
    failures: int
    rps: float
    p50: float
    p95: float
    p99: float


@dataclass
class Snapshot:
    """What the swarm did so far (from Locust's ``_stats.csv``)."""

    rows: list[Row] = field(default_factory=list)
    users: int = 0
    elapsed: float = 0.0

    @property
    def deliveries(self) -> list[Row]:
        return [r for r in self.rows if r.name.endswith(DELIVERY)]

    def summary(self) -> dict[str, Any]:
        deliveries = self.deliveries
        main = max(deliveries, key=lambda r: r.count, default=None)
        connects = next((r for r in self.rows if r.name == "connect"), None)
        others = [r for r in self.rows if r.name != "Aggregated" and r not in deliveries]
        return {
            "users": self.users,
            "seconds": round(self.elapsed, 1),
            "connections": connects.count - connects.failures if connects else 0,
            "delivered": sum(r.count - r.failures for r in deliveries),
            "delivered_per_s": round(sum(r.rps for r in deliveries), 1),
            "latency_name": main.name if main else None,
            "p50_ms": main.p50 if main else None,
            "p95_ms": main.p95 if main else None,
            "p99_ms": main.p99 if main else None,
            "lost": sum(r.failures for r in deliveries),
            "errors": sum(r.failures for r in others),
            "requests": [r.__dict__ for r in self.rows if r.name != "Aggregated"],
        }


def read_stats(path: Path) -> list[Row]:
    if not path.exists():
        return []
    rows = []
    with path.open(newline="") as f:
        for rec in csv.DictReader(f):
            try:
                rows.append(Row(
                    rec["Type"], rec["Name"], int(rec["Request Count"]),
                    int(rec["Failure Count"]), float(rec["Requests/s"]),
                    _num(rec.get("50%")), _num(rec.get("95%")), _num(rec.get("99%"))))
            except (KeyError, ValueError):
                continue  # a partly written file: the next read gets it whole
    return rows


def _num(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "", "N/A") else 0.0
    except ValueError:
        return 0.0


def read_users(path: Path) -> int:
    """The most users the swarm ran at once (Locust's ``_stats_history.csv``;
    its last rows are taken while the users stop)."""
    if not path.exists():
        return 0
    most = 0
    with path.open(newline="") as f:
        for rec in csv.DictReader(f):
            try:
                most = max(most, int(rec.get("User Count") or 0))
            except ValueError:
                continue
    return most


def run_swarm(*, host: str, users: int, spawn_rate: float, run_time: str,
              locustfile: Path, processes: int | None, scenarios: list[str],
              on_progress: Callable[[Snapshot], None]) -> tuple[Snapshot, int, str]:
    """Run the swarm; returns the final snapshot, Locust's exit code and its log."""
    workdir = Path(tempfile.mkdtemp(prefix="wsctl-swarm-"))
    prefix = workdir / "swarm"
    cmd = [locust_binary(), "-f", str(locustfile), "--headless", "-u", str(users),
           "-r", str(spawn_rate), "-t", run_time, "--host", host, "--csv", str(prefix),
           "--csv-full-history", "--only-summary", "--stop-timeout", "10",
           "--loglevel", "WARNING"]
    if processes:
        cmd += ["--processes", str(processes)]
    cmd += scenarios
    log_path = workdir / "locust.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        # The command is ours; only values from the command line fill it in.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,  # noqa: S603
                                env=os.environ.copy())
        try:
            while proc.poll() is None:
                time.sleep(1.0)
                on_progress(_snapshot(prefix, started))
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    final = _snapshot(prefix, started)
    text = log_path.read_text(errors="replace")
    shutil.rmtree(workdir, ignore_errors=True)
    return final, proc.returncode, text


def _snapshot(prefix: Path, started: float) -> Snapshot:
    return Snapshot(read_stats(Path(f"{prefix}_stats.csv")),
                    read_users(Path(f"{prefix}_stats_history.csv")),
                    time.monotonic() - started)
