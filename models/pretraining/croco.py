"""CroCo, cross-view completion (Weinzaepfel et al., NeurIPS 2022), on co-registered pairs of remote-sensing windows.

View 1 and view 2 are the same ground seen in two domains (a source window and the target read onto its grid, as
feature regression pairs them; at random the roles swap, so both domains are reconstructed). Most patches of view
1 are masked and reconstructed from its visible patches plus view 2, unmasked: one encoder (the job's backbone)
for both, a decoder whose blocks self-attend over view 1's tokens and cross-attend to view 2's, and a linear head
that predicts each patch's pixels. The target is each patch of each band standardised by its own mean and
standard deviation (the paper's normalised-pixel target, per band here: bands need not share a scale); the loss
is the mean squared error over the valid pixels of the masked patches.

Choices where the paper (a ViT) does not carry over, said here: with a CNN or MiT encoder the mask zeroes the
masked patches of the input (there are no tokens to drop), and a learned mask embedding marks them in the
decoder's input; tokens come from every backbone level (1x1-conv projected, average-pooled or interpolated onto
the patch grid, summed), so the decoder reads the multi-level features; both views share the same 2-D sine-cosine
position embedding (they are co-registered); flips and quarter turns are applied to both views alike.

Call flow of ``losses``::

    pair (source, target on its grid, joint valid mask) -> swap roles at random -> same flip/turn for both
    -> intensity changes of each -> random patch mask (mask_ratio) of view 1, zeroed
    encoder.extract(view 1 masked), encoder.extract(view 2) -> tokens on the patch grid (+ position, + mask)
    decoder blocks (self-attention over view 1, cross-attention to view 2) -> head -> patches (C x P x P)
    loss = MSE on the masked patches against the per-patch, per-band standardised view 1
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import ConfigError
from models.pretraining.base import PretrainingMethod, known_keys, register_pretraining
from models.pretraining.losses import patch_targets, reconstruction_loss
from models.pretraining.views import IntensitySettings, intensity, patch_mask, pixel_mask

_KEYS = {"mask_ratio", "patch", "dim", "depth", "heads", "min_valid", "swap", "flip", "rotate", "photometric"}


def sincos_2d(rows: int, cols: int, dim: int) -> Tensor:
    """(rows*cols, dim) fixed 2-D sine-cosine position embedding (half the channels for y, half for x)."""
    if dim % 4:
        raise ConfigError(f"pretraining.dim must be a multiple of 4, got {dim}", field="pretraining.dim")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    yy, xx = torch.meshgrid(torch.arange(rows, dtype=torch.float32), torch.arange(cols, dtype=torch.float32),
                            indexing="ij")
    parts = []
    for coord in (yy.reshape(-1), xx.reshape(-1)):
        arg = coord[:, None] * omega[None]
        parts += [torch.sin(arg), torch.cos(arg)]
    return torch.cat(parts, 1)


def same_turn(x: Tensor, k: Tensor, flip: Tensor) -> Tensor:
    """Each window (B, ..., H, W) flipped left-right where ``flip``, then turned ``k`` quarter turns; H == W."""
    out = torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)
    return torch.stack([torch.rot90(o, int(kk), dims=(-2, -1)) for o, kk in zip(out, k)])


class CrossViewDecoder(nn.Module):
    """Multi-level features of both views -> tokens on the patch grid -> decoder blocks (self-attention over view
    1, cross-attention to view 2, MLP) -> each patch's pixels."""

    def __init__(self, level_widths: list[int], bands: int, patch: int, dim: int, depth: int, heads: int):
        super().__init__()
        self.patch, self.bands = patch, bands
        self.embed = nn.ModuleList([nn.Conv2d(w, dim, 1) for w in level_widths])
        self.mask_token = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = nn.ModuleList([
            nn.TransformerDecoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                       norm_first=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, bands * patch * patch)
        self.dim = dim

    def tokens(self, feats: list[Tensor], rows: int, cols: int) -> Tensor:
        """(B, rows*cols, dim): every level projected and brought onto the patch grid, summed."""
        total = None
        for proj, f in zip(self.embed, feats):
            t = proj(f)
            if t.shape[-2] >= rows and t.shape[-1] >= cols:
                t = F.adaptive_avg_pool2d(t, (rows, cols))
            else:
                t = F.interpolate(t, size=(rows, cols), mode="bilinear", align_corners=False)
            total = t if total is None else total + t
        return total.flatten(2).transpose(1, 2)

    def forward(self, feats1: list[Tensor], feats2: list[Tensor], masked: Tensor) -> Tensor:
        """Patches (B, N, bands, P*P) of view 1 predicted; ``masked`` (B, rows, cols) marks its masked patches."""
        b, rows, cols = masked.shape
        pos = sincos_2d(rows, cols, self.dim).to(self.mask_token)
        t1 = self.tokens(feats1, rows, cols) + pos + masked.reshape(b, -1, 1).to(pos) * self.mask_token
        t2 = self.tokens(feats2, rows, cols) + pos
        for blk in self.blocks:
            t1 = blk(t1, t2)
        return self.head(self.norm(t1)).reshape(b, rows * cols, self.bands, self.patch * self.patch)


@register_pretraining("croco")
class CroCo(PretrainingMethod):
    """Cross-view completion of masked source (or target) windows from the other domain's window of the same ground."""

    paired = True

    def __init__(self, cfg: Mapping, *, total_iters: int):
        super().__init__(cfg, total_iters=total_iters)
        a = self.block
        known_keys(a, _KEYS)
        self.mask_ratio = float(a.get("mask_ratio", 0.9))
        self.patch = int(a.get("patch", 8))
        self.min_valid = float(a.get("min_valid", 0.5))
        self.swap = bool(a.get("swap", True))
        self.flip, self.rotate = bool(a.get("flip", True)), bool(a.get("rotate", True))
        if not (0 < self.mask_ratio < 1 and self.patch >= 2):
            raise ConfigError("pretraining: 0 < mask_ratio < 1 and patch >= 2", field="pretraining")
        self.photometric = IntensitySettings.of(a.get("photometric"))
        self.finish({"decoder": CrossViewDecoder(self.level_widths, self.in_channels, self.patch,
                                                 int(a.get("dim", 128)), int(a.get("depth", 2)),
                                                 int(a.get("heads", 4)))})

    def pair(self, batch: Mapping) -> tuple[Tensor, Tensor, Tensor]:
        """(view 1, view 2, joint valid mask): roles swapped at random, the same flip / turn applied to both."""
        x1, x2, valid = batch["source"]["img"], batch["target"]["img"], batch["source"]["valid"]
        b, _, h, w = x1.shape
        if h % self.patch or w % self.patch:
            raise ConfigError(f"the crop ({h} x {w} px) must be a multiple of pretraining.patch ({self.patch})",
                              field="params.crop")
        if self.swap:
            s = (torch.rand(b) < 0.5).to(x1.device).view(-1, 1, 1, 1)
            x1, x2 = torch.where(s, x2, x1), torch.where(s, x1, x2)
        if (self.flip or self.rotate) and h == w:
            k = torch.randint(0, 4, (b,)) if self.rotate else torch.zeros(b, dtype=torch.long)
            flip = (torch.rand(b) < 0.5 if self.flip else torch.zeros(b, dtype=torch.bool)).to(x1.device)
            x1, x2 = same_turn(x1, k, flip), same_turn(x2, k, flip)
            valid = same_turn(valid, k, flip)
        return intensity(x1, valid, self.photometric), intensity(x2, valid, self.photometric), valid

    def losses(self, batch: Mapping) -> dict[str, Tensor]:
        x1, x2, valid = self.pair(batch)
        b, _, h, w = x1.shape
        masked = patch_mask(b, h // self.patch, w // self.patch, self.mask_ratio).to(x1.device)
        hidden = x1 * (~pixel_mask(masked, self.patch))[:, None]
        pred = self.net["decoder"](self.encoder.extract(hidden), self.encoder.extract(x2), masked)
        target, pixels = patch_targets(x1, valid, self.patch)
        loss = reconstruction_loss(pred, target, pixels, masked.flatten(1), self.min_valid)
        return {"loss": loss, "reconstruction": loss}
