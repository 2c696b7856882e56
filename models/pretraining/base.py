"""Base class and registry of self-supervised pretraining methods.

A pretraining method is a wrapper like an adaptation method (models/adaptation/base.py): it owns a plain
segmentor (``self.net["encoder"]``: the config's backbone, neck and decode head) plus the heads only
pretraining uses (projections, predictors, a reconstruction decoder), one optimiser, and one training
iteration (``losses``). So the training loop, checkpoints, exact resume and progress are the adaptation
methods' (models.training.loop.TrainLoop). What it leaves is :meth:`PretrainingMethod.pretrained_state`: the
backbone's weights (and the decode head's, for the methods that train it) under the ``backbone.`` /
``decode_head.`` keys that models.pretrained loads into any later job's model.

Batch contract for ``train_step``: ``{"image": {"img": (B,C,h,w), "valid": (B,h,w)}}`` (windows of either
domain, normalised by their domain's statistics: ImageryBatches), or for ``paired`` methods the co-registered
``{"source": {...}, "target": {...}}`` of models.adaptation.feature_regression.PairedBatches.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor, nn

from core.errors import ConfigError
from models.adaptation.base import SingleOptimizerMethod, to_plain
from models.adaptation.source_only import optim_modules_cfg
from models.segmentor import Segmentor, decode

#: method name (as in the job spec) -> class
PRETRAINING: dict[str, type["PretrainingMethod"]] = {}


def register_pretraining(name: str):
    """Class decorator: make a pretraining method buildable by its job-spec name."""

    def wrap(cls: type[PretrainingMethod]) -> type[PretrainingMethod]:
        cls.name = name
        PRETRAINING[name] = cls
        return cls

    return wrap


def build_pretraining(cfg: Mapping, *, total_iters: int) -> "PretrainingMethod":
    """Build the method named by ``cfg.pretraining.type`` from a config resolved for it
    (models.config.resolve_config(..., pretraining=method))."""
    name = (cfg.get("pretraining") or {}).get("type")
    if name not in PRETRAINING:
        raise ConfigError(f"unknown pretraining method {name!r}; known: {sorted(PRETRAINING)}", field="method")
    return PRETRAINING[name](cfg, total_iters=total_iters)


def decoder_features(seg: Segmentor, feats: list[Tensor]) -> Tensor:
    """The decode head's last feature map before its classifier (the input of an mmseg head's ``conv_seg``),
    from the backbone (and neck) features ``feats``: the decoder-side map that dense objectives work on."""
    seen: list[Tensor] = []
    hook = seg.decode_head.conv_seg.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        decode(seg.decode_head, feats)
    finally:
        hook.remove()
    return seen[-1]


def masked_mean(feat: Tensor, valid: Tensor) -> Tensor:
    """(B, D, h, w) features averaged over the cells whose pixels (``valid``, B x H x W) are mostly valid -> (B, D)."""
    w = torch.nn.functional.interpolate(valid[:, None].to(feat.dtype), size=feat.shape[-2:], mode="area")
    return (feat * w).sum((2, 3)) / w.sum((2, 3)).clamp_min(1e-6)


@torch.no_grad()
def probe_widths(seg: Segmentor, in_channels: int, size: int = 64) -> tuple[list[int], int]:
    """Channels of each level that ``seg.extract`` gives, and of the decoder-side map, by one small forward pass."""
    was = seg.training
    seg.eval()
    try:
        feats = seg.extract(torch.zeros(1, in_channels, size, size))
        dec = decoder_features(seg, feats)
    finally:
        seg.train(was)
    return [int(f.shape[1]) for f in feats], int(dec.shape[1])


def known_keys(block: Mapping, allowed: set[str], field: str = "pretraining") -> None:
    unknown = sorted(set(block) - allowed - {"type", "optim", "lr_schedule"})
    if unknown:
        raise ConfigError(f"{field}: unknown keys {unknown}; known: {sorted(allowed)}", field=field)


class PretrainingMethod(SingleOptimizerMethod):
    """One way of learning a backbone without labels. Subclasses set ``paired`` / ``trains_decoder``, build
    their heads and call :meth:`finish`, and implement ``losses``."""

    name: ClassVar[str] = "pretraining"
    needs_target = False
    #: batches are co-registered source/target pairs (CroCo) rather than windows of either domain
    paired: ClassVar[bool] = False
    #: the decode head is trained too (its weights go into the checkpoint, all but its classifier)
    trains_decoder: ClassVar[bool] = False

    def __init__(self, cfg: Mapping, *, total_iters: int):
        super().__init__(cfg, total_iters=total_iters)
        self.block: dict[str, Any] = dict(to_plain(self.cfg.get("pretraining") or {}))
        m = self.cfg["model"]
        seg = Segmentor(m["backbone"], m["decode_head"], m.get("neck"))
        # dense objectives read the decoder's map before its classifier: no dropout on it
        seg.decode_head.dropout = None
        self.net["encoder"] = seg
        self.in_channels = int(m["backbone"].get("in_channels", 3))
        self.level_widths, self.decoder_width = probe_widths(seg, self.in_channels)

    def finish(self, heads: Mapping[str, nn.Module]) -> None:
        """Add the method's own heads and build the optimiser over what it trains (pretraining's own recipe,
        ``pretraining.optim`` / ``pretraining.lr_schedule``, in place of the config's fine-tuning one)."""
        for name, head in heads.items():
            self.net[name] = head
        seg = self.encoder
        modules: dict[str, nn.Module] = {"backbone": seg.backbone}
        if seg.neck is not None:
            modules["neck"] = seg.neck
        if self.trains_decoder:
            modules["decode_head"] = seg.decode_head
        else:
            seg.decode_head.requires_grad_(False)
        modules.update(heads)
        optim = dict(self.block.get("optim") or self.cfg["optim"])
        schedule = dict(self.block.get("lr_schedule") or self.cfg.get("lr_schedule") or {})
        # a short run (a time-boxed one) must not spend most of itself warming up: at most a tenth of it
        if "warmup_iters" in schedule:
            schedule["warmup_iters"] = min(int(schedule["warmup_iters"]), max(1, self.total_iters // 10))
        self.add_optimizer("student", modules, optim_modules_cfg(optim, []), schedule)

    @property
    def encoder(self) -> Segmentor:
        return self.net["encoder"]

    def trained_parts(self) -> list[str]:
        parts = ["backbone"] + (["neck"] if self.encoder.neck is not None else [])
        return parts + (["decode_head"] if self.trains_decoder else [])

    def pretrained_state(self) -> dict[str, Tensor]:
        """The weights a later job starts from: ``backbone.*`` (``neck.*``), and ``decode_head.*`` but its
        classifier when the method trained the decoder; plain CPU tensors."""
        seg = self.encoder
        out: dict[str, Tensor] = {}
        for part in self.trained_parts():
            for k, v in getattr(seg, part).state_dict().items():
                if part == "decode_head" and k.startswith("conv_seg."):
                    continue  # the classifier learned nothing here, and a later job has its own classes
                out[f"{part}.{k}"] = v.detach().cpu().clone()
        return out

    # the adaptation contract: the encoder stands for the inference segmentor (it predicts nothing useful)
    def backbones(self) -> list[nn.Module]:
        return [self.encoder.backbone]

    def decoders(self) -> list[nn.Module]:
        return [self.encoder.decode_head]

    def inference_config(self) -> dict:
        m = self.cfg["model"]
        return {"type": "Segmentor", "backbone": m["backbone"], "decode_head": m["decode_head"], "neck": m.get("neck")}

    def inference_segmentor(self) -> nn.Module:
        return self.encoder
