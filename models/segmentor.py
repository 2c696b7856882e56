"""Plain segmentor (backbone + decode head from mmseg config dicts) and the inference-segmentor registry.

Every inference segmentor exposes ``predict_logits(x) -> (N, K, H, W)`` at the input resolution;
the windowed predictor, the bundle and evaluation only ever call that, so they never know how a model
was trained (house style: inference always goes through the plain segmentor interface).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import warnings
import mmseg.models  # noqa: F401  (registers mmseg backbones/heads in MODELS)
import models.backbones  # noqa: F401  (registers our backbones beside them)
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor, nn

from core.errors import ConfigError

#: inference segmentor types by name, so a bundle can rebuild its network from config alone
SEGMENTORS: dict[str, type[nn.Module]] = {}


def register_segmentor(cls: type[nn.Module]) -> type[nn.Module]:
    SEGMENTORS[cls.__name__] = cls
    return cls


def build_segmentor(cfg: dict) -> nn.Module:
    """Build an inference segmentor from ``dict(type=<registered name>, **kwargs)``."""
    cfg = copy.deepcopy(dict(cfg))
    kind = cfg.pop("type", "Segmentor")
    if kind not in SEGMENTORS:
        raise ConfigError(f"unknown segmentor type {kind!r}; known: {sorted(SEGMENTORS)}", field="segmentor.type")
    return SEGMENTORS[kind](**cfg)


@contextlib.contextmanager
def quiet_mmengine():
    """mmengine logs every initialised tensor at INFO and mmseg warns about loss defaults we do not
    use (our losses are in models.losses); keep both out of job logs."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"mmseg\..*")
            yield
    finally:
        logger.setLevel(level)


def build_module(cfg: dict, what: str) -> nn.Module:
    """Build an mmseg-registry module and run its own weight initialisation (random, no downloads)."""
    cfg = copy.deepcopy(dict(cfg))
    init_cfg = cfg.get("init_cfg")
    if isinstance(init_cfg, dict) and init_cfg.get("type") == "Pretrained":
        # pretrained weights are loaded by models.pretrained from a local file, never fetched here
        cfg.pop("init_cfg")
    with quiet_mmengine():
        try:
            module = MODELS.build(cfg)
        except (KeyError, TypeError, ValueError, AssertionError) as e:
            raise ConfigError(f"cannot build {what} {cfg.get('type')!r}: {e}", field=f"model.{what}") from None
        if hasattr(module, "init_weights"):
            module.init_weights()
    return module


def upsample(logits: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


@torch.no_grad()
def probe_channels(backbone: nn.Module, in_channels: int, size: int = 64) -> list[int]:
    """Channels of each pyramid level of any mmseg backbone, found by one small forward pass."""
    was_training = backbone.training
    backbone.eval()
    try:
        feats = backbone(torch.zeros(1, in_channels, size, size))
    finally:
        backbone.train(was_training)
    return [int(f.shape[1]) for f in feats]


def decode(head: nn.Module, feats: list[Tensor]) -> Tensor:
    """Decoder logits at the decoder's own resolution (mmseg heads pick their levels by in_index)."""
    return head(list(feats))


@register_segmentor
class Segmentor(nn.Module):
    """One backbone, optional neck, one decode head: the source-only baseline and the oracle."""

    def __init__(self, backbone: dict, decode_head: dict, neck: dict | None = None):
        super().__init__()
        self.backbone = build_module(backbone, "backbone")
        self.neck = build_module(neck, "neck") if neck else None
        self.decode_head = build_module(decode_head, "decode_head")

    @property
    def num_classes(self) -> int:
        return int(self.decode_head.num_classes)

    def extract(self, x: Tensor) -> list[Tensor]:
        feats = list(self.backbone(x))
        return list(self.neck(feats)) if self.neck is not None else feats

    def forward_logits(self, x: Tensor) -> Tensor:
        """Logits at the decoder's resolution (training computes the loss after upsampling)."""
        return decode(self.decode_head, self.extract(x))

    def predict_logits(self, x: Tensor) -> Tensor:
        return upsample(self.forward_logits(x), x.shape[-2:])

    def prediction_heads(self) -> list[nn.Module]:
        """The decode heads whose mean logits are the prediction."""
        return [self.decode_head]

    forward = predict_logits

