"""The scenarios both clients run (tests/client/scenarios.json, see its "about"),
against the Python client; clients/js/test/scenarios.test.mjs runs the same file
against the JS client (tests/client/test_js_client.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from wsnode.client import Backoff, DedupWindow, Subscriptions, Verdict
from wsnode.client._core import DrainHint, ending

SCENARIOS = Path(__file__).with_name("scenarios.json")
KINDS = ("dedup", "backoff", "close", "topics")


def load() -> dict[str, Any]:
    return dict(json.loads(SCENARIOS.read_text()))


def cases(kind: str) -> list[Any]:
    return [pytest.param(s, id=s["name"]) for s in load()[kind]]


def test_the_file_has_only_known_kinds_and_unique_names() -> None:
    scenarios = load()
    assert sorted(k for k in scenarios if k != "about") == sorted(KINDS)
    names = [f"{kind}: {s['name']}" for kind in KINDS for s in scenarios[kind]]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("scenario", cases("dedup"))
def test_dedup(scenario: dict[str, Any]) -> None:
    if scenario.get("refused"):
        with pytest.raises(ValueError, match="at least one"):
            DedupWindow(scenario["size"])
        return
    window = DedupWindow(scenario["size"])
    for i, step in enumerate(scenario["steps"]):
        at = f"step {i} {step}"
        if "check" in step:
            assert window.check(step["check"]) is Verdict(step["verdict"]), at
        elif "handled" in step:
            window.handled(step["handled"])
        elif "forget" in step:
            window.forget(step["forget"])
        elif "has" in step:
            assert (step["has"] in window) is step["expect"], at
        elif "length" in step:
            assert len(window) == step["length"], at
        else:
            pytest.fail(f"unknown step {at}")


@pytest.mark.parametrize("scenario", cases("backoff"))
def test_backoff(scenario: dict[str, Any]) -> None:
    base, cap = scenario["baseMs"] / 1000, scenario["capMs"] / 1000
    if scenario.get("refused"):
        with pytest.raises(ValueError, match="base"):
            Backoff(base=base, cap=cap)
        return
    backoff = Backoff(base=base, cap=cap, rng=lambda: float(scenario["random"]))
    for attempt, delay_ms in scenario["delays"]:
        assert backoff.delay(attempt) * 1000 == pytest.approx(delay_ms, abs=1e-6), attempt


@pytest.mark.parametrize("scenario", cases("close"))
def test_close(scenario: dict[str, Any]) -> None:
    hint = DrainHint.from_payload(scenario["reconnect"]) if "reconnect" in scenario else None
    end = ending(scenario["code"], scenario["reason"], hint)
    assert {"reason": end.reason, "code": end.code} == scenario["reported"]
    then = "stop" if end.final else "drain" if end.drain_delay is not None else "backoff"
    assert then == scenario["then"]
    if end.drain_delay is not None:
        assert end.drain_delay * 1000 == pytest.approx(scenario["delayMs"], abs=1e-6)


@pytest.mark.parametrize("scenario", cases("topics"))
def test_topics(scenario: dict[str, Any]) -> None:
    wanted = Subscriptions()
    for i, step in enumerate(scenario["steps"]):
        at = f"step {i} {step}"
        if "add" in step and step.get("refused"):
            with pytest.raises(ValueError, match="non-empty string"):
                wanted.add(step["add"])
        elif "add" in step:
            assert wanted.add(step["add"]) is step["new"], at
        elif "remove" in step:
            assert wanted.remove(step["remove"]) is step["was"], at
        elif "has" in step:
            assert (step["has"] in wanted) is step["expect"], at
        elif "topics" in step:
            assert list(wanted.topics) == step["topics"], at
        elif "length" in step:
            assert len(wanted) == step["length"], at
        else:
            pytest.fail(f"unknown step {at}")
