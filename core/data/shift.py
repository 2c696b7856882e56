"""Benchmark A's target domain: the NC scene through a fixed simulated sensor + atmosphere change.

Per band b, on DN x in 0-255 (docs: benchmarks.md, Benchmark A):
  1. t = 255 * (g_b * (x/255)^gamma_b + h_b) + n,  n ~ N(0, 2^2)         (sensor tone, noise)
  2. t *= 1 + 0.45 * F1(r, c)                                            (illumination field)
  3. t += 255 * a_b * (1 + F2(r, c)) / 2                                 (uneven haze)
  4. Gaussian blur sigma 1.5 px, clip to 0-255; nodata stays nodata.
F1, F2: smooth random fields (normal noise on a coarse grid, cubic upsampling, Gaussian smoothing),
correlation length ~40 px and ~60 px, scaled so max |F| = 1. Seeds are fixed: F1, F2 and the noise
each draw from their own child of ``SeedSequence(seed)``, so changing one never moves the others.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from scipy import ndimage

from core.raster.scene import Scene

GAMMA = (1.3, 1.2, 1.1, 0.85, 0.9, 0.95)
GAIN = (0.9, 1.05, 1.15, 0.8, 1.2, 1.1)
HAZE = (0.12, 0.08, 0.05, 0.02, 0.01, 0.01)
UNEVEN_HAZE = (0.25, 0.18, 0.12, 0.05, 0.03, 0.02)
ILLUMINATION = 0.45
F1_CORR_PX = 40
F2_CORR_PX = 60
BLUR_SIGMA = 1.5
NOISE_SD = 2.0
OUT_NODATA = -99999.0


def smooth_field(shape: tuple[int, int], corr_px: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random field with correlation length ~corr_px, scaled so max |F| = 1."""
    h, w = shape
    pad = 2  # coarse cells beyond each edge, so cubic upsampling has support at the borders
    ch, cw = math.ceil(h / corr_px) + 2 * pad, math.ceil(w / corr_px) + 2 * pad
    coarse = rng.standard_normal((ch, cw))
    fine = ndimage.zoom(coarse, corr_px, order=3, mode="nearest", grid_mode=False)
    # smoothing removes the grid imprint of cubic interpolation; a quarter of the cell keeps its scale
    fine = ndimage.gaussian_filter(fine, sigma=corr_px / 4.0, mode="nearest")
    o = pad * corr_px
    f = fine[o : o + h, o : o + w]
    if f.shape != (h, w):  # zoom rounds sizes; never expected with the padding above
        f = np.pad(f, ((0, h - f.shape[0]), (0, w - f.shape[1])), mode="edge")
    return f / np.abs(f).max()


def shift_fields(shape: tuple[int, int], bands: int, seed: int = 0) -> dict[str, np.ndarray]:
    """F1, F2 and the noise (bands, h, w) for a seed: the random parts of the shift."""
    s_f1, s_f2, s_noise = np.random.SeedSequence(seed).spawn(3)
    return {
        "F1": smooth_field(shape, F1_CORR_PX, np.random.default_rng(s_f1)),
        "F2": smooth_field(shape, F2_CORR_PX, np.random.default_rng(s_f2)),
        "noise": np.random.default_rng(s_noise).normal(0.0, NOISE_SD, size=(bands, *shape)),
    }


def apply_shift(x: np.ndarray, valid: np.ndarray, seed: int = 0) -> np.ndarray:
    """The shift on an in-memory (6, h, w) DN stack; ``valid`` (6, h, w) per band. Invalid -> NaN."""
    bands = x.shape[0]
    if bands != len(GAMMA):
        raise ValueError(f"the Benchmark A shift is defined for 6 bands, got {bands}")
    fld = shift_fields(x.shape[1:], bands, seed)
    out = np.empty(x.shape, np.float32)
    for b in range(bands):
        xb = np.clip(x[b].astype(np.float64), 0.0, 255.0) / 255.0
        t = 255.0 * (GAIN[b] * xb ** GAMMA[b] + HAZE[b]) + fld["noise"][b]
        t *= 1.0 + ILLUMINATION * fld["F1"]
        t += 255.0 * UNEVEN_HAZE[b] * (1.0 + fld["F2"]) / 2.0
        out[b] = _masked_blur(t, valid[b], BLUR_SIGMA)
    out = np.clip(out, 0.0, 255.0)
    out[~valid] = np.nan
    return out


def _masked_blur(t: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over valid pixels only (normalised convolution), so nodata never bleeds in."""
    v = valid.astype(np.float64)
    num = ndimage.gaussian_filter(np.where(valid, t, 0.0), sigma, mode="nearest")
    den = ndimage.gaussian_filter(v, sigma, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-6, num / den, 0.0).astype(np.float32)


def build_shifted_target(band_paths: Sequence[str | Path], out_path: str | Path, seed: int = 0) -> Path:
    """Write the shifted 6-band float32 GeoTIFF on the source grid (nodata -99999 where a band had none).

    ``band_paths``: the six NC single-band files in band order (or one 6-band file).
    """
    band_paths = [Path(p) for p in band_paths]
    with Scene.open(band_paths) as sc:
        grid = sc.grid
        x, valid = sc.read_per_band()  # the nodata of each band is kept per band
    out = apply_shift(x, valid, seed)
    out = np.where(np.isnan(out), np.float32(OUT_NODATA), out).astype(np.float32)
    return write_geotiff(out, grid, out_path, nodata=OUT_NODATA, tags={
        "geoadapt_shift": "benchmark-A sensor+atmosphere shift", "seed": str(seed),
        "gamma": str(GAMMA), "gain": str(GAIN), "haze": str(HAZE), "uneven_haze": str(UNEVEN_HAZE),
    })


def write_geotiff(data: np.ndarray, grid, out_path: str | Path, *, nodata=None, tags: dict | None = None) -> Path:
    """Write (bands, h, w) as a tiled, compressed GeoTIFF on ``grid``, atomically (temp + rename)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=".tmp-", suffix=".tif")
    os.close(fd)
    try:
        with rasterio.open(
            tmp, "w", driver="GTiff", width=grid.width, height=grid.height, count=data.shape[0],
            dtype=data.dtype, crs=grid.crs, transform=grid.transform, nodata=nodata,
            tiled=True, blockxsize=256, blockysize=256, compress="deflate",
        ) as ds:
            ds.write(data)
            if tags:
                ds.update_tags(**tags)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path
