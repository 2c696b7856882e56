"""Domain disentangled module (DDM) of ST-DASegNet: distinct branch per level, universal on the deepest.

Inputs are the two style pyramids of ONE image (the image through the source-style and the
target-style student backbone); outputs are the two re-weighted pyramids. Formulas follow
``st-dasegnet.md`` ("Domain disentangled module"); no normalisation layers, no residual.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor, nn


def reduced_channels(channels: int) -> int:
    """Width d of the squeeze / universal projection: max(C // 8, 8)."""
    return max(channels // 8, 8)


class DistinctBranch(nn.Module):
    """Channel re-weighting of a style pair: softmax over the pair per channel, outputs not summed."""

    def __init__(self, channels: int):
        super().__init__()
        d = reduced_channels(channels)
        self.squeeze = nn.Linear(channels, d)  # no norm, no activation (spec)
        self.excite_s = nn.Linear(d, channels)
        self.excite_t = nn.Linear(d, channels)

    def weights(self, f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
        """Per-channel weights (v_S, v_T), each (B, C), with v_S + v_T = 1."""
        s = (f_s + f_t).mean(dim=(2, 3))
        z = self.squeeze(s)
        a = torch.stack([self.excite_s(z), self.excite_t(z)], dim=0)
        v = a.softmax(dim=0)
        return v[0], v[1]

    @torch.no_grad()
    def neutral_start(self) -> None:
        """Excitations at zero: v_S = v_T = 1/2 for every input until training moves them."""
        for layer in (self.excite_s, self.excite_t):
            layer.weight.zero_()
            layer.bias.zero_()

    def forward(self, f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
        v_s, v_t = self.weights(f_s, f_t)
        return f_s * v_s[:, :, None, None], f_t * v_t[:, :, None, None]


class UniversalBranch(nn.Module):
    """Channel attention shared by both styles, computed from a common key map K."""

    def __init__(self, channels: int):
        super().__init__()
        d = reduced_channels(channels)
        self.key = nn.Conv2d(channels, channels, 3, padding=1)
        self.proj_s = nn.Conv2d(channels, d, 3, padding=1)
        self.proj_t = nn.Conv2d(channels, d, 3, padding=1)

    @staticmethod
    def attention(f: Tensor, k: Tensor) -> Tensor:
        """M for one style: softmax over the last dim of (row max - F K^T); f, k are (B, C, N)."""
        energy = torch.bmm(f, k.transpose(1, 2))
        energy = energy.amax(dim=-1, keepdim=True) - energy
        return energy.softmax(dim=-1)

    def shared_map(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        """M = (M_S + M_T) / 2, shape (B, C, C)."""
        b, c, h, w = f_s.shape
        k = F.relu(self.key((f_s + f_t) / 2)).flatten(2)
        return (self.attention(f_s.flatten(2), k) + self.attention(f_t.flatten(2), k)) / 2

    def forward(self, f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = f_s.shape
        m = self.shared_map(f_s, f_t)
        u_s = torch.bmm(m, f_s.flatten(2)).view(b, c, h, w)
        u_t = torch.bmm(m, f_t.flatten(2)).view(b, c, h, w)
        return F.relu(self.proj_s(u_s)), F.relu(self.proj_t(u_t))


@MODELS.register_module()
class DomainDisentangledModule(nn.Module):
    """DDM over a feature pyramid. The deepest level gains d = max(C//8, 8) channels.

    ``forward(feats_s, feats_t)`` takes the source-style and target-style pyramids of the same
    images (lists of (B, C_i, H_i, W_i)) and returns the two output pyramids.
    """

    #: the weight v each distinct branch gives both styles after :meth:`neutral_start`
    NEUTRAL_WEIGHT = 0.5

    def __init__(self, in_channels: Sequence[int]):
        super().__init__()
        self.in_channels = list(in_channels)
        self.distinct = nn.ModuleList(DistinctBranch(c) for c in self.in_channels)
        self.universal = UniversalBranch(self.in_channels[-1])

    def neutral_start(self) -> None:
        """Every distinct branch weighs both styles alike (v = 1/2) at the start (``adaptation.ddm_start``)."""
        for branch in self.distinct:
            branch.neutral_start()

    @property
    def out_channels(self) -> list[int]:
        out = list(self.in_channels)
        out[-1] += reduced_channels(out[-1])
        return out

    def forward(self, feats_s: Sequence[Tensor], feats_t: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        if len(feats_s) != len(self.in_channels) or len(feats_t) != len(self.in_channels):
            raise ValueError(f"DDM expects {len(self.in_channels)} levels, got {len(feats_s)}/{len(feats_t)}")
        out_s, out_t = [], []
        last = len(self.in_channels) - 1
        for i, (fs, ft) in enumerate(zip(feats_s, feats_t)):
            gs, gt = self.distinct[i](fs, ft)
            if i == last:
                us, ut = self.universal(fs, ft)
                gs, gt = torch.cat([gs, us], dim=1), torch.cat([gt, ut], dim=1)
            out_s.append(gs)
            out_t.append(gt)
        return out_s, out_t
