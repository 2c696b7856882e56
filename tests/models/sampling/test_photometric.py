"""Photometric distortion (mmseg's PhotoMetricDistortion for any band count): each step's formula on
constructed crops, the band range standing in for 0-255, the 3-band-only colour steps, exact resume,
the config switch, and the sampler applying it without moving its crops."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import ConfigError
from core.raster.stats import BandStats
from models.config import resolve_config
from models.sampling.photometric import PhotometricDistortion, PhotometricSettings
from models.sampling.sampler import WindowSampler
from models.normalization import Normalizer

LO = np.array([0.0, 100.0, 1000.0])
HI = np.array([255.0, 200.0, 5000.0])


def _stats(lo=LO, hi=HI) -> BandStats:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return BandStats(mean=list((lo + hi) / 2), std=list((hi - lo) / 4), count=1, min=list(lo), max=list(hi))


def _crop(rng: np.random.Generator, lo=LO, hi=HI, size: int = 16) -> np.ndarray:
    """Values well inside each band's range, so a mild step does not clip."""
    lo, hi = np.asarray(lo).reshape(-1, 1, 1), np.asarray(hi).reshape(-1, 1, 1)
    u = rng.uniform(0.3, 0.7, size=(lo.shape[0], size, size))
    return (lo + u * (hi - lo)).astype(np.float32)


def _unit(x: np.ndarray, lo=LO, hi=HI) -> np.ndarray:
    """Raw values -> the 0-255 scale the distortion works on."""
    lo, hi = np.asarray(lo).reshape(-1, 1, 1), np.asarray(hi).reshape(-1, 1, 1)
    return (x - lo) * 255.0 / (hi - lo)


def test_with_every_step_neutral_the_crop_comes_back_unchanged():
    neutral = PhotometricSettings(brightness_delta=0.0, contrast_range=(1.0, 1.0), saturation_range=(1.0, 1.0),
                                  hue_delta=0)
    d = PhotometricDistortion(_stats(), neutral, seed=0)
    x = _crop(np.random.default_rng(0))
    for _ in range(10):
        np.testing.assert_allclose(d(x), x, rtol=1e-4, atol=1e-3)


def test_brightness_adds_one_offset_on_the_0_255_scale_of_every_band():
    s = PhotometricSettings(brightness_delta=20.0, contrast_range=(1.0, 1.0), saturation_range=(1.0, 1.0),
                            hue_delta=0)
    d = PhotometricDistortion(_stats(), s, seed=1)
    x = _crop(np.random.default_rng(1))
    offsets = []
    for _ in range(200):
        diff = _unit(d(x)) - _unit(x)
        # one offset per crop, the same in every band once each band's range is mapped onto 0-255
        np.testing.assert_allclose(diff, diff.flat[0], atol=1e-2)
        offsets.append(float(diff.flat[0]))
    offsets = np.array(offsets)
    assert np.all(np.abs(offsets) <= 20.0 + 1e-3)
    applied = np.abs(offsets) > 1e-3
    assert 0.35 < applied.mean() < 0.65  # each step with probability 0.5
    assert offsets[applied].min() < -10 and offsets[applied].max() > 10  # uniform over +-delta


def test_contrast_scales_the_0_255_values_and_clips_to_the_band_range():
    s = PhotometricSettings(brightness_delta=0.0, contrast_range=(0.5, 1.5), saturation_range=(1.0, 1.0),
                            hue_delta=0)
    d = PhotometricDistortion(_stats(), s, seed=2)
    x = _crop(np.random.default_rng(2))
    factors = []
    for _ in range(200):
        y = d(x)
        assert np.all(y >= LO.reshape(-1, 1, 1) - 1e-3) and np.all(y <= HI.reshape(-1, 1, 1) + 1e-2)
        ratio = _unit(y) / _unit(x)
        unclipped = _unit(y) < 254.99
        f = float(np.median(ratio[unclipped]))
        np.testing.assert_allclose(ratio[unclipped], f, rtol=1e-3)  # one factor for every band
        factors.append(f)
    factors = np.array(factors)
    assert np.all((factors >= 0.5 - 1e-4) & (factors <= 1.5 + 1e-4))
    assert (factors > 1.2).any() and (factors < 0.8).any()
    # values past the top of the band's range are clipped there, as mmseg clips at 255
    bright = np.broadcast_to(HI.reshape(-1, 1, 1) * 0.999, x.shape).astype(np.float32)
    outs = [d(bright) for _ in range(50)]
    assert all(np.all(o <= HI.reshape(-1, 1, 1) + 1e-2) for o in outs)


def test_saturation_and_hue_run_on_three_bands_only():
    desaturate = PhotometricSettings(brightness_delta=0.0, contrast_range=(1.0, 1.0), saturation_range=(0.0, 0.0),
                                     hue_delta=0)
    d3 = PhotometricDistortion(_stats(), desaturate, seed=3)
    x = _crop(np.random.default_rng(3))
    grey = 0
    for _ in range(60):
        u = _unit(d3(x))
        if not np.allclose(u, _unit(x), atol=1e-2):
            # saturation 0 leaves a grey pixel: equal values in the three bands (on the 0-255 scale)
            np.testing.assert_allclose(u[0], u[1], atol=0.05)
            np.testing.assert_allclose(u[1], u[2], atol=0.05)
            grey += 1
    assert 15 < grey < 45

    lo6, hi6 = np.zeros(6), np.full(6, 255.0)
    d6 = PhotometricDistortion(_stats(lo6, hi6), desaturate, seed=3)
    x6 = _crop(np.random.default_rng(4), lo6, hi6)
    for _ in range(20):  # multispectral: no colour steps, and the other steps are neutral here
        np.testing.assert_allclose(d6(x6), x6, atol=1e-3)


def test_state_dict_resumes_the_same_distortions():
    s = PhotometricSettings()
    a = PhotometricDistortion(_stats(), s, seed=7)
    x = _crop(np.random.default_rng(5))
    for _ in range(5):
        a(x)
    state = a.state_dict()
    expected = [a(x) for _ in range(5)]
    b = PhotometricDistortion(_stats(), s, seed=123)
    b.load_state_dict(state)
    for want in expected:
        np.testing.assert_array_equal(b(x), want)


def test_config_switch_and_a_bad_value_named():
    assert PhotometricSettings.from_config(False) is None
    assert PhotometricSettings.from_config(True) == PhotometricSettings()
    s = PhotometricSettings.from_config({"brightness_delta": 10, "contrast_range": [0.8, 1.2]})
    assert s.brightness_delta == 10 and s.contrast_range == (0.8, 1.2)
    cfg = resolve_config("segformer-tiny", in_channels=6, num_classes=7)
    assert cfg["augment"]["photometric"] is True  # on in the shipped configs, as the spec has it
    with pytest.raises(ConfigError, match="brightness") as e:
        resolve_config("segformer-tiny", overrides={"augment.photometric": {"brightnes_delta": 5}})
    assert e.value.field == "model.overrides.augment.photometric"


def test_sampler_distorts_the_same_crops_and_resumes_exactly(source):
    stats = Normalizer(source.stats())
    plain = WindowSampler(source, 48, stats, seed=4)
    jitter = WindowSampler(source, 48, stats, seed=4, photometric=PhotometricSettings())
    a, b = plain.sample(8), jitter.sample(8)
    assert plain.last_windows == jitter.last_windows  # the option does not move the crops
    assert (a["label"] == b["label"]).all() and (a["valid"] == b["valid"]).all()
    changed = [not np.allclose(a["img"][i].numpy(), b["img"][i].numpy()) for i in range(8)]
    assert any(changed)  # 3 in 4 crops get at least one step
    state = jitter.state_dict()
    want = jitter.sample(4)["img"]
    again = WindowSampler(source, 48, stats, seed=99, photometric=PhotometricSettings())
    again.load_state_dict(state)
    np.testing.assert_array_equal(again.sample(4)["img"].numpy(), want.numpy())
