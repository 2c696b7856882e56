"""Loss terms shared by the adaptation methods: weighted cross entropy and the vanilla GAN loss."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from core.jobspec import IGNORE_INDEX
from models.segmentor import upsample


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    class_weight: Sequence[float] | Tensor | None = None,
    pixel_weight: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Softmax CE, logits upsampled to the label size, mean over the non-ignored pixels.

    Each pixel's negative log-likelihood is multiplied by ``class_weight[label]`` and by
    ``pixel_weight`` (the pseudo-label weights); the sum is divided by the number of pixels that
    are not ``ignore_index``, so weights act as true multipliers rather than being re-normalised.
    """
    logits = upsample(logits, target.shape[-2:])
    cw = None
    if class_weight is not None:
        cw = torch.as_tensor(class_weight, dtype=logits.dtype, device=logits.device)
    nll = F.cross_entropy(logits, target, weight=cw, ignore_index=ignore_index, reduction="none")
    if pixel_weight is not None:
        nll = nll * pixel_weight
    count = (target != ignore_index).sum()
    if count == 0:
        return logits.sum() * 0.0  # keeps the graph, contributes nothing
    return nll.sum() / count


def gan_loss(logits: Tensor, real: bool, size: tuple[int, int] | torch.Size | None = None) -> Tensor:
    """Vanilla GAN loss: BCE with logits against 1 (real) or 0 (fake), upsampled to ``size`` first."""
    if size is not None:
        logits = upsample(logits, size)
    target = torch.full_like(logits, 1.0 if real else 0.0)
    return F.binary_cross_entropy_with_logits(logits, target)
