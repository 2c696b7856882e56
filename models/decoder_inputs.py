"""The layers through which a decode head reads its input levels, and scaling them so the head keeps its function
when its inputs are scaled (``scale_input_layers``).

Why: ST-DASegNet's DDM hands each decoder its levels weighted by v in (0, 1) (v = 1/2 when the DDM starts neutral).
A decoder warm-started from a plain segmentor read those levels unweighted: scaling its input layers by 1/v makes
it compute at the start what the plain model computed (``adaptation.ddm_start: neutral``).

The input layers are found by running the head once: every convolution or linear layer whose input is one of the
level tensors themselves (mmseg heads hand them on unchanged: SegFormer's per-level 1x1 convolutions, ASPP's
branches). A head that first transforms a level some other way (pooling into a convolution, say) is caught by the
check that follows: its output on the scaled levels must equal its output on the plain ones.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from core.errors import ConfigError

#: how far the scaled head's logits may stray from the plain head's (float32 sums in a different order)
TOLERANCE = 1e-4


def input_layers(head: nn.Module, levels: Sequence[Tensor]) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every Conv2d / Linear of ``head`` that takes one of ``levels`` as its input."""
    ids = {id(t) for t in levels}
    found: dict[str, nn.Module] = {}
    hooks = []
    for name, module in head.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            def seen(mod, args, name=name):
                if args and id(args[0]) in ids:
                    found[name] = mod
            hooks.append(module.register_forward_pre_hook(seen))
    try:
        with torch.no_grad():
            head(list(levels))
    finally:
        for h in hooks:
            h.remove()
    return sorted(found.items())


@torch.no_grad()
def scale_input_layers(head: nn.Module, levels: Sequence[Tensor], factor: float) -> list[str]:
    """Multiply the weights of ``head``'s input layers by ``factor`` so that head(levels / factor) after equals
    head(levels) before; returns the layers' names. Checked on ``levels`` in eval mode; a head whose output
    does not follow (it reads a level through something else first) is left as it was and refused."""
    was_training = head.training
    head.eval()
    try:
        plain = head(list(levels))
        layers = input_layers(head, levels)
        if not layers:
            raise ConfigError(f"{type(head).__name__}: no convolution or linear layer reads its input levels "
                              "directly, so its inputs cannot be rescaled (use adaptation.ddm_start 'random')",
                              field="model.overrides")
        kept = {name: layer.weight.detach().clone() for name, layer in layers}
        for _, layer in layers:
            layer.weight.mul_(factor)
        scaled = head([t / factor for t in levels])
        if not torch.allclose(scaled, plain, atol=TOLERANCE, rtol=TOLERANCE):
            for name, layer in layers:
                layer.weight.copy_(kept[name])
            raise ConfigError(f"{type(head).__name__} reads its input levels through more than its convolution and "
                              "linear layers, so scaling them does not keep its output (use adaptation.ddm_start "
                              "'random')", field="model.overrides")
        return [name for name, _ in layers]
    finally:
        head.train(was_training)
