"""Re-estimate a trained model's BatchNorm statistics on another domain's images (AdaBN).

Li et al., "Revisiting Batch Normalization For Practical Domain Adaptation" (ICLR-W 2017): keep every
weight, replace each BatchNorm layer's running mean and variance with those of the target images. It
needs no labels and no training, so it is the cheapest adaptation baseline there is; Benchmark A
scores it beside ST-DASegNet, whose decoders also see target batches in training mode.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics: what AdaBN re-estimates."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Replace the running statistics of every BatchNorm layer of ``model`` by their plain average over
    ``batches`` (normalised images, (B, C, H, W)), fed through ``model(x)``. Weights, biases and every
    other buffer are kept; the model's train/eval modes are restored. Returns the number of layers.

    Raises ``ValueError`` if ``batches`` is empty: zeroed statistics would be silently wrong.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in layers]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers]
    seen = 0
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch counts the same
        model.eval()
        for m in layers:  # only the BatchNorm layers in training mode: dropout and the rest stay off
            m.train()
        for x in batches:
            model(x)
            seen += 1
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        for m, training in modes.items():
            m.train(training)
        if seen == 0:
            for m, (mean, var, n) in zip(layers, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(n)
    if seen == 0:
        raise ValueError("no batches to re-estimate the BatchNorm statistics from")
    return len(layers)
