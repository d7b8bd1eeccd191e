"""The package's shape: no import circle between wsnode's modules (issue 17), and
only node.py and wsctl's targets build backends (through ``backends.build_backends``)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "wsnode"


def _imports() -> dict[str, set[str]]:
    """Module -> the wsnode modules it imports (TYPE_CHECKING imports included:
    a circle through them is still a circle for a reader)."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[0] == "wsnode" and len(parts) > 1 and parts[1] in modules:
                    graph[path.stem].add(parts[1])
                elif node.module == "wsnode":
                    graph[path.stem] |= {a.name for a in node.names if a.name in modules}
    graph.pop("__init__", None)
    return graph


def test_no_import_circle() -> None:
    graph = _imports()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for nxt in sorted(graph.get(module, ())):
            if state.get(nxt) == 1:
                circle = [*path[path.index(nxt):], nxt]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_only_the_factory_builds_backends() -> None:
    built = re.compile(r"(?<!class )\b(RedisAcks|RedisPresence|RabbitBus|RedisLimiter|"
                       r"RedisTracer|RedisTopics|MemoryAcks|MemoryPresence|MemoryBus|MemoryTopics)\(")
    offenders = []
    for path in [*PACKAGE.glob("*.py"), *(ROOT / "wsctl").glob("*.py")]:
        if path.name == "backends.py":
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(ROOT)}: {m.group(1)}" for m in built.finditer(text)
                      if f"class {m.group(1)}" not in text]  # its own module may
    assert offenders == []


def test_modules_stay_short() -> None:
    long = [f"{p.name} ({n})" for p in PACKAGE.glob("*.py")
            if (n := len(p.read_text().splitlines())) > 450]
    assert long == [], "split these modules (STYLE: files readable in one sitting)"
