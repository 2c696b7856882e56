"""Import direction between the layers (house style): service -> core <- workers -> models.

Checked statically on every module, so a forbidden import fails here even on a code path that no
other test runs; plus one dynamic check that the CLI entry point does not load torch at start-up.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package -> top-level packages it must never import (anywhere, lazily included)
FORBIDDEN = {
    "core": {"torch", "mmseg", "mmcv", "mmengine", "fastapi", "celery", "service", "workers", "models"},
    "models": {"service", "workers", "fastapi", "celery"},
    "workers": {"service", "fastapi"},
    "service": {"workers", "models"},
}
#: service may use these only inside functions (CLI commands that run locally), never at import
SERVICE_LAZY_ONLY = {"torch", "mmseg", "mmcv", "mmengine", "models", "workers"}


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node, a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node, node.module.split(".")[0]


def _module_level(tree_path: Path):
    tree = ast.parse(tree_path.read_text())
    top = set()
    for node in tree.body:
        for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else []:
            if isinstance(sub, ast.Import):
                top |= {a.name.split(".")[0] for a in sub.names}
            elif isinstance(sub, ast.ImportFrom) and sub.level == 0 and sub.module:
                top.add(sub.module.split(".")[0])
    return top


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_imports(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node, name in _imports(path):
            if name in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    # the local CLI commands (run, predict, evaluate, bench) call workers/models lazily by design
    if package == "service":
        bad = [b for b in bad if "/cli/" not in b]
    assert not bad, "\n".join(bad)


def test_service_imports_nothing_heavy_at_module_level():
    bad = []
    for path in sorted((ROOT / "service").rglob("*.py")):
        heavy = _module_level(path) & SERVICE_LAZY_ONLY
        if heavy:
            bad.append(f"{path.relative_to(ROOT)} imports {sorted(heavy)} at module level")
    assert not bad, "\n".join(bad)


def test_cli_starts_without_torch():
    code = "import sys, service.cli; assert 'torch' not in sys.modules, 'torch loaded'; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
