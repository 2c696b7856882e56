"""Training checkpoints: method state (nets, optimisers, schedules), iteration, RNG and sampler states.

Written atomically (temporary file, then rename) so a worker killed mid-write never leaves a
truncated ``last.pth`` behind; resume picks up exactly where the checkpoint was taken.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

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


@contextmanager
def rng_kept() -> Iterator[None]:
    """Inside, draw freely: the global random number generators are as they were on leaving (work beside
    training, such as validation or a reading before it, must not change what training draws)."""
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


def atomic_save(obj: Any, path: Path) -> Path:
    with atomic_writer(path) as fh:
        torch.save(obj, fh)
    return Path(path)


def save_checkpoint(path: Path, *, iteration: int, method_state: dict, batches_state: dict | None = None,
                    loop_state: dict | None = None, ranks: list[dict] | None = None) -> Path:
    """``iteration``: the number of iterations completed (the next one to run). ``ranks``: when several
    processes train together, each one's :func:`rank_state` in rank order (the top-level batch and RNG
    states are rank 0's)."""
    state = {"format": FORMAT, "iteration": int(iteration), "method": method_state, "batches": batches_state,
             "loop": loop_state or {}, "rng": capture_rng()}
    if ranks is not None:
        state["ranks"] = ranks
    return atomic_save(state, path)


def rank_state(batches_state: dict | None) -> dict:
    """What differs between the ranks of one job: each one's batch source (its own share of the data) and
    RNG states."""
    return {"batches": batches_state, "rng": capture_rng()}


def state_of_rank(ckpt: dict, rank: int, world_size: int) -> dict:
    """The batch-source and RNG states a checkpoint holds for ``rank`` of ``world_size`` ranks."""
    ranks = ckpt.get("ranks")
    if ranks is None:
        if world_size == 1:
            return {"batches": ckpt.get("batches"), "rng": ckpt["rng"]}
        raise ValueError(f"the checkpoint was written by one process; this run has {world_size} ranks")
    if len(ranks) != world_size:
        raise ValueError(f"the checkpoint was written by {len(ranks)} ranks; this run has {world_size}")
    return ranks[rank]


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
