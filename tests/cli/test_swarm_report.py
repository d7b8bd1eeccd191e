"""Pure parts of ``wsctl swarm`` and ``wsctl doctor``: reading Locust's files,
failure reasons and their hints, the live title, and doctor's lines about pods."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson

from wsctl import output
from wsctl.doctor import Status, census, pod_check
from wsctl.swarm import (
    Failure,
    Progress,
    Snapshot,
    hints,
    read_failures,
    read_progress,
    read_users,
    reason_text,
)
from wsnode.podprobe import Answer


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_reason_text_unwraps_locusts_repr_of_one_message() -> None:
    assert reason_text("""RuntimeError("type 'chat_message' has no handler")""") \
        == "type 'chat_message' has no handler"
    assert reason_text("TimeoutError('not delivered within 10s')") == "not delivered within 10s"
    assert reason_text("ConnectionRefusedError(111, 'Connection refused')") \
        == "ConnectionRefusedError(111, 'Connection refused')"


def test_read_failures_counts_and_ranks_reasons(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "f.csv", ["Method", "Name", "Error", "Occurrences"], [
        ["WS", "chat_message delivery", "TimeoutError('not delivered within 10s')", 456],
        ["WS", "error unknown_type", """RuntimeError("type 'chat_message' has no handler")""",
         1104],
        ["WS", "connect", "ConnectionError('handshake refused: HTTP 401 invalid token')", 3],
        ["WS", "connect", "ConnectionError('handshake refused: HTTP 401 invalid token')", 2],
        ["WS", "broken"]])  # a row being written: skipped
    assert read_failures(path) == [
        Failure("WS error unknown_type", "type 'chat_message' has no handler", 1104),
        Failure("WS chat_message delivery", "not delivered within 10s", 456),
        Failure("WS connect", "handshake refused: HTTP 401 invalid token", 5)]
    assert read_failures(tmp_path / "missing.csv") == []


def test_hints_for_the_causes_we_know() -> None:
    found = hints([
        Failure("WS error unknown_type", "type 'chat_message' has no handler", 9),
        Failure("WS error unknown_type", "type 'other' has no handler", 1),
        Failure("WS connect", "handshake refused: HTTP 401 invalid token", 4),
        Failure("POST POST /v1/send", "HTTPError('401 Client Error')", 2),
        Failure("WS error rate_limited", "rate limit exceeded", 2),
        Failure("WS chat_message delivery", "not delivered within 10s", 3)])
    assert "--app wsnode.examples.chat" in found[0]
    assert "'other'" in found[1]
    assert "WSNODE_JWT_SECRET" in found[2]
    assert "WSNODE_API_KEY" in found[3]
    assert "WSNODE_RATE_LIMIT=0" in found[4]
    assert len(found) == 5  # a loss alone has no known cause
    assert hints([]) == []


def test_users_now_and_most_from_the_history(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "h.csv", ["Timestamp", "User Count"],
                     [[1, 0], [2, 40], [3, 100], [4, 100], [5, 30]])
    assert read_users(path) == (30, 100)


def test_progress_gives_the_run_time_not_the_process_time(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_bytes(orjson.dumps({"state": "stopping", "users": 10, "target": 10,
                                   "startedAt": 100.0, "spawnedAt": 105.0,
                                   "stoppingAt": 120.1, "at": 123.0}))
    progress = read_progress(path)
    assert progress is not None
    snap = Snapshot(elapsed=27.3, progress=progress, run_time=20, users=10)
    assert abs(snap.seconds - 20.1) < 1e-9
    assert snap.ramp_up == 5.0
    summary = snap.summary()
    assert (summary["seconds"], summary["ramp_up_seconds"]) == (20.1, 5.0)
    assert Snapshot(elapsed=27.3).seconds == 27.3  # no progress file: the wall clock
    assert read_progress(tmp_path / "nothing.json") is None


def summary_of(state: str, users: int, secs: float) -> dict[str, object]:
    progress = Progress(state, users, 500, 1000.0, None, None, 1000.0 + secs)
    return Snapshot(users=users, progress=progress, run_time=20).summary()


def test_live_title_shows_the_ramp_up_and_the_run_time() -> None:
    assert output.swarm_title(summary_of("spawning", 120, 3.2), live=True) \
        == "swarm ramping up: 120/500 users, 3s of 20s"
    assert output.swarm_title(summary_of("running", 500, 12), live=True) \
        == "swarm running: 500 users, 12s of 20s"
    assert output.swarm_title(summary_of("stopping", 500, 20), live=True) \
        == "swarm stopping after 20s"
    assert output.swarm_title(Snapshot(run_time=20).summary(), live=True) \
        == "swarm: starting Locust"
    final = Snapshot(users=500, run_time=20, progress=Progress(
        "stopped", 0, 500, 1000.0, 1005.0, 1020.0, 1021.0)).summary()
    assert output.swarm_title(final) == "swarm: 20s at up to 500 users, ramp-up 5s"


def test_failures_table_shows_the_top_reasons_and_the_rest() -> None:
    failures = [{"request": f"WS r{i}", "reason": f"reason {i}", "count": 10 - i}
                for i in range(7)]
    table = output.failures_table(failures, top=5)
    assert table.row_count == 6  # five reasons and one line for the two others


def test_doctor_census_never_reads_ok_beside_an_unreachable_pod() -> None:
    ok = census([("a", "active"), ("b", "draining")])
    assert ok.status is Status.OK and ok.detail == "2 live: a (active), b (draining)"
    bad = census([("a", "active"), ("b", "unreachable")])
    assert bad.status is Status.FAIL and "1 unreachable" in bad.detail and "b (unreachable)" \
        in bad.detail
    assert census([]).status is Status.WARN


def test_doctor_pod_line_from_the_probe() -> None:
    gone = pod_check("b", "http://10.0.0.2:9765",
                     Answer(False, error="connection failed: Connection refused"))
    assert gone.status is Status.FAIL and gone.detail.startswith("unreachable")
    assert "deaf" not in gone.detail
    deaf = pod_check("a", "http://x", Answer(True, 503, {
        "ready": False, "state": "active",
        "checks": {"accepting": True, "presence": True, "bus": False}}))
    assert deaf.status is Status.FAIL and deaf.detail.startswith("deaf: up")
    draining = pod_check("a", "http://x", Answer(True, 503, {
        "ready": False, "state": "draining",
        "checks": {"accepting": False, "presence": True, "bus": True}}))
    assert draining.status is Status.WARN
    assert pod_check("a", None, None).status is Status.WARN
