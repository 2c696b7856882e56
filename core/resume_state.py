"""Resume state in a job's output folder: the checkpoint folders its training runs write (the job's own and
those of its phases: a source-only baseline, a feature-regression teacher), and their removal once the job
has succeeded. The bundle holds the weights that matter; checkpoints serve only a resume."""
from __future__ import annotations

import shutil
from pathlib import Path

from core.job_layout import CHECKPOINTS


def checkpoint_dirs(output: str | Path) -> list[Path]:
    """Every checkpoint folder under a job's output folder (not following links)."""
    out = Path(output)
    if not out.is_dir():
        return []
    return sorted(p for p in out.rglob(CHECKPOINTS) if p.is_dir() and not p.is_symlink())


def drop_checkpoints(output: str | Path) -> list[Path]:
    """Remove every checkpoint folder under a finished job's output; returns those removed."""
    dirs = checkpoint_dirs(output)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    return dirs
