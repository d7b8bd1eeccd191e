"""Readers for the deployment files, and what they are checked against: the
``WSNODE_*`` settings of :class:`~wsnode.settings.NodeSettings` and the options
of ``wsnode serve``, as the code defines them (not as a copy in the tests)."""

from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer.main
import yaml

from wsnode.cli import app as wsnode_app
from wsnode.settings import ENV_PREFIX, NodeSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
K8S = ROOT / "deploy" / "k8s"

SETTING_NAMES = frozenset(ENV_PREFIX + name.upper() for name in NodeSettings.model_fields)

# Secrets that pass every check, for files that take them from the environment.
TEST_SECRETS = {"WSNODE_JWT_SECRET": "deploy-test-secret-" + "0123456789abcdef" * 2,
                "WSNODE_API_KEY": "deploy-test-api-key-0123"}


# --- wsnode serve --------------------------------------------------------------

def serve_command() -> Any:
    """The click command behind ``wsnode serve`` (typer may vendor its own click)."""
    return typer.main.get_command(wsnode_app).commands["serve"]  # type: ignore[attr-defined]


def parse_serve_args(args: list[str]) -> dict[str, Any]:
    """The options ``wsnode serve ARGS`` would run with; raises (a click usage
    error) on an option that does not exist or a bad value."""
    with serve_command().make_context("serve", list(args)) as ctx:
        return dict(ctx.params)


@contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with every ``WSNODE_*`` variable replaced by ``env``, in an
    empty working directory (a pod also reads ``./.env``)."""
    saved, cwd = dict(os.environ), Path.cwd()
    with tempfile.TemporaryDirectory() as empty:
        try:
            for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
                del os.environ[key]
            os.environ.update(env)
            os.chdir(empty)
            yield
        finally:
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(saved)


def settings_for(env: Mapping[str, str], args: Sequence[str] = ()) -> NodeSettings:
    """The settings a pod started with this environment and these serve arguments
    would have (CLI options override the environment, as in ``wsnode serve``)."""
    params = parse_serve_args(list(args))
    overrides = {k: v for k, v in params.items() if k in NodeSettings.model_fields}
    with environment(env):
        return load_settings(**overrides)


# --- docker compose ------------------------------------------------------------

_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation (``$$``, ``${X}``, ``${X:-d}``, ``${X-d}``,
    ``${X:?err}``, ``${X?err}``) over every string of a parsed document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        present = name in env and (env[name] != "" or not (op or "").startswith(":"))
        if present:
            return env[name]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise KeyError(f"required variable {name} is missing a value: {arg}")
        return ""
    return _INTERPOLATION.sub(one, value)


def compose_variables() -> set[str]:
    """Every variable the compose file interpolates (comments are not)."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            found.update(m["name"] or m["bare"] for m in _INTERPOLATION.finditer(value)
                         if not m["escaped"])
    walk(yaml.safe_load(COMPOSE.read_text()))
    return found


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml parsed, then interpolated with ``env`` (default: the test
    secrets, as a .env file beside it would give)."""
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return interpolate(doc, TEST_SECRETS if env is None else env)  # type: ignore[no-any-return]


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` (mapping or ``KEY=VALUE`` list) as a dict."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command_of(service: Mapping[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def duration_seconds(text: str) -> float:
    """``40s``, ``1m30s``, ``500ms``, ``1h`` (compose and Go durations)."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), text
    return sum(float(n) * units[u] for n, u in parts)


def port_of(address: str) -> int:
    """The port of ``host:port``, ``:port`` or ``port``."""
    return int(str(address).rsplit(":", 1)[-1])


def published_ports(service: Mapping[str, Any]) -> dict[int, tuple[str, int]]:
    """container port -> (host ip or "", host port), from short-syntax ``ports``."""
    out: dict[int, tuple[str, int]] = {}
    for spec in service.get("ports") or []:
        parts = str(spec).split(":")
        container = int(parts[-1].split("/")[0])
        host_ip = parts[0] if len(parts) == 3 else ""
        out[container] = (host_ip, int(parts[-2]) if len(parts) >= 2 else container)
    return out


# --- Dockerfile ----------------------------------------------------------------

@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(KEYWORD, arguments)`` per instruction: comments dropped, ``\\``
    continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    stages: list[Stage] = []
    args: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions(path.read_text()):
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], ""), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, base))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, rest))
    return stages


def exec_form(arg: str) -> list[str]:
    """The JSON array of an exec-form ENTRYPOINT/CMD/HEALTHCHECK CMD."""
    value = json.loads(arg)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arg
    return value


def env_of(stage: Stage) -> dict[str, str]:
    """The ``ENV`` of a stage (``K=V`` pairs, possibly several per line, quoted)."""
    env: dict[str, str] = {}
    for arg in stage.all("ENV"):
        for pair in shlex.split(arg):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


# --- Kubernetes ----------------------------------------------------------------

def k8s_documents(names: list[str] | None = None) -> list[dict[str, Any]]:
    """Every document of the given manifest files (default: kustomization's)."""
    if names is None:
        names = list(kustomization()["resources"])
    docs: list[dict[str, Any]] = []
    for name in names:
        docs.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
    return docs


def kustomization() -> dict[str, Any]:
    doc = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
