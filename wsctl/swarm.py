"""``wsctl swarm``: the Locust swarm of ``loadtests/``, headless, with live progress.

Runs ``locust -f loadtests/ --headless`` as a child process with ``--csv``
into a temporary directory and ``WSNODE_SWARM_STATUS`` pointing there
(``loadtests/_progress.py`` writes the users running now and when the test
started, finished ramping up and began to stop). Every second the live view
reads both; the summary says what a user of a transport wants to know:
users, connections, messages delivered per second, delivery latency
percentiles, losses, errors, and the top failure reasons, counted, with a hint
for the causes we know. The child is stopped (SIGINT, then SIGKILL) if wsctl
is interrupted.

Times: ``seconds`` is the test's run time as Locust counts it (from the start
of the ramp-up to the start of the stop), not the life of the process, which
also imports, ramps down and cleans up.
"""

from __future__ import annotations

import csv
import json
import os
import re
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
TOP_REASONS = 5


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


@dataclass(frozen=True)
class Failure:
    """One failure reason of one request name, with how often it happened."""

    request: str
    reason: str
    count: int


@dataclass
class Progress:
    """``loadtests/_progress.py``'s file: the state of the test right now."""

    state: str = ""
    users: int = 0
    target: int = 0
    started_at: float | None = None
    spawned_at: float | None = None
    stopping_at: float | None = None
    at: float | None = None


@dataclass
class Snapshot:
    """What the swarm did so far."""

    rows: list[Row] = field(default_factory=list)
    users: int = 0  # running now (live), the most at once (final)
    elapsed: float = 0.0  # wall clock since wsctl started Locust
    failures: list[Failure] = field(default_factory=list)
    progress: Progress | None = None
    run_time: float = 0.0  # asked for (--run-time)

    @property
    def deliveries(self) -> list[Row]:
        return [r for r in self.rows if r.name.endswith(DELIVERY)]

    @property
    def seconds(self) -> float:
        """The test's run time so far (see the module docstring); wall clock
        when the swarm writes no progress file."""
        p = self.progress
        if p is None or p.started_at is None:
            return self.elapsed
        end = p.stopping_at or p.at or p.started_at
        return max(0.0, end - p.started_at)

    @property
    def ramp_up(self) -> float | None:
        p = self.progress
        if p is None or p.started_at is None or p.spawned_at is None:
            return None
        return max(0.0, p.spawned_at - p.started_at)

    def summary(self) -> dict[str, Any]:
        deliveries = self.deliveries
        main = max(deliveries, key=lambda r: r.count, default=None)
        connects = next((r for r in self.rows if r.name == "connect"), None)
        others = [r for r in self.rows if r.name != "Aggregated" and r not in deliveries]
        ramp = self.ramp_up
        return {
            "users": self.users,
            "target_users": self.progress.target if self.progress else None,
            "state": self.progress.state if self.progress else None,
            "seconds": round(self.seconds, 1),
            "run_time_seconds": self.run_time,
            "ramp_up_seconds": round(ramp, 1) if ramp is not None else None,
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
            "failures": [f.__dict__ for f in self.failures],
            "hints": hints(self.failures),
        }


# -- reading Locust's files ------------------------------------------------------

def read_stats(path: Path) -> list[Row]:
    rows = []
    for rec in _records(path):
        try:
            rows.append(Row(
                rec["Type"], rec["Name"], int(rec["Request Count"]),
                int(rec["Failure Count"]), float(rec["Requests/s"]),
                _num(rec.get("50%")), _num(rec.get("95%")), _num(rec.get("99%"))))
        except (KeyError, ValueError, TypeError):
            continue  # a partly written file: the next read gets it whole
    return rows


def _records(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _num(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "", "N/A") else 0.0
    except ValueError:
        return 0.0


def read_users(path: Path) -> tuple[int, int]:
    """Users now and the most at once, from Locust's ``_stats_history.csv``
    (its last rows are taken while the users stop)."""
    now = most = 0
    for rec in _records(path):
        try:
            now = int(rec.get("User Count") or 0)
        except (ValueError, TypeError):
            continue
        most = max(most, now)
    return now, most


_WRAPPED = re.compile(r"""^[A-Za-z_][\w.]*\((['"])(.*)\1\)$""", re.DOTALL)


def reason_text(error: str) -> str:
    """Locust's repr of an exception, ``RuntimeError("type 'x' has no handler")``,
    as its message alone; anything else (several arguments) as it is."""
    found = _WRAPPED.match(error.strip())
    return found.group(2) if found else error.strip()


def read_failures(path: Path) -> list[Failure]:
    """Failure reasons from Locust's ``_failures.csv``, the most frequent first."""
    counts: dict[tuple[str, str], int] = {}
    for rec in _records(path):
        method, name, error, times = (rec.get(k) for k in ("Method", "Name", "Error",
                                                             "Occurrences"))
        if method is None or name is None or error is None or not (times or "").isdigit():
            continue  # a partly written file: the next read gets it whole
        key = (f"{method} {name}".strip(), reason_text(error))
        counts[key] = counts.get(key, 0) + int(times or 0)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [Failure(request, reason, count) for (request, reason), count in ranked]


def read_progress(path: Path) -> Progress | None:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None

    def when(key: str) -> float | None:
        value = raw.get(key)
        return float(value) if isinstance(value, int | float) else None

    return Progress(str(raw.get("state") or ""), int(raw.get("users") or 0),
                    int(raw.get("target") or 0), when("startedAt"), when("spawnedAt"),
                    when("stoppingAt"), when("at"))


# -- what the failures mean ------------------------------------------------------

_NO_HANDLER = re.compile(r"type '([^']+)' has no handler")
_CHAT_TYPES = ("chat_message", "join", "room_message")  # the chat example's frames


def hints(failures: list[Failure]) -> list[str]:
    """What to do about the failure reasons we recognize, most frequent first."""
    out: list[str] = []
    for f in failures:
        found = _NO_HANDLER.search(f.reason)
        if found and found.group(1) in _CHAT_TYPES:
            hint = (f"the pods have no handler for '{found.group(1)}': start them with "
                    "--app wsnode.examples.chat, the app the swarm chats through "
                    "(`make run` and `make cluster` load it)")
        elif found:
            hint = (f"the pods have no handler for '{found.group(1)}': register one in "
                    "the module the pods load with --app")
        elif f.request == "WS connect" and "HTTP 401" in f.reason:
            hint = ("the pods refuse the swarm's tokens: export the pods' WSNODE_JWT_SECRET "
                    "(and WSNODE_JWT_AUDIENCE / WSNODE_JWT_ISSUER if they check them)")
        elif f.request.endswith("/v1/send") and "401" in f.reason:
            hint = "the admin API refuses the key: export the pods' WSNODE_API_KEY"
        elif f.request.endswith("/v1/send"):
            hint = ("the notifications cannot reach the pods' admin API: set "
                    "WSNODE_LOAD_ADMIN to their admin URLs, comma-separated "
                    "(default: each --host with its port + 1000)")
        elif "rate limit" in f.reason:
            hint = ("the pods' per-user rate limit throttles the swarm: run them with "
                    "WSNODE_RATE_LIMIT=0 for load tests, or slow the swarm down "
                    "(WSNODE_LOAD_CHAT_WAIT)")
        else:
            continue
        if hint not in out:
            out.append(hint)
    return out


# -- running it ------------------------------------------------------------------

def run_swarm(*, host: str, users: int, spawn_rate: float, run_time: float,
              locustfile: Path, processes: int | None, scenarios: list[str],
              on_progress: Callable[[Snapshot], None]) -> tuple[Snapshot, int, str]:
    """Run the swarm; returns the final snapshot, Locust's exit code and its log."""
    workdir = Path(tempfile.mkdtemp(prefix="wsctl-swarm-"))
    prefix = workdir / "swarm"
    cmd = [locust_binary(), "-f", str(locustfile), "--headless", "-u", str(users),
           "-r", str(spawn_rate), "-t", f"{int(run_time)}s", "--host", host,
           "--csv", str(prefix), "--csv-full-history", "--only-summary",
           "--stop-timeout", "10", "--loglevel", "WARNING"]
    if processes:
        cmd += ["--processes", str(processes)]
    cmd += scenarios
    log_path = workdir / "locust.log"
    env = {**os.environ, "WSNODE_SWARM_STATUS": str(workdir / "status.json")}
    started = time.monotonic()
    peak = 0
    with log_path.open("wb") as log:
        # The command is ours; only values from the command line fill it in.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,  # noqa: S603
                                env=env)
        try:
            while proc.poll() is None:
                time.sleep(1.0)
                snap = _snapshot(workdir, started, run_time)
                peak = max(peak, snap.users)
                on_progress(snap)
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
    final = _snapshot(workdir, started, run_time, final=True)
    final.users = max(final.users, peak)
    text = log_path.read_text(errors="replace")
    shutil.rmtree(workdir, ignore_errors=True)
    return final, proc.returncode, text


def _snapshot(workdir: Path, started: float, run_time: float, *,
              final: bool = False) -> Snapshot:
    prefix = workdir / "swarm"
    progress = read_progress(workdir / "status.json")
    now, most = read_users(Path(f"{prefix}_stats_history.csv"))
    live_users = progress.users if progress is not None else now
    users = most if final else live_users
    return Snapshot(read_stats(Path(f"{prefix}_stats.csv")), users,
                    time.monotonic() - started, read_failures(Path(f"{prefix}_failures.csv")),
                    progress, run_time)
