"""Batches of unlabelled windows for pretraining, drawn from the imagery of one domain or several."""
from __future__ import annotations

from typing import Any, Sequence

import torch


def domain_shares(batch_size: int, domains: int, iteration: int) -> list[int]:
    """How many windows of a batch each domain gives: an equal share, the remainder going round by iteration
    (so over the run every domain is seen alike, and the split of any iteration is known again on resume)."""
    base, extra = divmod(int(batch_size), int(domains))
    return [base + (1 if (i - iteration) % domains < extra else 0) for i in range(domains)]


class ImageryBatches:
    """``{"image": {"img": (B,C,h,w), "valid": (B,h,w)}}`` from unlabelled window samplers (models.sampling's
    WindowSampler over each domain, each normalising with its domain's statistics), split by
    :func:`domain_shares`."""

    def __init__(self, samplers: Sequence[Any], batch_size: int, *, device: torch.device | str = "cpu"):
        if not samplers:
            raise ValueError("ImageryBatches needs at least one sampler")
        self.samplers = list(samplers)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)

    def next(self, iteration: int) -> dict:
        parts = [s.sample(k) for s, k in zip(self.samplers, domain_shares(self.batch_size, len(self.samplers),
                                                                           iteration)) if k > 0]
        return {"image": {"img": torch.cat([p["img"] for p in parts]).to(self.device),
                          "valid": torch.cat([p["valid"] for p in parts]).to(self.device)}}

    def state_dict(self) -> dict:
        return {"samplers": [s.state_dict() for s in self.samplers]}

    def load_state_dict(self, state: dict) -> None:
        for s, st in zip(self.samplers, state["samplers"]):
            s.load_state_dict(st)
