"""The import graph of the whole project (house style): which layer may import which, and no cycles, between
modules or between the packages inside a layer.

    cli ──────────────┐ (composition root: may import every layer)
    benchmarks ───────┤ (drive the service and the workers from the outside)
    service ─┐        │
    workers ─┼─> core │
    models ──┘        │
    workers -> models

Checked statically on every module, imports inside functions included, so a forbidden import fails
here even on a code path no other test runs; plus, in fresh interpreters, that the CLI and the API
start without torch, mmseg, models or workers.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "models", "workers", "service", "benchmarks", "cli", "configs")

#: package -> our packages it may import (itself always)
ALLOWED = {
    "core": set(),
    "models": {"core", "configs"},  # configs: the package of mmseg config files it loads
    "workers": {"core", "models"},
    "service": {"core"},
    "benchmarks": {"core", "models", "workers", "service"},
    "cli": {"core", "models", "workers", "service", "benchmarks"},
    "configs": set(),
}
#: package -> third-party packages it must never import
THIRD_PARTY_FORBIDDEN = {
    "core": {"torch", "mmseg", "mmcv", "mmengine", "fastapi", "celery"},
    "models": {"fastapi", "celery"},
    "workers": {"fastapi"},
    "service": {"torch", "mmseg", "mmcv", "mmengine"},
}
HEAVY = ("torch", "mmseg", "mmcv", "mmengine", "models", "workers")


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path):
    """(line, dotted name) of every absolute import in the file, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def _project_files():
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (a name inside a module counts as that module)."""
    raw = {_module_name(p): {n for _, n in _imports(p) if n.split(".")[0] in PACKAGES} for p in _project_files()}

    def resolve(name: str) -> str:
        while name not in raw and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    return {m: {resolve(n) for n in names} - {m} for m, names in raw.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        path.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return path[path.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        state[u] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


@pytest.mark.parametrize("package", PACKAGES)
def test_layer_imports_only_what_it_may(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in _imports(path):
            top = name.split(".")[0]
            ours_not_allowed = top in PACKAGES and top != package and top not in ALLOWED[package]
            if ours_not_allowed or top in THIRD_PARTY_FORBIDDEN.get(package, ()):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, "\n".join(bad)


def test_import_graph_has_no_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def component(module: str) -> str:
    """What a module belongs to inside its layer: ``models.adaptation.base`` -> ``models.adaptation``; a module
    directly in a layer (``models.bundle``) is its own."""
    return ".".join(module.split(".")[:2])


def component_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    components: dict[str, set[str]] = {}
    for module, imported in graph.items():
        components.setdefault(component(module), set()).update(component(m) for m in imported)
    return {c: deps - {c} for c, deps in components.items()}


def test_components_do_not_import_each_other_in_a_cycle():
    """Modules may import each other without a cycle while their packages do (models.adaptation.base ->
    models.training.schedules, models.training.loop -> models.adaptation.base): two packages that can only be
    understood, tested and moved together."""
    cycle = find_cycle(component_graph(import_graph()))
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle)


def test_component_graph_sees_a_cycle_that_modules_do_not():
    modules = {"m.a.x": {"m.b.y"}, "m.b.y": set(), "m.b.z": {"m.a.w"}, "m.a.w": set()}
    assert find_cycle(modules) is None
    assert find_cycle(component_graph(modules)) == ["m.a", "m.b", "m.a"]


def test_cycle_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", ["cli", "service.app", "service.api.routes.jobs", "service.store.jobs"])
def test_entry_points_start_without_heavy_modules(module):
    code = (f"import sys, {module}\n"
            f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
            "print(heavy)\n"
            "sys.exit(1 if heavy else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, f"{module} imported {r.stdout.strip()} {r.stderr[-500:]}"
