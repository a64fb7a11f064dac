"""The package's layering: each unit (a subpackage, or a top-level module) imports only units of a
lower layer and itself, every import counted (function-level ones too), and no two modules
import each other at import time. docs/architecture.md names the same layers."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "evolve_ray"
DOC = PACKAGE.parent / "docs/architecture.md"

# Lowest first. A unit is the first name under evolve_ray/; options is the config schema's own language.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__", "errors", "types"),
    ("rundir",),
    ("core",),
    ("tasks",),
    ("config", "options"),
    ("models", "sync"),
    ("engines", "reporting"),
    ("train", "actors"),
    ("driver",),
    ("experiments", "bench"),
    ("cli",),
)
SAME_UNIT = {"options": "config"}
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at import time) for every evolve_ray import in `path`; a TYPE_CHECKING
    import is no import at all, one inside a function runs only when it is called."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "evolve_ray" else [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        if _type_checking_only(node, parents):
            continue
        at_import = not any(isinstance(p, ast.FunctionDef | ast.AsyncFunctionDef) for p in _ancestors(node, parents))
        found += [(n, at_import) for n in names if n == "evolve_ray" or n.startswith("evolve_ray.")]
    return found


def _ancestors(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> list[ast.AST]:
    out = []
    while node in parents:
        node = parents[node]
        out.append(node)
    return out


def upward(edges: list[tuple[str, str]]) -> list[str]:
    """The imports that go to a higher layer, or to another unit of the same layer."""
    bad = []
    for src, dst in edges:
        a, b = unit_of(src), unit_of(dst)
        a, b = SAME_UNIT.get(a, a), SAME_UNIT.get(b, b)
        if a != b and LAYER[b] >= LAYER[a]:
            bad.append(f"{src} -> {dst} ({a}, layer {LAYER[a]}, imports {b}, layer {LAYER[b]})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _all_imports() -> tuple[list[tuple[str, str]], dict[str, set[str]]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges, at_import = [], defaultdict(set)
    for name, path in sorted(modules.items()):
        for target, now in imports(path):
            # `from evolve_ray.x import y`: the module y when it is one, else the module x
            edges.append((name, target))
            resolved = target if target in modules else target.rsplit(".", 1)[0]
            if now and resolved in modules and resolved != name:
                at_import[name].add(resolved)
    return edges, at_import


def test_no_unit_imports_a_higher_layer() -> None:
    edges, _ = _all_imports()
    units = {unit_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert sorted(units - set(LAYER)) == [], "a new unit: give it a layer here and in docs/architecture.md"
    assert len(edges) > 300  # the walk saw the package's imports
    assert upward(edges) == []


def test_no_import_circle() -> None:
    _, graph = _all_imports()
    assert sum(len(v) for v in graph.values()) > 200  # import-time edges
    assert cycles(graph) == []


def test_the_checks_can_fail() -> None:
    assert upward([("evolve_ray.core.losses", "evolve_ray.driver.loop")]) != []
    assert upward([("evolve_ray.engines.scoring", "evolve_ray.reporting.report")]) != []  # same layer
    assert upward([("evolve_ray.options", "evolve_ray.config"), ("evolve_ray.driver.loop", "evolve_ray.core")]) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_architecture_page_names_every_unit_in_its_layer() -> None:
    text = DOC.read_text(encoding="utf-8")
    table = text[text.index("## Layers") : text.index("## Roles")]
    rows = [line for line in table.splitlines() if line.startswith("    ")]
    for i, units in enumerate(LAYERS):
        row = next((r for r in rows if r.split()[0] == str(i)), "")
        for unit in units:
            if unit != "__init__":
                assert unit in row, f"docs/architecture.md's layer {i} row does not name {unit}"
