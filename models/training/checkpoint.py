"""Training checkpoints: method state (nets, optimisers, schedules), iteration, RNG and sampler states.

Written atomically (temporary file, then rename) so a worker killed mid-write never leaves a
truncated ``last.pth`` behind; resume picks up exactly where the checkpoint was taken.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.files import atomic_writer

FORMAT = 1
LAST = "last.pth"
BEST = "best.pth"


def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: Path) -> Path:
    with atomic_writer(path) as fh:
        torch.save(obj, fh)
    return Path(path)


def save_checkpoint(path: Path, *, iteration: int, method_state: dict, batches_state: dict | None = None,
                    loop_state: dict | None = None) -> Path:
    """``iteration``: the number of iterations completed (the next one to run)."""
    return atomic_save(
        {"format": FORMAT, "iteration": int(iteration), "method": method_state, "batches": batches_state,
         "loop": loop_state or {}, "rng": capture_rng()},
        path,
    )


def load_checkpoint(path: Path) -> dict:
    # our own files hold numpy/python RNG states, which the weights-only unpickler refuses
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=False)
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {ckpt.get('format')!r}")
    return ckpt


def find_resume(workdir: Path | None) -> Path | None:
    if workdir is None:
        return None
    p = Path(workdir) / LAST
    return p if p.exists() else None
