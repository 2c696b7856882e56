"""Which geoadapt code made a result: the package version and, run from a git checkout, its commit and whether its
tracked files differ from it. Every bundle's provenance records it, with the code of each run of a resumed training
job (``models.training.loop``), so a model, or a benchmark row reused from an earlier run, can be traced to the code
that trained it.
"""
from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

#: the checkout this code runs from, when it runs from one (an installed package has no .git beside it)
ROOT = Path(__file__).resolve().parents[1]
GIT_TIMEOUT_S = 10


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def code_version() -> dict:
    """{"version": the package's, "commit": the checkout's HEAD or None, "modified": whether tracked files differ
    from it (None without a checkout)}; read once per process (a copy each call: records may keep it)."""
    return dict(_read_code_version())


@functools.lru_cache(maxsize=1)
def _read_code_version() -> dict:
    try:
        version = metadata.version("geoadapt")
    except metadata.PackageNotFoundError:
        version = None
    commit = modified = None
    if (ROOT / ".git").exists():
        commit = _git("rev-parse", "HEAD")
        status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
        modified = None if status is None else bool(status)
    return {"version": version, "commit": commit, "modified": modified}
