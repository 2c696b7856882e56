"""How a pipeline runs its job, decided once by workers.pipelines.dispatch: the progress callbacks, whether
to resume from the last checkpoint, the device, and where progress messages go; and, in the extra processes of
a job that trains on several devices (workers.distributed), which rank this is and where the ranks meet."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from models.training.callbacks import Callback


def _quiet(msg: str) -> None:
    pass


@dataclass(frozen=True)
class RunOptions:
    callbacks: tuple[Callback, ...] = ()
    resume: bool = True
    device: torch.device = torch.device("cpu")
    log: Callable[[str], None] = _quiet
    #: this process's rank among a job's training processes (0: the job's own process)
    rank: int = 0
    #: where the ranks of the job meet (torch.distributed init_method); set by rank 0 for the others
    init_method: str | None = None

    @classmethod
    def of(cls, callbacks: Sequence[Callback] | None = None, *, resume: bool = True, device: str | None = None,
           log: Callable[[str], None] | None = None) -> "RunOptions":
        """``device`` None: the GPU when there is one, else the CPU."""
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return cls(tuple(callbacks or ()), resume, dev, log or _quiet)

    def with_callbacks(self, callbacks: Sequence[Callback]) -> "RunOptions":
        return dataclasses.replace(self, callbacks=tuple(callbacks))

    def as_rank(self, rank: int, init_method: str) -> "RunOptions":
        """The options of rank ``rank`` (> 0) of a job: no callbacks (rank 0 reports for the job)."""
        return dataclasses.replace(self, callbacks=(), rank=int(rank), init_method=init_method)
