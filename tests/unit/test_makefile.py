"""The Makefile's targets pull in what they need on a fresh clone: `make bench`
(like `make peers`) installs the socket.io peers' npm packages before the peers
bench runs. Checked with `make -n` (nothing is run), with the lock file marked
new, as it is on a clone without bench/peers/node_modules."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("target", ["bench", "peers"])
def test_bench_targets_install_the_peers_first(target: str) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    plan = subprocess.run(
        ["make", "-n", "-W", "bench/peers/package-lock.json", target],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60).stdout
    lines = plan.splitlines()
    npm = [i for i, line in enumerate(lines) if "npm ci" in line]
    bench = [i for i, line in enumerate(lines) if "bench/run_all.py" in line]
    assert npm and bench, plan
    assert npm[0] < bench[0], plan
