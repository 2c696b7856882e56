"""Prediction with a margin of context on windows at fixed positions: areas agree wherever they are cut, the
blend is the predictor's hann blend, windows are predicted once (cache) and never when all nodata."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.lru import LRU
from core.raster.prediction_windows import WindowPlan
from models.inference.context import context_span, lattice_windows, predict_with_context
from models.inference.windowed import WindowModel

WINDOW = 16
K = 3


class _ContextModel:
    """Logits that depend on the whole window (its mean), so a pixel's classes depend on its context."""

    def __init__(self):
        self.calls = 0

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        self.calls += t.shape[0]
        x = t[:, :1]
        m = t.mean(dim=(1, 2, 3), keepdim=True)
        return torch.cat([x, m.expand_as(x) * 2, -x + m], dim=1)


@pytest.fixture()
def scene():
    """A 120 x 120 px scene of one band on a lattice whose origin is 40 px above and left of it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 120, 120)).astype(np.float32)
    valid = np.ones((120, 120), bool)
    valid[:, 100:] = False  # a strip without data on the right
    return x, valid


def _predict(model, scene, area, cache=None):
    x, valid = scene
    c0, r0, c1, r1 = context_span(area, WINDOW)
    assert c0 >= 0 and r0 >= 0 and c1 <= 120 and r1 <= 120
    return predict_with_context(WindowModel(model, device="cpu"), x[:, r0:r1, c0:c1], valid[r0:r1, c0:c1], area,
                                WINDOW, K, cache=cache)


def test_context_covers_whole_windows_at_fixed_positions():
    assert context_span((20, 30, 21, 31), WINDOW) == (8, 16, 32, 40)
    assert list(lattice_windows((20, 30, 21, 31), WINDOW)) == [(1, 2), (2, 2), (1, 3), (2, 3)]


def test_areas_cut_anywhere_agree_with_the_whole(scene):
    model = _ContextModel()
    whole, wvalid = _predict(model, scene, (20, 20, 90, 90))
    left, lvalid = _predict(model, scene, (20, 20, 53, 90))
    right, rvalid = _predict(model, scene, (53, 20, 90, 90))
    assert np.array_equal(np.concatenate([left, right], axis=2), whole)
    assert np.array_equal(np.concatenate([lvalid, rvalid], axis=1), wvalid) and wvalid.all()
    inner, _ = _predict(model, scene, (37, 41, 60, 50))
    assert np.array_equal(inner, whole[:, 21:30, 17:40])


def test_the_blend_is_the_hann_blend_of_the_windows_around(scene):
    x, valid = scene
    model = WindowModel(_ContextModel(), device="cpu")
    area = (24, 24, 40, 40)
    probs, _ = _predict(_ContextModel(), scene, area)
    hann = WindowPlan(2 * WINDOW, 2 * WINDOW, WINDOW, WINDOW // 2, "hann").weights(1, 1)
    acc = np.zeros((K, 16, 16))
    for kx, ky in lattice_windows(area, WINDOW):
        r, c = ky * 8, kx * 8
        p = model(x[None, :, r:r + WINDOW, c:c + WINDOW])[0].astype(np.float16).astype(np.float32) * hann
        y0, x0 = max(24, r), max(24, c)
        y1, x1 = min(40, r + WINDOW), min(40, c + WINDOW)
        acc[:, y0 - 24:y1 - 24, x0 - 24:x1 - 24] += p[:, y0 - r:y1 - r, x0 - c:x1 - c]
    assert np.allclose(probs, acc, atol=1e-5) and np.allclose(probs.sum(axis=0), 1.0, atol=1e-3)


def test_windows_are_predicted_once_and_never_without_data(scene):
    model, cache = _ContextModel(), LRU(1000)
    area = (95, 40, 105, 60)  # the last windows lie wholly in the strip without data
    _, valid = _predict(model, scene, area, cache)
    windows = list(lattice_windows(area, WINDOW))
    skipped = [k for k in windows if k[0] * 8 >= 100]
    assert skipped and model.calls == len(windows) - len(skipped)
    assert valid[:, :5].all() and not valid[:, 5:].any()
    _predict(model, scene, area, cache)
    assert model.calls == len(windows) - len(skipped)  # the second time from the cache
