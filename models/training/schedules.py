"""Optimisers with per-module parameter groups, and the poly learning-rate schedule with linear warm-up."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from core.errors import ConfigError
from core.overrides import OPTIMIZERS  # what a config may name (core/overrides.py, with the keys read here)

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def param_groups(
    modules: Mapping[str, nn.Module],
    *,
    lr: float,
    weight_decay: float = 0.0,
    lr_mult: Mapping[str, float] | None = None,
    no_decay_keys: tuple[str, ...] = (),
    norm_decay: bool = True,
) -> list[dict]:
    """Parameter groups over named modules.

    ``lr_mult`` multiplies the lr of a whole named module (e.g. decoders x2 for DeepLab);
    parameters of normalisation layers (when ``norm_decay`` is False) and those whose name
    contains one of ``no_decay_keys`` (e.g. ``pos_block``) get no weight decay.
    """
    lr_mult = dict(lr_mult or {})
    groups: dict[tuple[float, float], list] = {}
    seen: set[int] = set()
    for top, module in modules.items():
        mult = float(lr_mult.get(top, 1.0))
        for mod_name, sub in module.named_modules():
            is_norm = isinstance(sub, _NORM_TYPES)
            for p_name, p in sub.named_parameters(recurse=False):
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                full = f"{top}.{mod_name}.{p_name}"
                decay = weight_decay
                if (is_norm and not norm_decay) or any(k in full for k in no_decay_keys):
                    decay = 0.0
                groups.setdefault((mult, decay), []).append(p)
    return [
        {"params": ps, "lr": lr * mult, "initial_lr": lr * mult, "weight_decay": decay, "lr_mult": mult}
        for (mult, decay), ps in sorted(groups.items())
    ]


def build_optimizer(modules: Mapping[str, nn.Module], cfg: Mapping) -> torch.optim.Optimizer:
    """``cfg``: dict(type='AdamW'|'Adam'|'SGD', lr=..., weight_decay=..., other torch kwargs,
    lr_mult={module: x}, no_decay_keys=[...], norm_decay=bool)."""
    cfg = dict(cfg)
    kind = cfg.pop("type")
    lr = float(cfg.pop("lr"))
    weight_decay = float(cfg.pop("weight_decay", 0.0))
    groups = param_groups(
        modules,
        lr=lr,
        weight_decay=weight_decay,
        lr_mult=cfg.pop("lr_mult", None),
        no_decay_keys=tuple(cfg.pop("no_decay_keys", ())),
        norm_decay=bool(cfg.pop("norm_decay", True)),
    )
    if kind not in OPTIMIZERS:
        raise ConfigError(f"unsupported optimiser {kind!r} ({', '.join(OPTIMIZERS)})", field="optim.type")
    if "betas" in cfg:
        cfg["betas"] = tuple(cfg["betas"])
    try:
        return getattr(torch.optim, kind)(groups, lr=lr, weight_decay=weight_decay, **cfg)
    except TypeError as e:
        raise ConfigError(f"bad optimiser settings for {kind}: {e}", field="optim") from None


def poly_factor(iteration: int, total: int, *, power: float = 1.0) -> float:
    """(1 - it/total)^power, it clamped to [0, total]."""
    it = min(max(iteration, 0), total)
    return (1.0 - it / total) ** power


def warmup_factor(iteration: int, warmup_iters: int, warmup_ratio: float = 1e-6) -> float:
    """mmcv-1.x linear warm-up: 1 - (1 - it/warmup)(1 - ratio) before ``warmup_iters``, then 1."""
    if warmup_iters <= 0 or iteration >= warmup_iters:
        return 1.0
    return 1.0 - (1.0 - iteration / warmup_iters) * (1.0 - warmup_ratio)


class PolySchedule:
    """Sets each group's lr for an iteration: (initial - min_lr) * poly_factor + min_lr.

    Stateless apart from the last iteration set, so resume needs only the iteration; it still
    has a ``state_dict`` so checkpoints treat it like any scheduler.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total: int, *, power: float = 1.0, min_lr: float = 0.0,
                 warmup_iters: int = 0, warmup_ratio: float = 1e-6):
        self.optimizer = optimizer
        self.total = int(total)
        self.power = float(power)
        self.min_lr = float(min_lr)
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)
        self.last_iteration = -1
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])

    def lr_at(self, iteration: int, initial_lr: float) -> float:
        """mmcv-1.x semantics: regular = (initial - min_lr) * poly + min_lr, times the warm-up factor."""
        floor = min(self.min_lr, initial_lr)
        regular = (initial_lr - floor) * poly_factor(iteration, self.total, power=self.power) + floor
        return regular * warmup_factor(iteration, self.warmup_iters, self.warmup_ratio)

    def step(self, iteration: int) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(iteration, g["initial_lr"])
        self.last_iteration = iteration

    def get_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_iteration": self.last_iteration, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.last_iteration = int(state["last_iteration"])
        if self.last_iteration >= 0:
            self.step(self.last_iteration)


def build_schedule(optimizer: torch.optim.Optimizer, total: int, cfg: Mapping | None) -> PolySchedule:
    cfg = dict(cfg or {})
    cfg.pop("type", None)
    try:
        return PolySchedule(optimizer, total, **cfg)
    except TypeError as e:
        raise ConfigError(f"bad lr schedule settings: {e}", field="lr_schedule") from None
