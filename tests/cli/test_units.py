"""Pure parts of wsctl: envelope building, rendering, target resolution, the polls."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from wsctl import documents as doc
from wsctl import operations, output
from wsctl.envelope import build_envelope, parse_seconds, read_payload
from wsctl.errors import CtlError, NotDone, NotFound, UsageProblem
from wsctl.target import NO_TARGET, Target, check_node_url, resolve_target
from wsctl.target_cluster import ClusterTarget
from wsctl.target_node import NodeTarget
from wsnode.protocol import Envelope


def test_build_envelope_generates_an_id_for_ack() -> None:
    env = build_envelope("note", payload={"a": 1}, ack=True, expires_in=2.5, now_ms=1000)
    assert env.requires_ack is True
    assert env.id is not None
    assert len(env.id) == 32
    assert env.expires_at == 3500
    assert env.to_wire() == {"type": "note", "payload": {"a": 1}, "id": env.id,
                             "requiresAck": True, "expiresAt": 3500}
    assert build_envelope("note", msg_id="m-1", ack=True, now_ms=0).id == "m-1"
    assert build_envelope("note", now_ms=0).to_wire() == {"type": "note", "payload": None}


def test_read_payload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert read_payload(None) is None
    assert read_payload('"hi"') == "hi"
    assert read_payload("[1, 2]") == [1, 2]
    path = tmp_path / "p.json"
    path.write_text('{"x": true}')
    assert read_payload(f"@{path}") == {"x": True}
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'{"from": "stdin"}')))
    assert read_payload("@-") == {"from": "stdin"}
    for bad in ("hi", "{", "@", f"@{tmp_path}/nope"):
        with pytest.raises(UsageProblem):
            read_payload(bad)


def test_parse_seconds() -> None:
    assert parse_seconds("--wait", "90") == 90
    assert parse_seconds("--wait", "250ms") == 0.25
    assert parse_seconds("--over", "0", positive=False) == 0
    with pytest.raises(UsageProblem, match="--wait must be greater than zero"):
        parse_seconds("--wait", "0")
    with pytest.raises(UsageProblem, match=r"^--wait: "):
        parse_seconds("--wait", "soon")


def test_ago_and_summary() -> None:
    assert output.ago(10_000, now=12_500) == "2s ago"
    assert output.ago(0, now=125_000) == "2m ago"
    assert output.ago(0, now=7_200_000) == "2h ago"
    assert output.ago(0, now=2 * 86_400_000) == "2d ago"
    assert output.ago(5_000, now=0) == "0s ago"
    report: doc.SendReport = {"user": "u", "local": 2, "pods": [], "stored": True, "seq": 4,
                              "duplicate": False, "failedPods": [], "evicted": [],
                              "id": "m-1"}
    assert output.send_summary(report) == (
        "delivered to 2 connection(s) directly, published to 0 pod(s); "
        "stored for ACK as seq 4 (id m-1)")


def test_print_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    output.print_error("bad\nthing", "try\nthis")
    assert capsys.readouterr().err == "wsctl: error: bad thing\nhint: try this\n"


def test_tables_do_not_interpret_markup() -> None:
    table = output.presence_table({"users": [{"user": "[red]x", "connections": 1,
                                              "pods": ["p"]}]})
    out = io.StringIO()
    Console(file=out, width=80).print(table)
    assert "[red]x" in out.getvalue()


def test_resolve_target() -> None:
    target = resolve_target("http://127.0.0.1:9765/", api_key="k", timeout=1, environ={})
    assert isinstance(target, NodeTarget)
    assert target.name == "http://127.0.0.1:9765"
    with pytest.raises(CtlError, match=r"^no target: ") as exc:
        resolve_target(None, api_key=None, timeout=1, environ={})
    assert exc.value.message == NO_TARGET
    cluster = resolve_target(None, api_key=None, timeout=1,
                             environ={"WSNODE_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert isinstance(cluster, ClusterTarget)
    assert cluster.name == "redis://127.0.0.1:1/0"
    for bad in ("localhost:9765", "ws://h:1", "http://", "http://u:p@h:1", "http://h:99999"):
        with pytest.raises(UsageProblem):
            check_node_url(bad)


class FakeTarget:
    """Scripted answers for the polls of :mod:`wsctl.operations`."""

    name = "fake"

    def __init__(self, states: list[str] | None = None,
                 connections: list[int] | None = None) -> None:
        self.states = states or []
        self.connections = connections or []
        self.calls = 0

    async def send(self, user: str, envelope: Envelope, *,
                   trace: bool = False) -> doc.SendReport:
        return {"user": user, "local": 1, "pods": [], "stored": envelope.requires_ack,
                "seq": 1 if envelope.requires_ack else None, "duplicate": False,
                "failedPods": [], "evicted": []}

    async def message_status(self, user: str, msg_id: str) -> doc.MessageStatus:
        self.calls += 1
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return {"user": user, "id": msg_id, "state": state}

    async def presence(self, pod: str | None = None) -> doc.PresenceList:
        return {"users": []}

    async def user_presence(self, user: str) -> doc.UserPresence:
        return {"user": user, "connections": []}

    async def pods(self) -> doc.PodList:
        self.calls += 1
        count = self.connections.pop(0) if len(self.connections) > 1 else self.connections[0]
        return {"pods": [{"pod": "p", "state": "draining", "connections": count, "users": 1,
                          "lastHeartbeat": 0, "admin": None}]}

    async def drain(self, pod: str, over: float, then_exit: bool = False) -> doc.DrainStarted:
        if pod != "p":
            raise NotFound(f"pod {pod!r} is not running")
        return {"pod": pod, "state": "draining", "overSeconds": over, "exit": then_exit}

    async def dead_letters(self, user: str | None = None,
                           limit: int = 100) -> doc.DeadLetterList:
        return {"messages": []}

    async def retry_dead(self, msg_id: str, user: str | None = None) -> doc.RetryResult:
        raise NotFound("none")

    async def aclose(self) -> None:
        pass


def test_fake_target_is_a_target() -> None:
    target: Target = FakeTarget(["acked"])  # mypy checks the protocol here
    assert target.name == "fake"


async def test_send_wait_outcomes() -> None:
    ack = Envelope(type="t", id="m", requires_ack=True)
    acked = await operations.send(FakeTarget(["pending", "pending", "acked"]), "u", ack, 5)
    assert acked.problem is None
    assert acked.document["state"] == "acked"
    dead = await operations.send(FakeTarget(["pending", "dead"]), "u", ack, 5)
    assert isinstance(dead.problem, NotDone)
    assert "dead-lettered" in dead.problem.message
    slow = FakeTarget(["pending"])
    pending = await operations.send(slow, "u", ack, 0.2)
    assert pending.problem is not None
    assert pending.problem.message == "not acked within 0.2s"
    assert 2 <= slow.calls <= 6


async def test_drain_wait_and_not_found() -> None:
    done = await operations.drain(FakeTarget(connections=[3, 1, 0]), "p", 0, wait=True)
    assert done.problem is None
    assert done.document["drained"] is True
    with pytest.raises(NotFound, match=r"^pod q not found$"):
        await operations.drain(FakeTarget(), "q", 0)
    assert await operations.wait_drained(FakeTarget(connections=[2]), "p", 0.1) is not None
    with pytest.raises(NotFound, match=r"^no dead letter with id m for user u$"):
        await operations.retry_dead(FakeTarget(), "m", "u")
