"""Random resize of source crops (mmseg's RandomResize ratio range, by reading crop / r px of ground):
the window chosen for a ratio, bilinear image and nearest-neighbour label resizing on constructed
arrays, the config switch, and the sampler on the real NC scene (shapes, labels, exact resume)."""
from __future__ import annotations

import numpy as np
import pytest
from rasterio.windows import Window

from core.errors import ConfigError
from models.config import resolve_config
from models.sampling.rescale import RandomRescale, RescaleSettings
from models.sampling.sampler import WindowSampler
from models.normalization import Normalizer

BOUNDS = (10, 20, 300, 400)  # row_off, col_off, height, width of a region


def test_a_ratio_of_two_reads_half_the_ground_centred_on_the_drawn_window():
    r = RandomRescale(RescaleSettings((2.0, 2.0)), 64, seed=0)
    w = r.window_around(Window(100, 50, 64, 64), BOUNDS)
    assert (w.width, w.height) == (32, 32)
    assert (w.col_off + 16, w.row_off + 16) == (132, 82)  # same centre


def test_a_ratio_of_one_half_reads_twice_the_ground_moved_inside_the_region():
    r = RandomRescale(RescaleSettings((0.5, 0.5)), 64, seed=0)
    w = r.window_around(Window(20, 10, 64, 64), BOUNDS)  # the region's top-left corner
    assert (w.width, w.height) == (128, 128)
    assert (w.col_off, w.row_off) == (20, 10)  # centring would leave the region: moved in
    w = r.window_around(Window(20 + 400 - 64, 10 + 300 - 64, 64, 64), BOUNDS)  # bottom-right corner
    assert (w.col_off + 128, w.row_off + 128) == (420, 310)
    small = r.window_around(Window(0, 0, 64, 64), (0, 0, 100, 90))  # region smaller than 128 px
    assert (small.width, small.height) == (90, 90)


def test_ratios_are_drawn_uniformly_over_the_range():
    r = RandomRescale(RescaleSettings((0.5, 2.0)), 64, seed=3)
    sizes = np.array([r.window_around(Window(150, 100, 64, 64), BOUNDS).width for _ in range(2000)])
    ratios = 64 / sizes
    assert sizes.min() >= 32 and sizes.max() <= 128
    assert ratios.min() < 0.52 and ratios.max() > 1.9
    assert abs(np.mean(ratios) - 1.25) < 0.05  # the mean of U(0.5, 2)


def test_image_resizes_bilinearly_and_labels_and_validity_by_nearest_neighbour():
    r = RandomRescale(RescaleSettings(), 4, seed=0)
    ramp = np.tile(np.arange(8, dtype=np.float32), (2, 8, 1))  # (2, 8, 8), rising along columns
    ramp[1] *= 10
    labels = np.repeat(np.repeat(np.array([[0, 1], [2, 3]], np.uint8), 4, 0), 4, 1)
    valid = np.ones((8, 8), bool)
    valid[:2, :2] = False
    ramp[:, :2, :2] = 0.0  # as normalize leaves invalid pixels
    img, v, lab = r.resize(ramp, valid, labels)
    assert img.shape == (2, 4, 4) and v.shape == (4, 4) and lab.shape == (4, 4) and lab.dtype == np.uint8
    # halving with half-pixel centres: output column j samples input column 2j + 0.5
    np.testing.assert_allclose(img[0, 2:], np.tile(np.arange(4) * 2 + 0.5, (2, 1)), atol=1e-5)
    np.testing.assert_allclose(img[1, 2:], 10 * np.tile(np.arange(4) * 2 + 0.5, (2, 1)), atol=1e-4)
    np.testing.assert_array_equal(lab, labels[::2, ::2])
    np.testing.assert_array_equal(v, valid[::2, ::2])
    assert (img[:, ~v] == 0).all()  # invalid stays 0, the normalised mean
    doubled = RandomRescale(RescaleSettings(), 16, seed=0).resize(ramp, valid, labels)[2]
    np.testing.assert_array_equal(doubled, np.repeat(np.repeat(labels, 2, 0), 2, 1))


def test_config_switch_and_a_bad_value_named():
    assert RescaleSettings.from_config(False) is None and RescaleSettings.from_config(None) is None
    assert RescaleSettings.from_config(True).ratio_range == (0.5, 2.0)
    assert RescaleSettings.from_config([0.75, 1.5]).ratio_range == (0.75, 1.5)
    assert RescaleSettings.from_config({"ratio_range": [1, 3]}).ratio_range == (1.0, 3.0)
    for bad in ([2.0, 1.0], [0, 1], "big", [1.0], {"ratio": [1, 2]}):
        with pytest.raises(ValueError):
            RescaleSettings.from_config(bad)
    cfg = resolve_config("segformer-tiny", in_channels=6, num_classes=7)
    assert tuple(cfg["augment"]["resize"]) == (0.5, 2.0)  # on in the shipped configs, as the spec has it
    with pytest.raises(ConfigError, match="low <= high") as e:
        resolve_config("segformer-tiny", overrides={"augment.resize": [2.0, 0.5]})
    assert e.value.field == "model.overrides.augment.resize"


def test_sampler_returns_crop_sized_rescaled_crops_of_the_ground_it_read(source):
    stats = Normalizer(source.stats())
    s = WindowSampler(source, 32, stats, seed=5, rescale=RescaleSettings((0.5, 0.5)))
    batch = s.sample(6)
    assert batch["img"].shape == (6, 6, 32, 32) and batch["label"].shape == (6, 32, 32)
    item = source.items[0]
    for k, (_, w) in enumerate(s.last_windows):
        assert (w.width, w.height) == (64, 64)  # twice the ground, shrunk to the crop
        rw = item.read(w)
        want = item.read_labels(w, rw.valid)[::2, ::2]
        np.testing.assert_array_equal(batch["label"][k].numpy(), want)


def test_sampler_with_rescale_resumes_exactly(source):
    stats = Normalizer(source.stats())
    a = WindowSampler(source, 32, stats, seed=6, rescale=RescaleSettings())
    a.sample(4)
    state = a.state_dict()
    want = a.sample(4)
    b = WindowSampler(source, 32, stats, seed=77, rescale=RescaleSettings())
    b.load_state_dict(state)
    got = b.sample(4)
    np.testing.assert_array_equal(got["img"].numpy(), want["img"].numpy())
    np.testing.assert_array_equal(got["label"].numpy(), want["label"].numpy())
    assert {w.width for _, w in a.last_windows} != {32}  # the crops really were rescaled
