"""Siamese Image Modeling, SiameseIM (Tao et al., CVPR 2023), for any mmseg encoder.

The online branch sees a masked view of a window and predicts the dense representation of a second, differently
augmented view of the same window; the target branch, an exponential moving average (EMA) of the online one,
encodes the second view unmasked to give the targets. The predictor is told the relative position of the two
views: each target position (a target_grid x target_grid grid of view 2) is mapped through the window into view
1's coordinates, where the online map is read; the predictor gets that reading, the online view's global context,
Fourier features of the mapped position and the affine map between the views. Positions of view 2 outside view 1
are predicted too (from context and position alone), as the paper's decoder does.

Choices where the paper (a ViT) does not carry over, said here: masking zeroes patches of the input (a CNN or MiT
has no tokens to drop); the dense representation is the decode head's last map before its classifier (so the
decoder is pretrained too), projected by a 1x1-conv MLP; the loss is BYOL's 2 - 2 cos per position; the EMA
momentum rises from ``ema`` to 1 over the run (cosine), as BYOL's does.

Call flow of ``train_step``::

    two random geometries + intensity changes -> views 1, 2; view 1's patches zeroed at random (mask_ratio)
    online:  encoder(view 1 masked) -> decoder map -> projector -> F1
    target:  EMA encoder(view 2) -> decoder map -> EMA projector -> F2        (no gradient)
    q = grid on view 2; p = q mapped into view 1
    pred = predictor([F1 read at p, mean of F1, fourier(p), map view 2 -> view 1]); target = F2 read at q
    loss = mean over q valid in view 2 of 2 - 2 cos(pred, target) -> step -> EMA update of the target branch
"""
from __future__ import annotations

import copy
import math
from typing import Mapping

import torch
from torch import Tensor, nn

from core.errors import ConfigError
from models.pretraining.base import PretrainingMethod, decoder_features, known_keys, masked_mean, register_pretraining
from models.pretraining.losses import cosine_regression
from models.pretraining.views import (GeometrySettings, IntensitySettings, grid_points, intensity, map_points,
                                      mask_at, patch_mask, pixel_mask, random_geometry, relative_map, sample_at, warp)

_KEYS = {"mask_ratio", "mask_patch", "target_grid", "dim", "predictor_hidden", "position_frequencies", "ema",
         "views", "photometric"}


def fourier_features(points: Tensor, frequencies: int) -> Tensor:
    """(B, N, 2) positions -> (B, N, 2 + 4 * frequencies): the positions and sin/cos of them at octave frequencies."""
    out = [points]
    for k in range(frequencies):
        f = math.pi * (2.0 ** k)
        out += [torch.sin(f * points), torch.cos(f * points)]
    return torch.cat(out, -1)


def ema_momentum(base: float, iteration: int, total: int) -> float:
    """BYOL's schedule: 1 - (1 - base) * (cos(pi * it / total) + 1) / 2, from ``base`` at the start to 1."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(iteration, total) / max(total, 1)) + 1.0) / 2.0


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameters and floating buffers alike."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
    for t, o in zip(target.buffers(), online.buffers()):
        if t.dtype.is_floating_point:
            t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
        else:
            t.copy_(o)


def dense_projector(width: int, dim: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU(inplace=True), nn.Conv2d(width, dim, 1))


@register_pretraining("siameseim")
class SiameseIM(PretrainingMethod):
    """Masked online view -> dense representation of a second view (EMA target branch)."""

    trains_decoder = True

    def __init__(self, cfg: Mapping, *, total_iters: int):
        super().__init__(cfg, total_iters=total_iters)
        a = self.block
        known_keys(a, _KEYS)
        self.mask_ratio = float(a.get("mask_ratio", 0.5))
        self.mask_patch = int(a.get("mask_patch", 8))
        self.target_grid = int(a.get("target_grid", 8))
        self.frequencies = int(a.get("position_frequencies", 4))
        self.ema = float(a.get("ema", 0.99))
        if not (0 <= self.mask_ratio < 1 and self.mask_patch >= 1 and self.target_grid >= 1 and 0 <= self.ema <= 1):
            raise ConfigError("pretraining: 0 <= mask_ratio < 1, mask_patch and target_grid >= 1, 0 <= ema <= 1",
                              field="pretraining")
        self.geometry = GeometrySettings.of(a.get("views"))
        self.photometric = IntensitySettings.of(a.get("photometric"))
        dim = int(a.get("dim", 64))
        hidden = int(a.get("predictor_hidden", 256))
        # read at p, global context, position features, the 2 x 3 map between the views
        inputs = dim + dim + (2 + 4 * self.frequencies) + 6
        self.finish({"projector": dense_projector(self.decoder_width, dim),
                     "predictor": nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(inplace=True),
                                                nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
                                                nn.Linear(hidden, dim))})
        # the target branch: EMA copies, never trained by the optimiser (added after it was built)
        self.net["target_encoder"] = copy.deepcopy(self.encoder).requires_grad_(False)
        self.net["target_projector"] = copy.deepcopy(self.net["projector"]).requires_grad_(False)

    def after_pretrained(self, loaded: dict) -> None:
        # weights loaded into the online encoder (model.checkpoint): the target branch starts from them too
        self.net["target_encoder"].load_state_dict(self.encoder.state_dict())

    def _online(self, x: Tensor) -> Tensor:
        return self.net["projector"](decoder_features(self.encoder, self.encoder.extract(x)))

    @torch.no_grad()
    def _target(self, x: Tensor) -> Tensor:
        enc = self.net["target_encoder"]
        return self.net["target_projector"](decoder_features(enc, enc.extract(x)))

    def masked(self, view: Tensor) -> tuple[Tensor, Tensor]:
        """The view with a random mask_ratio of its mask_patch-px patches zeroed, and that pixel mask."""
        b, _, h, w = view.shape
        p = self.mask_patch
        rows, cols = -(-h // p), -(-w // p)
        pix = pixel_mask(patch_mask(b, rows, cols, self.mask_ratio), p)[:, :h, :w].to(view.device)
        return view * (~pix)[:, None], pix

    def predict(self, f1: Tensor, valid1: Tensor, p: Tensor, relation: Tensor) -> Tensor:
        """Predictions (B, N, dim) of view 2's representation at positions ``p`` (in view 1's coordinates)."""
        n = p.shape[1]
        local = sample_at(f1, p)
        context = masked_mean(f1, valid1)[:, None].expand(-1, n, -1)
        rel = relation.reshape(relation.shape[0], 1, 6).to(f1).expand(-1, n, -1)
        return self.net["predictor"](torch.cat([local, context, fourier_features(p, self.frequencies), rel], -1))

    def losses(self, batch: Mapping) -> dict[str, Tensor]:
        img, valid = batch["image"]["img"], batch["image"]["valid"]
        b = img.shape[0]
        th1, th2 = random_geometry(b, self.geometry), random_geometry(b, self.geometry)
        v1, m1 = warp(img, valid, th1)
        v2, m2 = warp(img, valid, th2)
        v1, v2 = intensity(v1, m1, self.photometric), intensity(v2, m2, self.photometric)
        v1, _ = self.masked(v1)
        f1 = self._online(v1)
        f2 = self._target(v2)
        th1, th2 = th1.to(img.device), th2.to(img.device)
        q = grid_points(b, self.target_grid, img.device)
        p = map_points(q, th2, th1)
        pred = self.predict(f1, m1, p, relative_map(th2, th1))
        weight = mask_at(m2, q)
        loss = cosine_regression(pred, sample_at(f2, q), weight)
        return {"loss": loss, "regression": loss, "overlap": inside_share(p, weight)}

    def train_step(self, batch: Mapping, iteration: int) -> dict[str, float]:
        out = super().train_step(batch, iteration)
        m = ema_momentum(self.ema, iteration, self.total_iters)
        ema_update(self.net["target_encoder"], self.encoder, m)
        ema_update(self.net["target_projector"], self.net["projector"], m)
        out["ema"] = m
        return out


def inside_share(p: Tensor, weight: Tensor) -> Tensor:
    """The share of the scored target positions that view 1 also holds (how much the views overlapped)."""
    w = weight.float()
    return (((p.abs() <= 1).all(-1).float() * w).sum() / w.sum().clamp_min(1.0)).detach()
