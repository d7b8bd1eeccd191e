"""Every key a Lua script touches comes from KEYS (issue 14): a name built inside
a script (from ARGV, or by joining strings) is invisible to Redis Cluster's
routing and would reach another node's slot. The contract suites run these
scripts on a real Redis Cluster too (``redis-cluster`` param), which refuses
a key of another slot; this test names the offending line in any case."""

from __future__ import annotations

import re
from importlib import resources

import pytest

SCRIPTS = sorted(p.name for p in resources.files("wsnode.lua").iterdir()
                 if p.name.endswith(".lua"))
# redis.call('CMD', <key>, ...), kcall('CMD', <key>, ...), pcall(redis.call, 'CMD', <key>
CALL = re.compile(r"(?:redis\.p?call|kcall|pcall\(redis\.call)\(?,?\s*'([A-Z]+)'\s*,\s*([^,)]+)")
# ``key``: locals taken from KEYS (checked below); the others: parameters of the
# helpers kill(), next_due() and reserve(), which are called with KEYS (checked below).
FROM_KEYS = re.compile(r"^(KEYS\[[^\]]+\]|key|due|dlq|pending|relayed|budget)$")
# Commands whose first argument is not a key.
KEYLESS = {"TIME"}


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_key_comes_from_keys(name: str) -> None:
    text = resources.files("wsnode.lua").joinpath(name).read_text()
    offenders = []
    for n, line in enumerate(text.splitlines(), 1):
        code = line.split("--", 1)[0]
        for command, arg in CALL.findall(code):
            if command not in KEYLESS and not FROM_KEYS.match(arg.strip()):
                offenders.append(f"{name}:{n}: {command} {arg.strip()}")
        if re.search(r"\blocal\s+key\b", code) and "KEYS[" not in code:
            offenders.append(f"{name}:{n}: a key local not taken from KEYS: {code.strip()}")
    assert offenders == []


def test_the_key_helpers_take_their_keys_from_keys() -> None:
    """``kill(key, encid, pending, due, dlq, relayed, ...)``, ``next_due(due)``
    and ``reserve(budget, ...)`` are called with KEYS only."""
    text = resources.files("wsnode.lua").joinpath("acks.lua").read_text()
    calls = re.findall(r"\bkill\(([^)]*)\)", text)
    assert len(calls) > 1, "acks.lua defines and calls kill()"
    for args in calls[1:]:  # the first is its definition
        key, _, pending, due, dlq, relayed = (a.strip() for a in args.split(",")[:6])
        assert key in {"key", "KEYS[1]"}, args
        assert all(a.startswith("KEYS[") for a in (pending, due, dlq, relayed)), args
    assert set(re.findall(r"\bnext_due\(([^)]*)\)", text)[1:]) == {"KEYS[1]"}
    budgets = [args.split(",")[0].strip() for args in re.findall(r"\breserve\(([^)]*)", text)]
    assert len(budgets) > 2 and set(budgets[1:]) <= {"KEYS[1]", "KEYS[8]"}, budgets
