"""Views of a batch of windows for self-supervised pretraining: random geometry that is tracked, and intensity
changes that work on any number of bands and on the normalised data's own range.

A view's geometry is an affine map ``theta`` (B, 2, 3) from the view's normalised coordinates to the window's,
both in [-1, 1] with x first, as ``torch.nn.functional.affine_grid`` / ``grid_sample`` read them with
``align_corners=False``: a random box of the window (random resized crop), flipped and turned by a multiple of
90 degrees. Because the map is kept, any position in one view can be found in another (:func:`map_points`): the
local contrastive loss and SiameseIM's relative positions need exactly that.

Intensity changes act on normalised bands (each band standardised by its domain's statistics, nodata 0): a
per-band brightness offset (in standard deviations) and contrast factor about the window's band mean, a Gaussian
blur, Gaussian noise. No RGB colour jitter: the bands may be anything (six Landsat bands, SAR, pan).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from core.errors import ConfigError


def _pair(value: Any, name: str, lo: float, hi: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be two numbers [low, high], got {value!r}", field=name) from None
    if not (lo <= a <= b <= hi):
        raise ConfigError(f"{name} must satisfy {lo} <= low <= high <= {hi}, got {[a, b]}", field=name)
    return a, b


@dataclass(frozen=True)
class GeometrySettings:
    """The random box (``scale``: share of the window's area; ``ratio``: its aspect, width / height), flips and
    90-degree rotations of each view."""

    scale: tuple[float, float] = (0.3, 1.0)
    ratio: tuple[float, float] = (0.75, 4 / 3)
    flip: bool = True
    rotate: bool = True

    @classmethod
    def of(cls, cfg: Mapping | None, field: str = "pretraining.views") -> "GeometrySettings":
        cfg = dict(cfg or {})
        unknown = set(cfg) - {"scale", "ratio", "flip", "rotate"}
        if unknown:
            raise ConfigError(f"{field}: unknown keys {sorted(unknown)}", field=field)
        return cls(scale=_pair(cfg.get("scale", cls.scale), f"{field}.scale", 1e-3, 1.0),
                   ratio=_pair(cfg.get("ratio", cls.ratio), f"{field}.ratio", 1e-2, 100.0),
                   flip=bool(cfg.get("flip", cls.flip)), rotate=bool(cfg.get("rotate", cls.rotate)))


@dataclass(frozen=True)
class IntensitySettings:
    """Per-band brightness offset up to +-``brightness`` standard deviations and contrast factor in ``contrast``;
    a Gaussian blur with probability ``blur_p``, sigma (pixels) in ``blur_sigma``; noise of standard deviation up
    to ``noise``."""

    brightness: float = 0.4
    contrast: tuple[float, float] = (0.6, 1.4)
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    noise: float = 0.1

    @classmethod
    def of(cls, cfg: Mapping | None, field: str = "pretraining.photometric") -> "IntensitySettings":
        cfg = dict(cfg or {})
        unknown = set(cfg) - {"brightness", "contrast", "blur_p", "blur_sigma", "noise"}
        if unknown:
            raise ConfigError(f"{field}: unknown keys {sorted(unknown)}", field=field)
        out = cls(brightness=float(cfg.get("brightness", cls.brightness)),
                  contrast=_pair(cfg.get("contrast", cls.contrast), f"{field}.contrast", 0.0, 100.0),
                  blur_p=float(cfg.get("blur_p", cls.blur_p)),
                  blur_sigma=_pair(cfg.get("blur_sigma", cls.blur_sigma), f"{field}.blur_sigma", 1e-3, 20.0),
                  noise=float(cfg.get("noise", cls.noise)))
        if out.brightness < 0 or out.noise < 0 or not 0 <= out.blur_p <= 1:
            raise ConfigError(f"{field}: brightness and noise are >= 0, blur_p a probability", field=field)
        return out


def _uniform(shape, lo: float, hi: float) -> Tensor:
    # the global CPU generator: its state is in every checkpoint, so a resumed run draws the same views
    return torch.rand(shape) * (hi - lo) + lo


def turn(k: Tensor, flip: Tensor) -> Tensor:
    """(B, 2, 2) linear maps: a flip of x (where ``flip``) then ``k`` quarter turns."""
    angle = k.double() * (math.pi / 2)
    c, s = torch.cos(angle).round(), torch.sin(angle).round()
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    fl = torch.diag_embed(torch.stack([torch.where(flip, -1.0, 1.0).double(), torch.ones_like(c)], -1))
    return (rot @ fl).float()


def random_geometry(batch: int, settings: GeometrySettings) -> Tensor:
    """(B, 2, 3) view -> window maps: a random box inside the window (its half sides ``w``, ``h`` are fractions of
    the window's), flipped and turned at random as ``settings`` allow."""
    area = _uniform(batch, *settings.scale)
    log_r = _uniform(batch, math.log(settings.ratio[0]), math.log(settings.ratio[1]))
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1.0 - w) * _uniform(batch, -1.0, 1.0)
    cy = (1.0 - h) * _uniform(batch, -1.0, 1.0)
    k = torch.randint(0, 4, (batch,)) if settings.rotate else torch.zeros(batch, dtype=torch.long)
    flip = torch.rand(batch) < 0.5 if settings.flip else torch.zeros(batch, dtype=torch.bool)
    lin = torch.diag_embed(torch.stack([w, h], -1)) @ turn(k, flip)
    return torch.cat([lin, torch.stack([cx, cy], -1)[..., None]], -1)


def identity_geometry(batch: int) -> Tensor:
    return torch.eye(2, 3).expand(batch, 2, 3).clone()


def warp(img: Tensor, valid: Tensor, theta: Tensor, size: int | None = None) -> tuple[Tensor, Tensor]:
    """The views ``theta`` of windows ``img`` (B, C, H, W) with masks ``valid`` (B, H, W): images resampled
    bilinearly, masks by nearest neighbour; ``size`` x ``size`` px (default: the window's height)."""
    b, c, h, _ = img.shape
    size = int(size or h)
    theta = theta.to(img.device, img.dtype)
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mask = F.grid_sample(valid[:, None].to(img.dtype), grid, mode="nearest", padding_mode="zeros",
                         align_corners=False)[:, 0] > 0.5
    return out * mask[:, None], mask


def map_points(points: Tensor, theta_from: Tensor, theta_to: Tensor) -> Tensor:
    """Positions (B, N, 2) in the normalised coordinates of the views ``theta_from``, in those of ``theta_to``:
    through the window (view -> window by ``theta_from``, window -> view by the inverse of ``theta_to``)."""
    a, t = theta_from[..., :2].to(points), theta_from[..., 2].to(points)
    b, u = theta_to[..., :2].to(points), theta_to[..., 2].to(points)
    ground = torch.einsum("bij,bnj->bni", a, points) + t[:, None]
    return torch.einsum("bij,bnj->bni", torch.linalg.inv(b), ground - u[:, None])


def relative_map(theta_from: Tensor, theta_to: Tensor) -> Tensor:
    """(B, 2, 3): the affine map from view ``theta_from``'s coordinates to view ``theta_to``'s (what
    :func:`map_points` applies), for a predictor told how two views relate."""
    inv = torch.linalg.inv(theta_to[..., :2])
    lin = inv @ theta_from[..., :2]
    shift = torch.einsum("bij,bj->bi", inv, theta_from[..., 2] - theta_to[..., 2])
    return torch.cat([lin, shift[..., None]], -1)


def inside(points: Tensor) -> Tensor:
    """(B, N) bool: the positions lie inside the view ([-1, 1] on both axes)."""
    return (points.abs() <= 1.0).all(-1)


def grid_points(batch: int, n: int, device=None) -> Tensor:
    """(B, n*n, 2): the centres of an n x n grid of cells over a view, in its normalised coordinates (row-major,
    x fastest), as a feature map of n x n cells has its cell centres."""
    c = (torch.arange(n, dtype=torch.float32, device=device) * 2 + 1) / n - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1).expand(batch, n * n, 2).clone()


def sample_at(feat: Tensor, points: Tensor) -> Tensor:
    """Features (B, D, h, w) read bilinearly at positions (B, N, 2) -> (B, N, D); zero outside the map."""
    got = F.grid_sample(feat, points[:, :, None, :].to(feat.dtype), mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return got[..., 0].transpose(1, 2)


def mask_at(valid: Tensor, points: Tensor) -> Tensor:
    """(B, N) bool: the pixel mask (B, H, W) at positions (B, N, 2), False outside the view."""
    got = F.grid_sample(valid[:, None].float(), points[:, :, None, :].float(), mode="nearest",
                        padding_mode="zeros", align_corners=False)
    return (got[:, 0, :, 0] > 0.5) & inside(points)


def _gaussian_kernels(sigma: Tensor, radius: int) -> Tensor:
    """(B, 2r+1) normalised 1-D Gaussian kernels; sigma 0 gives the identity (a delta)."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-x[None] ** 2 / (2 * sigma[:, None].clamp_min(1e-6) ** 2))
    k = torch.where((sigma > 0)[:, None], k, (x == 0).float()[None])
    return k / k.sum(-1, keepdim=True)


def blur(img: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur of each window (B, C, H, W) with its own sigma (B,) in pixels (0: unchanged)."""
    b, c, h, w = img.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max())))) if sigma.numel() else 1
    radius = min(radius, (min(h, w) - 1) // 2) if min(h, w) > 2 else 0
    if radius == 0:
        return img
    k = _gaussian_kernels(sigma.float().cpu(), radius).to(img)  # (B, K)
    k = k.repeat_interleave(c, 0)  # one kernel per (window, band)
    x = img.reshape(1, b * c, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=b * c)
    return x.reshape(b, c, h, w)


def intensity(img: Tensor, valid: Tensor, settings: IntensitySettings) -> Tensor:
    """Random intensity changes of each view (B, C, H, W) over its valid pixels; nodata stays 0."""
    b, c = img.shape[:2]
    m = valid[:, None].to(img.dtype)
    n = m.sum((2, 3), keepdim=True).clamp_min(1.0)
    mean = (img * m).sum((2, 3), keepdim=True) / n
    contrast = _uniform((b, c, 1, 1), *settings.contrast).to(img)
    offset = _uniform((b, c, 1, 1), -settings.brightness, settings.brightness).to(img)
    out = (img - mean) * contrast + mean + offset
    if settings.blur_p > 0:
        on = torch.rand(b) < settings.blur_p
        sigma = torch.where(on, _uniform(b, *settings.blur_sigma), torch.zeros(b))
        if bool(on.any()):
            out = blur(out, sigma)
    if settings.noise > 0:
        std = _uniform((b, 1, 1, 1), 0.0, settings.noise).to(img)
        out = out + torch.randn(out.shape).to(out) * std
    return out * m


def patch_mask(batch: int, rows: int, cols: int, ratio: float) -> Tensor:
    """(B, rows, cols) bool, True where a patch is masked: exactly round(ratio * rows * cols) patches of each
    window, chosen at random."""
    n = rows * cols
    k = min(n, max(0, int(round(ratio * n))))
    order = torch.rand(batch, n).argsort(-1)
    masked = torch.zeros(batch, n, dtype=torch.bool)
    masked.scatter_(1, order[:, :k], True)
    return masked.reshape(batch, rows, cols)


def pixel_mask(patches: Tensor, patch: int) -> Tensor:
    """A (B, rows, cols) patch mask as a (B, rows*patch, cols*patch) pixel mask."""
    return patches.repeat_interleave(patch, 1).repeat_interleave(patch, 2)
