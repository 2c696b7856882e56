"""Which geoadapt code made a result: the package version, a digest of the code itself, and, run from a git
checkout, its commit and whether its tracked files differ from it. Every bundle's provenance records it, with the
code of each run of a resumed training job (``models.training.loop``), so a model, or a benchmark row reused from an
earlier run, can be traced to the code that trained it.

The digest is what names the code where a commit cannot: an installed copy (the worker image copies the sources
without their .git) and a modified checkout, whose commit no longer says what ran.
"""
from __future__ import annotations

import functools
import hashlib
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Iterable

#: the checkout this code runs from, when it runs from one (an installed package has no .git beside it)
ROOT = Path(__file__).resolve().parents[1]
GIT_TIMEOUT_S = 10
#: the packages whose code decides what a job makes (the service, CLI and benchmarks only hand jobs to them)
SOURCE_PACKAGES = ("core", "models", "workers", "configs")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def source_digest(root: Path, packages: Iterable[str] = SOURCE_PACKAGES) -> str:
    """SHA-256 over every Python file of ``packages`` under ``root``: their paths relative to ``root`` in sorted
    order and their bytes. The same sources give the same digest wherever they lie (checkout or site-packages);
    compiled caches do not count."""
    files = sorted(p for package in packages for p in (root / package).rglob("*.py")
                   if "__pycache__" not in p.relative_to(root).parts)
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(root).as_posix().encode()
        content = path.read_bytes()
        # lengths first, so that no two different trees concatenate to the same bytes
        digest.update(len(name).to_bytes(8, "big") + name + len(content).to_bytes(8, "big") + content)
    return digest.hexdigest()


def code_version() -> dict:
    """{"version": the package's, "source": the digest of its code (``source_digest``), "commit": the checkout's
    HEAD or None, "modified": whether tracked files differ from it (None without a checkout)}; read once per process
    (a copy each call: records may keep it)."""
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
    return {"version": version, "source": source_digest(ROOT), "commit": commit, "modified": modified}
