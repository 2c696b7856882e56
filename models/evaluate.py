"""Evaluate a model on the labelled scenes of a domain: windowed prediction with context, pooled confusion matrix.

The region of each scene is cut into ``tile`` x ``tile`` cores; each core is predicted from a window
widened by ``margin`` pixels of context (clipped to the region) and only the core is scored, so tile
borders do not hurt the score. Memory is bounded by the tile size, not by the scene.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from rasterio.windows import Window

from models.metrics import ConfusionMatrix
from models.normalization import Normalizer

#: (raw window (C, h, w), valid (h, w)) -> train ids (h, w)
PredictFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def segmentor_predict_fn(segmentor: torch.nn.Module, normalizer: Normalizer, *, pad_to: int = 32) -> PredictFn:
    """A PredictFn around any inference segmentor (``predict_logits``), its raw windows normalised by
    ``normalizer`` (the model's, for the domain scored)."""
    device = next(segmentor.parameters()).device

    @torch.no_grad()
    def predict(raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(normalizer(raw, valid))[None].to(device)
        h, w = x.shape[-2:]
        logits = segmentor.predict_logits(pad_to_multiple(x, pad_to))[..., :h, :w]
        return logits.argmax(dim=1)[0].cpu().numpy().astype(np.uint8)

    return predict


def pad_to_multiple(x: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    """(N, C, h, w) padded at the bottom and right to multiples of ``multiple`` (what the backbones'
    strides need); the caller crops the logits back to (h, w)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if h > ph and w > pw else "replicate"
    return torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode)


def _tiles(region: Window, tile: int):
    r0, c0 = int(region.row_off), int(region.col_off)
    h, w = int(region.height), int(region.width)
    for r in range(r0, r0 + h, tile):
        for c in range(c0, c0 + w, tile):
            yield Window(c, r, min(tile, c0 + w - c), min(tile, r0 + h - r))


def context_windows(domain, *, tile: int = 256, margin: int = 32, labelled_only: bool = False):
    """(scene, window, core) for every ``tile`` core of every scene's region: ``window`` is the core
    widened by ``margin`` pixels of context (clipped to the region), ``core`` the slice of the window's
    pixels that belong to the core (the only ones scored)."""
    for item in domain.items:
        if labelled_only and item.labels is None:
            continue
        reg = item.region
        r_lo, c_lo = int(reg.row_off), int(reg.col_off)
        r_hi, c_hi = r_lo + int(reg.height), c_lo + int(reg.width)
        for core in _tiles(reg, tile):
            cr, cc = int(core.row_off), int(core.col_off)
            ch, cw = int(core.height), int(core.width)
            top, left = max(r_lo, cr - margin), max(c_lo, cc - margin)
            bottom, right = min(r_hi, cr + ch + margin), min(c_hi, cc + cw + margin)
            yield item, Window(left, top, right - left, bottom - top), np.s_[cr - top: cr - top + ch,
                                                                               cc - left: cc - left + cw]


def spread_context_windows(domain, limit: int, *, tile: int = 256, margin: int = 32,
                           labelled_only: bool = False) -> list:
    """:func:`context_windows`, at most ``limit`` of them spread evenly over the plan (every scene's region
    rather than its first rows)."""
    plan = list(context_windows(domain, tile=tile, margin=margin, labelled_only=labelled_only))
    if len(plan) > limit:
        plan = [plan[i] for i in np.unique(np.linspace(0, len(plan) - 1, limit).round().astype(int))]
    return plan


def evaluate_domain(
    predict: PredictFn,
    domain,
    class_names: list[str],
    *,
    tile: int = 256,
    margin: int = 32,
) -> dict:
    """Metrics of ``predict`` over the labelled pixels of every scene's region in ``domain``."""
    cm = ConfusionMatrix(len(class_names), class_names)
    for item, win, core in context_windows(domain, tile=tile, margin=margin, labelled_only=True):
        rw = item.read(win)
        if not rw.valid.any():
            continue
        ids = predict(rw.data, rw.valid)
        labels = item.read_labels(win, rw.valid)
        cm.update(ids[core], labels[core], rw.valid[core])
    return cm.compute()
