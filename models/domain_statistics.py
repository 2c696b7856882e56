"""Batch-norm statistics kept per domain and frozen: source batches normalised with the source's, target
batches with the target's.

Chang et al., "Domain-Specific Batch Normalization for Unsupervised Domain Adaptation" (CVPR 2019), keep one
set of batch-norm statistics per domain and share every weight. Here both sets are estimated once, before
training, from the model training starts from (AdaBN's estimate, models.batchnorm_statistics, on each domain's
crops) and stay frozen, as with ``norm_eval``: frozen statistics shared by both domains put the source through
the target's (or the target through the source's), and training then moves the weights to undo the difference.

The layers hold the target's statistics (what the delivered model predicts the target with); the source's wait
in a ``DomainStatistics`` module beside them (a buffer per layer, so they travel in checkpoints) and change
places with them inside ``DomainStatistics.applied``. Places are exchanged, never copied: a forward pass's
autograd graph keeps the tensors it normalised with, so its backward is right whichever set is in place by then.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

_STATS = ("running_mean", "running_var")


class DomainStatistics(nn.Module):
    """The other domain's running statistics of a fixed list of batch-norm layers (same order, same shapes)."""

    def __init__(self, layers: Sequence[_BatchNorm]):
        super().__init__()
        self.count = len(layers)
        for i, layer in enumerate(layers):
            for name in _STATS:
                self.register_buffer(self._key(i, name), getattr(layer, name).detach().clone())
        #: whether ``capture`` has filled the buffers (a model trained without them would be silently wrong)
        self.register_buffer("captured", torch.tensor(False))
        self._depth = 0  # ``applied`` inside ``applied`` leaves these statistics in place (a second exchange undoes)

    @staticmethod
    def _key(i: int, name: str) -> str:
        return f"layer{i}_{name}"

    def _check(self, layers: Sequence[_BatchNorm]) -> None:
        if len(layers) != self.count:
            raise ValueError(f"{len(layers)} batch-norm layers given; these statistics are of {self.count}")

    @torch.no_grad()
    def capture(self, layers: Sequence[_BatchNorm]) -> None:
        """Keep the layers' current running statistics as this domain's."""
        self._check(layers)
        for i, layer in enumerate(layers):
            for name in _STATS:
                self._buffers[self._key(i, name)].copy_(getattr(layer, name))
        self.captured.fill_(True)

    def _exchange(self, layers: Sequence[_BatchNorm]) -> None:
        for i, layer in enumerate(layers):
            for name in _STATS:
                key = self._key(i, name)
                layer._buffers[name], self._buffers[key] = self._buffers[key], layer._buffers[name]

    @contextmanager
    def applied(self, layers: Sequence[_BatchNorm]) -> Iterator[None]:
        """Inside: the layers normalise with these statistics (and these buffers hold the layers' own)."""
        self._check(layers)
        if not bool(self.captured):
            raise RuntimeError("per-domain batch-norm statistics used before they were estimated")
        if self._depth == 0:
            self._exchange(layers)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._exchange(layers)
