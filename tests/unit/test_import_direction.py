"""servekit/ holds three rooms, and the imports between them go one way (docs/architecture.md).

- core: the operator's CLI core, the modules directly under ``servekit/`` (commands, runner,
  inventory, status, project, ...);
- lab: ``servekit/lab/`` (the local lab cluster, its image, model and outsider scan);
- bench: ``servekit/bench/`` (the benchmark harnesses).

``servekit/cli.py`` is the composition root: it wires the subcommands of all three rooms, and
nothing imports it. The core imports neither the lab nor the bench (where it needs something of
theirs, they register it with the core); no two modules import each other, directly or in a
ring. Read with ``ast`` (nothing is imported), lazy imports inside functions included.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "servekit"
COMPOSITION_ROOT = "servekit.cli"


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported servekit module (a submodule where ``from pkg import sub`` names one)
    where: str  # path:line


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))
            if "_project" not in path.parts}


def room(module: str) -> str:
    """core, lab, bench, root (servekit.cli) or shared (module_utils: the roles' Python, used by all)."""
    if module == COMPOSITION_ROOT:
        return "root"
    for name in ("lab", "bench", "module_utils"):
        if module == f"servekit.{name}" or module.startswith(f"servekit.{name}."):
            return "shared" if name == "module_utils" else name
    return "core"


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    """Every import of a servekit module in ``path``, at any depth of the file."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, where) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append(Import(module, sub if sub in known else base, where))
    return [imp for imp in found if imp.target == "servekit" or imp.target.startswith("servekit.")]


def all_imports() -> list[Import]:
    known = modules()
    return [imp for name, path in known.items() for imp in imports_of(name, path, set(known))]


def direction_problems(imports: list[Import]) -> list[str]:
    problems = []
    for imp in imports:
        if imp.target == COMPOSITION_ROOT and imp.source != COMPOSITION_ROOT:
            problems.append(f"{imp.where}: {imp.source} imports {COMPOSITION_ROOT}, the composition root "
                            "(move what both need into a core module)")
        elif room(imp.source) == "core" and room(imp.target) in ("lab", "bench"):
            problems.append(f"{imp.where}: core module {imp.source} imports {imp.target} "
                            f"({room(imp.target)}): let the {room(imp.target)} register it with the core")
    return problems


def cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected groups of two or more modules (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.target != imp.source:
            graph.setdefault(imp.source, set()).add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def cycle_problems(imports: list[Import]) -> list[str]:
    problems = []
    for group in cycles(imports):
        edges = dict.fromkeys(f"{imp.where} ({imp.source} -> {imp.target})" for imp in imports
                              if imp.source in group and imp.target in group and imp.source != imp.target)
        problems.append(f"import cycle between {', '.join(group)}: " + "; ".join(edges))
    return problems


def test_the_package_has_its_three_rooms():
    rooms = {room(name) for name in modules()}
    assert {"core", "lab", "bench", "root"} <= rooms, f"rooms found under servekit/: {sorted(rooms)}"


def test_imports_go_from_the_composition_root_and_the_lab_and_bench_to_the_core():
    problems = direction_problems(all_imports())
    assert not problems, "imports against the direction:\n" + "\n".join(problems)


def test_no_two_modules_import_each_other():
    problems = cycle_problems(all_imports())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("source", "target", "wrong"), [
    ("servekit.runner", "servekit.lab", True),
    ("servekit.inventory", "servekit.lab.base", True),
    ("servekit.status", "servekit.bench.serving", True),
    ("servekit.commands", "servekit.cli", True),
    ("servekit.lab.core", "servekit.cli", True),
    ("servekit.cli", "servekit.lab", False),
    ("servekit.lab.core", "servekit.runner", False),
    ("servekit.bench.provision", "servekit.lab", False),
    ("servekit.commands", "servekit.module_utils.placement", False),
])
def test_the_rule_itself(source, target, wrong):
    assert bool(direction_problems([Import(source, target, "x.py:1")])) is wrong


def test_a_ring_of_three_is_a_cycle():
    ring = [Import("servekit.a", "servekit.b", "a.py:1"), Import("servekit.b", "servekit.c", "b.py:1"),
            Import("servekit.c", "servekit.a", "c.py:9"), Import("servekit.c", "servekit.d", "c.py:2")]
    assert cycles(ring) == [["servekit.a", "servekit.b", "servekit.c"]]
    assert "c.py:9 (servekit.c -> servekit.a)" in cycle_problems(ring)[0]
