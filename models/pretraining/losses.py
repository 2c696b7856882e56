"""The self-supervised objectives: NT-Xent (SimCLR, and the local contrastive loss over regions), the cosine
regression of a predicted representation onto a target one (SiameseIM), and the reconstruction of masked patches
normalised per patch and band (CroCo)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent (Chen et al. 2020) of N positive pairs (z1[i], z2[i]), each (N, D): for each of the 2N vectors, the
    cross entropy of its partner against the 2N - 1 others under cosine similarity / ``temperature``; mean over
    the 2N. With one pair there is no negative and the loss is 0."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / float(temperature)
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, partner)


def cosine_regression(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """2 - 2 cos(pred, target) per vector (the squared distance of the unit vectors, BYOL's loss), averaged over
    the vectors where ``weight`` (same leading shape, bool or float) is set; 0 with none."""
    err = 2.0 - 2.0 * F.cosine_similarity(pred, target.detach(), dim=-1)
    if weight is None:
        return err.mean()
    w = weight.to(err.dtype)
    return (err * w).sum() / w.sum() if bool(w.sum() > 0) else err.sum() * 0.0


def patchify(img: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) -> (B, rows*cols, C, patch*patch), patches row-major."""
    b, c, h, w = img.shape
    r, q = h // patch, w // patch
    x = img[:, :, : r * patch, : q * patch].reshape(b, c, r, patch, q, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, r * q, c, patch * patch)


def patch_targets(img: Tensor, valid: Tensor, patch: int, eps: float = 1e-2) -> tuple[Tensor, Tensor]:
    """Reconstruction targets: each patch of each band standardised by its own mean and standard deviation over
    the patch's valid pixels, (x - mean) / sqrt(var + eps) (``eps`` keeps a flat patch from turning into amplified
    noise). Returns the targets (B, N, C, P*P) and the pixel mask (B, N, P*P)."""
    x = patchify(img, patch)
    m = patchify(valid[:, None].to(img.dtype), patch)[:, :, 0]  # (B, N, P*P)
    mm = m[:, :, None]
    n = mm.sum(-1, keepdim=True).clamp_min(1.0)
    mean = (x * mm).sum(-1, keepdim=True) / n
    var = (((x - mean) ** 2) * mm).sum(-1, keepdim=True) / n
    return (x - mean) / torch.sqrt(var + eps) * mm, m > 0.5


def reconstruction_loss(pred: Tensor, target: Tensor, pixels: Tensor, masked: Tensor, min_valid: float = 0.5) -> Tensor:
    """Mean squared error of predicted patches ``pred`` (B, N, C, P*P) against ``target`` over the valid pixels
    (``pixels``, B x N x P*P) of the masked patches (``masked``, B x N) that are at least ``min_valid`` valid: each
    such patch weighs the same. 0 (keeping the graph) when no patch counts."""
    frac = pixels.float().mean(-1)
    use = masked & (frac >= min_valid - 1e-6)
    if not bool(use.any()):
        return pred.sum() * 0.0
    err = ((pred - target) ** 2).mean(2)  # over bands -> (B, N, P*P)
    per_patch = (err * pixels).sum(-1) / pixels.sum(-1).clamp_min(1)
    return per_patch[use].mean()
