"""SimCLR (Chen et al., ICML 2020), with the local contrastive loss of Chaitanya et al. (NeurIPS 2020) as an option.

Call flow of ``losses`` (batch: windows of either domain, ImageryBatches)::

    two random geometries per window (box, flip, quarter turns: kept as view -> window maps)
    warp -> views 1 and 2 (+ their valid masks) -> random intensity changes of each
    encoder.extract(both views)                          one pass over 2B views
    global: deepest level, mean over valid cells -> projection MLP -> NT-Xent over the 2B (temperature)
    local (option): decoder-side map -> 1x1-conv projection -> averaged over regions of local_region cells;
        anchors on a local_grid x local_grid grid of view 1, mapped through the window into view 2; anchors
        valid and inside both views are positive pairs, every other region (other positions, other windows,
        either view) a negative -> NT-Xent (local_temperature)
    loss = global + local_weight * local

Features are taken before the projection heads: the heads are dropped, the backbone (and, with ``local``, the
decode head but its classifier) is what a later job starts from.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import ConfigError
from models.pretraining.base import PretrainingMethod, decoder_features, known_keys, masked_mean, register_pretraining
from models.pretraining.losses import nt_xent
from models.pretraining.views import (GeometrySettings, IntensitySettings, grid_points, intensity, map_points,
                                      mask_at, random_geometry, sample_at, warp)

_KEYS = {"temperature", "projection", "local", "local_weight", "local_temperature", "local_grid", "local_region",
         "local_dim", "views", "photometric"}


def projection_mlp(width: int, hidden: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


def local_projection(width: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU(inplace=True), nn.Conv2d(width, out, 1))


def region_pairs(q1: Tensor, q2: Tensor, valid1: Tensor, valid2: Tensor, theta1: Tensor, theta2: Tensor,
                 grid: int) -> tuple[Tensor, Tensor]:
    """The local contrastive pairs of two views' region maps (B, D, h, w): each view-1 anchor (a grid x grid
    grid of positions) and the same ground in view 2, kept where both views hold it on valid pixels.
    Returns (K, D) features of view 1 and of view 2, row k of each a positive pair."""
    b = q1.shape[0]
    p1 = grid_points(b, grid, q1.device)
    p2 = map_points(p1, theta1, theta2)
    keep = mask_at(valid1, p1) & mask_at(valid2, p2)  # (both include: inside the view)
    return sample_at(q1, p1)[keep], sample_at(q2, p2)[keep]


@register_pretraining("simclr")
class SimCLR(PretrainingMethod):
    """Global (and optionally local) contrast of two augmented views of each window."""

    def __init__(self, cfg: Mapping, *, total_iters: int):
        super().__init__(cfg, total_iters=total_iters)
        a = self.block
        known_keys(a, _KEYS)
        self.temperature = float(a.get("temperature", 0.2))
        self.local = bool(a.get("local", False))
        self.local_weight = float(a.get("local_weight", 1.0))
        self.local_temperature = float(a.get("local_temperature", self.temperature))
        self.local_grid = int(a.get("local_grid", 4))
        self.local_region = int(a.get("local_region", 3))
        if self.temperature <= 0 or self.local_temperature <= 0 or self.local_grid < 1 or self.local_region < 1:
            raise ConfigError("pretraining: temperatures are > 0, local_grid and local_region >= 1",
                              field="pretraining")
        self.geometry = GeometrySettings.of(a.get("views"))
        self.photometric = IntensitySettings.of(a.get("photometric"))
        proj = dict(a.get("projection") or {})
        heads = {"projection": projection_mlp(self.level_widths[-1], int(proj.get("hidden", 256)),
                                              int(proj.get("out", 64)))}
        if self.local:
            heads["local_projection"] = local_projection(self.decoder_width, int(a.get("local_dim", 64)))
        self.finish(heads)

    @property
    def trains_decoder(self) -> bool:  # type: ignore[override]
        return self.local

    def views(self, img: Tensor, valid: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]:
        """Two random views of each window: (image, valid mask, geometry) each."""
        out = []
        for _ in range(2):
            theta = random_geometry(img.shape[0], self.geometry)
            v, m = warp(img, valid, theta)
            out.append((intensity(v, m, self.photometric), m, theta.to(img.device)))
        return out[0], out[1]

    def losses(self, batch: Mapping) -> dict[str, Tensor]:
        img, valid = batch["image"]["img"], batch["image"]["valid"]
        b = img.shape[0]
        (v1, m1, th1), (v2, m2, th2) = self.views(img, valid)
        m = torch.cat([m1, m2])
        feats = self.encoder.extract(torch.cat([v1, v2]))
        z = self.net["projection"](masked_mean(feats[-1], m))
        glob = nt_xent(z[:b], z[b:], self.temperature)
        out = {"contrast": glob}
        total = glob
        if self.local:
            q = self.net["local_projection"](decoder_features(self.encoder, feats))
            if self.local_region > 1:
                r = self.local_region
                q = F.avg_pool2d(q, r, 1, r // 2, count_include_pad=False)[..., : q.shape[-2], : q.shape[-1]]
            f1, f2 = region_pairs(q[:b], q[b:], m1, m2, th1, th2, self.local_grid)
            loc = nt_xent(f1, f2, self.local_temperature) if f1.shape[0] > 1 else q.sum() * 0.0
            out["local"] = loc
            out["local_pairs"] = q.new_tensor(float(f1.shape[0]))
            total = total + self.local_weight * loc
        out["loss"] = total
        return out
