"""The API and the CLI start without torch, mmseg, models or workers (checked in a fresh interpreter)."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["service.app", "service.cli", "service.api.routes.jobs", "service.store.jobs"])
def test_service_imports_no_heavy_module(module):
    code = (
        f"import sys, {module}\n"
        "heavy = [m for m in ('torch', 'mmseg', 'mmcv', 'mmengine', 'models', 'workers') if m in sys.modules]\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{module} imported {r.stdout.strip()} {r.stderr[-500:]}"
