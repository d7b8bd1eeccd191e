"""The test suite's own port picking: pytest-xdist workers (``make test``) hand
out ports from disjoint slices, so a port one worker probed free is never handed
out by another meanwhile."""

from __future__ import annotations

import pytest

from tests.support.pods import _below_ephemeral


def test_each_worker_has_a_slice_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    first, last = _below_ephemeral()
    slices = []
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        slices.append(_below_ephemeral())
    for low, high in slices:
        assert first <= low < high <= last
        assert high - low + 1 >= (last - first + 1) // 3 - 1
    ranges = [set(range(low, high + 1)) for low, high in slices]
    assert not ranges[0] & ranges[1] and not ranges[1] & ranges[2] and not ranges[0] & ranges[2]


def test_one_process_has_the_whole_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "1")
    one = _below_ephemeral()
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT")
    assert one == _below_ephemeral()
