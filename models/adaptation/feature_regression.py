"""Feature-regression transfer: a student's features on target windows regress onto a frozen teacher's on the same ground.

Call flow of ``train_step`` (batch from :class:`PairedBatches` over the data layer's PairedSampler)::

    teacher (frozen, eval).extract(source window)  -> teacher features per level   (no grad)
    student.extract(target window, same ground)    -> student features per level
    per chosen level: valid mask downsampled to the level (area), optional tolerance
        (pooled features, or the min over +-r cell shifts per window), per-channel normalisation
        by the teacher's batch statistics, MSE (or L1) over valid cells
    weighted sum over levels -> backward -> step on the trainable parts (backbone by default)

The teacher's weights come from outside (``set_teacher``: a source-only model trained in the same
job, or an existing bundle); the student starts as a copy. Inference is the student: its backbone
with the teacher's (frozen, reused) decoder.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from mmengine.config import Config
from torch import Tensor, nn

from core.errors import ConfigError
from models.adaptation.base import SingleOptimizerMethod, register_method
from models.adaptation.source_only import optim_modules_cfg
from core.overrides import merge as _merge
from models.segmentor import Segmentor

PARTS = ("backbone", "neck", "decode_head")
LOSSES = ("mse", "l1")
TOLERANCES = ("none", "shift", "pool")


def level_mask(valid: Tensor, size: tuple[int, int], min_valid: float) -> Tensor:
    """(B,H,W) bool pixels -> (B,1,h,w) bool feature cells whose pixels are at least ``min_valid`` valid."""
    frac = F.interpolate(valid[:, None].float(), size=tuple(size), mode="area")
    return frac >= min_valid - 1e-6


def normalise_pair(s: Tensor, t: Tensor, mask: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Both features scaled by the teacher's per-channel mean/std over the valid cells of the batch:
    every channel weighs the same whatever its magnitude, and the target stays the teacher's."""
    m = mask.float()
    n = m.sum().clamp_min(1.0)
    mean = (t * m).sum(dim=(0, 2, 3), keepdim=True) / n
    var = (((t - mean) ** 2) * m).sum(dim=(0, 2, 3), keepdim=True) / n
    std = (var + eps).sqrt()
    return (s - mean) / std, (t - mean) / std


def per_window_error(s: Tensor, t: Tensor, mask: Tensor, loss: str) -> tuple[Tensor, Tensor]:
    """Mean error over valid cells of each window -> (B,), and the number of valid cells (B,)."""
    d = s - t
    e = d.pow(2) if loss == "mse" else d.abs()
    e = e.mean(dim=1, keepdim=True) * mask
    cells = mask.float().sum(dim=(1, 2, 3))
    return e.sum(dim=(1, 2, 3)) / cells.clamp_min(1.0), cells


def level_loss(s: Tensor, t: Tensor, valid: Tensor, *, loss: str = "mse", normalize: bool = True,
               min_valid: float = 0.99, tolerance: str = "none", radius: int = 0) -> Tensor:
    """Regression loss at one level: student ``s`` and teacher ``t`` (B,C,h,w), pixel mask ``valid`` (B,H,W)."""
    mask = level_mask(valid, s.shape[-2:], min_valid)
    r = int(radius) if tolerance != "none" else 0
    if tolerance == "pool" and r > 0:
        k = 2 * r + 1
        mf = mask.float()
        # pooled over valid cells only, so nodata never leaks into a mean
        den = F.avg_pool2d(mf, k, 1, r, count_include_pad=False).clamp_min(1e-6)
        s = F.avg_pool2d(s * mf, k, 1, r, count_include_pad=False) / den
        t = F.avg_pool2d(t * mf, k, 1, r, count_include_pad=False) / den
    if normalize:
        s, t = normalise_pair(s, t, mask)
    h, w = s.shape[-2:]
    if tolerance != "shift" or r == 0 or min(h, w) <= 2 * r:
        err, cells = per_window_error(s, t, mask, loss)
    else:
        # the teacher's map shifted by (dy, dx) against the student's centre; per window the best shift
        sc, mc = s[..., r:h - r, r:w - r], mask[..., r:h - r, r:w - r]
        errs, counts = [], []
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                tt = t[..., r + dy:h - r + dy, r + dx:w - r + dx]
                mm = mc & mask[..., r + dy:h - r + dy, r + dx:w - r + dx]
                e, c = per_window_error(sc, tt, mm, loss)
                errs.append(torch.where(c > 0, e, torch.full_like(e, float("inf"))))
                counts.append(c)
        err = torch.stack(errs, 1).min(dim=1).values
        cells = torch.stack(counts, 1).max(dim=1).values
        err = torch.where(torch.isfinite(err), err, torch.zeros_like(err))
    has = cells > 0
    if not has.any():
        return s.sum() * 0.0  # nothing valid at this level: a zero that keeps the graph
    return err[has].mean()


@register_method("feature-regression")
class FeatureRegression(SingleOptimizerMethod):
    """Frozen teacher segmentor + student (same architecture, initialised from the teacher)."""

    needs_target = True
    #: batches are pairs of windows on the same ground, not independent crops of each domain
    paired = True

    def __init__(self, cfg: Config | Mapping, *, total_iters: int):
        super().__init__(cfg, total_iters=total_iters)
        a = self.cfg.get("adaptation") or {}
        m = self.cfg["model"]
        self.loss = str(a.get("loss", "mse"))
        if self.loss not in LOSSES:
            raise ConfigError(f"adaptation.loss must be one of {LOSSES}, not {self.loss!r}", field="adaptation.loss")
        self.normalize = bool(a.get("normalize", True))
        self.min_valid = float(a.get("min_valid", 0.99))
        tol = dict(a.get("tolerance") or {})
        self.tolerance = str(tol.get("type", "none"))
        self.radius = int(tol.get("radius", 1))
        if self.tolerance not in TOLERANCES or self.radius < 0:
            raise ConfigError(f"adaptation.tolerance.type must be one of {TOLERANCES} with radius >= 0",
                              field="adaptation.tolerance")
        self.net["teacher"] = Segmentor(m["backbone"], m["decode_head"], m.get("neck"))
        self.net["student"] = copy.deepcopy(self.net["teacher"])
        self.teacher.requires_grad_(False)
        n_levels = len(self.cfg.get("level_channels") or self._probe_levels())
        levels = a.get("levels")
        self.levels = list(range(n_levels)) if levels is None else [int(i) for i in levels]
        if not self.levels or any(i < -n_levels or i >= n_levels for i in self.levels):
            raise ConfigError(f"adaptation.levels {levels!r}: the backbone has levels 0..{n_levels - 1}",
                              field="adaptation.levels")
        weights = a.get("level_weights")
        if weights is None:
            weights = [1.0 / len(self.levels)] * len(self.levels)
        if len(weights) != len(self.levels):
            raise ConfigError(f"adaptation.level_weights has {len(weights)} weights for {len(self.levels)} levels",
                              field="adaptation.level_weights")
        self.level_weights = [float(w) for w in weights]
        trainable = list(a.get("trainable") or ["backbone"])
        bad = [p for p in trainable if p not in PARTS]
        if bad:
            raise ConfigError(f"adaptation.trainable: unknown parts {bad}; known: {list(PARTS)}",
                              field="adaptation.trainable")
        self.trainable = [p for p in trainable if getattr(self.student, p) is not None]
        for part in PARTS:
            mod = getattr(self.student, part)
            if mod is not None:
                mod.requires_grad_(part in self.trainable)
        optim = _merge(self.cfg["optim"], a.get("optim") or {})
        schedule = _merge(self.cfg.get("lr_schedule") or {}, a.get("lr_schedule") or {})
        modules = {p: getattr(self.student, p) for p in self.trainable}
        self.add_optimizer("student", modules, optim_modules_cfg(optim, ["decode_head"]), schedule)

    def _probe_levels(self) -> list[int]:
        from models.segmentor import probe_channels

        bb = self.cfg["model"]["backbone"]
        return probe_channels(self.net["teacher"].backbone, int(bb.get("in_channels", 3)))

    @property
    def teacher(self) -> Segmentor:
        return self.net["teacher"]

    @property
    def student(self) -> Segmentor:
        return self.net["student"]

    def set_teacher(self, state_dict: Mapping[str, Any]) -> None:
        """Load the supervised source model into the teacher and start the student as its copy."""
        self.teacher.load_state_dict(state_dict)
        self.student.load_state_dict(self.teacher.state_dict())

    def train(self, mode: bool = True) -> "FeatureRegression":
        # frozen parts stay in eval mode (no dropout, no running-statistics updates)
        self.net.eval()
        if mode:
            for p in self.trainable:
                getattr(self.student, p).train()
        return self

    def losses(self, batch: Mapping) -> dict[str, Tensor]:
        src, tgt = batch["source"], batch["target"]
        valid = src["valid"] & tgt["valid"]
        with torch.no_grad():
            t_feats = self.teacher.extract(src["img"])
        s_feats = self.student.extract(tgt["img"])
        out: dict[str, Tensor] = {}
        total = None
        for lvl, w in zip(self.levels, self.level_weights):
            term = level_loss(s_feats[lvl], t_feats[lvl], valid, loss=self.loss, normalize=self.normalize,
                              min_valid=self.min_valid, tolerance=self.tolerance, radius=self.radius)
            out[f"feat_l{lvl % len(s_feats)}"] = term
            total = w * term if total is None else total + w * term
        out["loss"] = total
        return out

    def backbones(self) -> list[nn.Module]:
        return [self.student.backbone]

    def decoders(self) -> list[nn.Module]:
        return [self.student.decode_head]

    def after_pretrained(self, loaded: dict) -> None:
        # pretrained weights went into the student: the teacher follows (set_teacher overrides both)
        self.teacher.load_state_dict(self.student.state_dict())

    def inference_config(self) -> dict:
        m = self.cfg["model"]
        return {"type": "Segmentor", "backbone": m["backbone"], "decode_head": m["decode_head"],
                "neck": m.get("neck")}

    def inference_segmentor(self) -> nn.Module:
        return self.student


class PairedBatches:
    """Batches from a PairedSampler in the method batch contract: the source window and the target
    read onto its grid, both with the joint valid mask (the target's labels are never read)."""

    def __init__(self, sampler: Any, batch_size: int, *, device: torch.device | str = "cpu"):
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.device = torch.device(device)

    def next(self, iteration: int) -> dict:
        b = self.sampler.sample(self.batch_size)
        valid = b["valid"].to(self.device)
        return {"source": {"img": b["source"].to(self.device), "valid": valid},
                "target": {"img": b["target"].to(self.device), "valid": valid}}

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
