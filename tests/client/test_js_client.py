"""The JS client (clients/js/wsnode.js) under Node's test runner, against real pods."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path

from tests.client.conftest import start_cluster
from tests.client.test_scenarios import KINDS, SCENARIOS, load
from tests.client.tooling import JS_DIR, node_binary
from tests.conftest import PodFactory
from tests.support.cluster import ClusterSlice
from tests.support.pods import API_KEY, SECRET


def run_node(*args: str, env: dict[str, str] | None = None,
             timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([node_binary(), *args], cwd=JS_DIR, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, check=False)


async def test_node_test_runner_against_two_pods(
        npm_modules: Path, pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    pods = start_cluster(pod_factory, cluster, 2)
    env = {
        "WSNODE_TEST_PODS": json.dumps([{"podId": p.pod_id, "ws": p.ws_url, "admin": p.admin_url}
                                        for p in pods]),
        "WSNODE_TEST_API_KEY": API_KEY,
        "WSNODE_TEST_JWT_SECRET": SECRET,
    }
    done = await asyncio.to_thread(run_node, "--test", "--test-reporter=tap", "test/", env=env)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    # Every test ran and passed: none skipped for want of pods.
    counts = dict(re.findall(r"^# (tests|pass|fail|skipped|cancelled) (\d+)$", report, re.M))
    assert counts["pass"] == counts["tests"] and int(counts["tests"]) >= 10, report


def test_node_runs_every_shared_scenario() -> None:
    """clients/js/test/scenarios.test.mjs runs tests/client/scenarios.json: each
    scenario is a test of its own, and every one ran and passed."""
    done = run_node("--test", "--test-reporter=tap", "test/scenarios.test.mjs",
                    env={"WSNODE_SCENARIOS": str(SCENARIOS)})
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    passed = set(re.findall(r"^ok \d+ - (.+)$", report, re.M))
    scenarios = load()
    wanted = {f"{kind}: {s['name']}" for kind in KINDS for s in scenarios[kind]}
    assert wanted <= passed, sorted(wanted - passed)


def test_type_declarations_match_the_api(npm_modules: Path) -> None:
    done = run_node(str(npm_modules / "typescript" / "bin" / "tsc"), "-p", "test/tsconfig.json")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_module_has_no_dependencies() -> None:
    source = (JS_DIR / "wsnode.js").read_text()
    code = [line for line in source.splitlines() if not line.lstrip().startswith("//")]
    imports = [line for line in code
               if re.match(r"\s*import\b", line) or "import(" in line or "require(" in line]
    assert imports == [], imports
    package = json.loads((JS_DIR / "package.json").read_text())
    assert "dependencies" not in package and set(package["devDependencies"]) == {"ws",
                                                                                 "typescript"}
