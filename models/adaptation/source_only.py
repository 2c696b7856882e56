"""Source-only baseline (and oracle): one backbone + one decoder trained with class-weighted CE."""
from __future__ import annotations

import copy
from typing import Mapping

import torch
from mmengine.config import Config
from torch import nn

from models.adaptation.base import SingleOptimizerMethod, register_method
from models.losses import cross_entropy
from models.segmentor import Segmentor


def class_weight_of(model_cfg: Mapping) -> list[float] | None:
    """CE class weights where mmseg configs keep them: decode_head.loss_decode.class_weight."""
    loss = (model_cfg.get("decode_head") or {}).get("loss_decode") or {}
    if isinstance(loss, (list, tuple)):  # mmseg allows a list of losses; the first is the CE
        loss = loss[0] if loss else {}
    cw = loss.get("class_weight")
    return list(cw) if cw is not None else None


def optim_modules_cfg(optim_cfg: Mapping, decoder_names: list[str]) -> dict:
    """Translate the method-agnostic ``decoder_lr_mult`` into per-module lr multipliers."""
    cfg = copy.deepcopy(dict(optim_cfg))
    mult = float(cfg.pop("decoder_lr_mult", 1.0))
    cfg["lr_mult"] = {name: mult for name in decoder_names}
    return cfg


@register_method("source-only")
class SourceOnly(SingleOptimizerMethod):
    """Trains the plain segmentor on labelled source crops; the target is never seen."""

    needs_target = False

    def __init__(self, cfg: Config | Mapping, *, total_iters: int):
        super().__init__(cfg, total_iters=total_iters)
        m = self.cfg["model"]
        self.net["segmentor"] = Segmentor(m["backbone"], m["decode_head"], m.get("neck"))
        self.class_weight = class_weight_of(m)
        seg = self.net["segmentor"]
        modules = {"backbone": seg.backbone, "decode_head": seg.decode_head}
        if seg.neck is not None:
            modules["neck"] = seg.neck
        self.add_optimizer("student", modules, optim_modules_cfg(self.cfg["optim"], ["decode_head"]),
                           self.cfg.get("lr_schedule"))

    def losses(self, batch: Mapping) -> dict[str, torch.Tensor]:
        src = batch["source"]
        logits = self.net["segmentor"].forward_logits(src["img"])
        ce = cross_entropy(logits, src["label"], class_weight=self.class_weight)
        return {"loss": ce, "ce_src": ce}

    def backbones(self) -> list[nn.Module]:
        return [self.net["segmentor"].backbone]

    def decoders(self) -> list[nn.Module]:
        return [self.net["segmentor"].decode_head]

    def inference_config(self) -> dict:
        m = self.cfg["model"]
        return {"type": "Segmentor", "backbone": m["backbone"], "decode_head": m["decode_head"],
                "neck": m.get("neck")}

    def inference_segmentor(self) -> nn.Module:
        return self.net["segmentor"]
