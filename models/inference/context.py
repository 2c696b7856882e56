"""Prediction of an area of a scene with a margin of context, on windows aligned to a fixed origin (live map tiles).

    context_span(area, window)  -> the pixels to hold in memory: every window touching the area, whole
    predict_with_context(model, x, valid, area, window, cache)
      windows of `window` px at every multiple of window/2 from the origin, touching the area
        each: its cached probabilities, or WindowModel on its pixels alone -> float16 -> cache
        (all nodata: skipped, as predict_raster skips it)
      -> StreamingBlender over a WindowPlan of the context whose windows are exactly these
         (the hann weights and blending of predict_raster: halves of neighbouring windows ramp
         sin^2 / cos^2 and sum to 1)
      -> blended class probabilities and valid mask of the area

No seams by construction: a pixel's probabilities depend only on where it is (the windows around it,
at fixed positions), never on which area asked, so areas predicted apart (neighbouring tiles, zoom
levels) agree exactly where they meet, as if the whole scene had been predicted at once. Every
window gives the area pixels it covers at least a quarter window of context where they count much.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from core.lru import LRU, MISSING
from core.raster.prediction_windows import StreamingBlender, WindowPlan
from models.inference.windowed import WindowModel

Area = tuple[int, int, int, int]  # (col0, row0, col1, row1), end exclusive, in the origin's pixels


def _window_range(lo: int, hi: int, stride: int) -> range:
    """Indexes k of the windows [k*stride, k*stride + 2*stride) that touch pixels [lo, hi)."""
    return range(lo // stride - 1, (hi - 1) // stride + 1)


def context_span(area: Area, window: int) -> Area:
    """The pixels of every window touching ``area``: what ``predict_with_context`` needs in memory."""
    s = window // 2
    kx, ky = _window_range(area[0], area[2], s), _window_range(area[1], area[3], s)
    return kx[0] * s, ky[0] * s, kx[-1] * s + window, ky[-1] * s + window


def lattice_windows(area: Area, window: int) -> Iterator[tuple[int, int]]:
    """(kx, ky) of the windows touching ``area``, row-major; window k starts at k * window/2."""
    s = window // 2
    for ky in _window_range(area[1], area[3], s):
        for kx in _window_range(area[0], area[2], s):
            yield kx, ky


def predict_with_context(model: WindowModel, x: np.ndarray, valid: np.ndarray, area: Area, window: int,
                         num_classes: int, *, cache: LRU | None = None,
                         cache_key: tuple = ()) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (K, h, w) float32, valid (h, w)) of ``area``, blended from the windows around it.

    ``x``: normalised pixels (C, H, W) of exactly ``context_span(area, window)``, ``valid`` their mask.
    ``cache``: window probabilities kept between calls under ``(cache_key, kx, ky)``; the key must name
    everything that makes them (model, scene, lattice, window size). Each window is predicted alone:
    batching (other kernels) could round a logit differently depending on what came with it, and a
    window must come out the same whichever area asks for it.
    """
    if window % 2:
        raise ValueError(f"the window must be even (windows overlap by half), got {window}")
    s = window // 2
    C0, R0, C1, R1 = context_span(area, window)
    if x.shape[-2:] != (R1 - R0, C1 - C0):
        raise ValueError(f"x must cover the context {C1 - C0} x {R1 - R0}, got {x.shape[-1]} x {x.shape[-2]}")
    plan = WindowPlan(R1 - R0, C1 - C0, window, s, "hann")
    blender = StreamingBlender(plan, num_classes)
    c0, r0, c1, r1 = area[0] - C0, area[1] - R0, area[2] - C0, area[3] - R0
    probs = np.zeros((num_classes, r1 - r0, c1 - c0), np.float32)
    out_valid = np.zeros((r1 - r0, c1 - c0), bool)
    for index, (kx, ky) in enumerate(lattice_windows(area, window)):
        rows = slice(ky * s - R0, ky * s - R0 + window)
        cols = slice(kx * s - C0, kx * s - C0 + window)
        v = valid[rows, cols]
        p = cache.peek((cache_key, kx, ky)) if cache is not None else MISSING
        if p is MISSING:
            # float16 whether kept or not, so a window blends the same fresh or from the cache
            p = model(x[None, :, rows, cols])[0].astype(np.float16) if v.any() else None
            if cache is not None:
                cache.put((cache_key, kx, ky), p)
        for piece in blender.add(index, None if p is None else p.astype(np.float32), v):
            w = piece.window
            # the part of the piece inside the area, in both frames
            y0, y1 = max(r0, int(w.row_off)), min(r1, int(w.row_off + w.height))
            x0, x1 = max(c0, int(w.col_off)), min(c1, int(w.col_off + w.width))
            if y0 >= y1 or x0 >= x1:
                continue
            src = (slice(y0 - int(w.row_off), y1 - int(w.row_off)), slice(x0 - int(w.col_off), x1 - int(w.col_off)))
            dst = (slice(y0 - r0, y1 - r0), slice(x0 - c0, x1 - c0))
            probs[(slice(None), *dst)] = piece.probs[(slice(None), *src)]
            out_valid[dst] = piece.valid[src]
    return probs, out_valid
