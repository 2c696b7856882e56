"""Views for pretraining: tracked geometry (positions found again across views) and band-agnostic intensity changes."""
from __future__ import annotations

import math

import pytest
import torch

from core.errors import ConfigError
from models.pretraining.views import (GeometrySettings, IntensitySettings, blur, grid_points, identity_geometry,
                                      intensity, inside, map_points, mask_at, patch_mask, pixel_mask, random_geometry,
                                      relative_map, sample_at, turn, warp)


def _coords(b: int, size: int) -> torch.Tensor:
    """(B, 2, size, size): each pixel's own normalised (x, y) centre: a window that says where it is."""
    c = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx, yy]).expand(b, 2, size, size).clone()


def test_a_quarter_turn_and_a_flip_by_hand():
    k, flip = torch.tensor([1, 0, 2]), torch.tensor([False, True, True])
    r = turn(k, flip)
    # a quarter turn sends x to y; a flip negates x; a half turn after a flip negates y only
    assert torch.equal(r[0], torch.tensor([[0.0, -1.0], [1.0, 0.0]]))
    assert torch.equal(r[1], torch.tensor([[-1.0, 0.0], [0.0, 1.0]]))
    assert torch.equal(r[2], torch.tensor([[1.0, 0.0], [0.0, -1.0]]))


def test_map_points_by_hand_through_a_box_and_a_turn():
    # view 1: the left half of the window (half sides 0.5 and 1, centre x -0.5), no turn; view 2: the window
    th1 = torch.tensor([[[0.5, 0.0, -0.5], [0.0, 1.0, 0.0]]])
    th2 = identity_geometry(1)
    p = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [-1.0, 0.5]]])
    assert torch.allclose(map_points(p, th1, th2), torch.tensor([[[-0.5, 0.0], [0.0, 1.0], [-1.0, 0.5]]]))
    # and back
    assert torch.allclose(map_points(map_points(p, th1, th2), th2, th1), p, atol=1e-6)
    # view 3: the whole window turned a quarter: the view's +x looks along the window's +y
    th3 = torch.cat([turn(torch.tensor([1]), torch.tensor([False])), torch.zeros(1, 2, 1)], -1)
    assert torch.allclose(map_points(torch.tensor([[[1.0, 0.0]]]), th3, th2), torch.tensor([[[0.0, 1.0]]]))
    # relative_map is the same map as one affine
    rel = relative_map(th1, th3)
    q = map_points(p, th1, th3)
    assert torch.allclose(torch.einsum("bij,bnj->bni", rel[..., :2], p) + rel[..., 2][:, None], q, atol=1e-6)


def test_random_views_stay_inside_the_window_and_warp_where_map_points_says():
    torch.manual_seed(0)
    settings = GeometrySettings(scale=(0.2, 1.0), ratio=(0.5, 2.0), flip=True, rotate=True)
    theta = random_geometry(64, settings)
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]).expand(64, 4, 2)
    ground = map_points(corners, theta, identity_geometry(64))
    assert bool(inside(ground).all())
    area = (theta[:, 0, :2].norm(dim=1) * theta[:, 1, :2].norm(dim=1))  # |w| * |h| as fractions of the sides
    assert float(area.min()) >= 0.2 - 1e-5 and float(area.max()) <= 1.0 + 1e-5
    # the warped view of a window of coordinates holds, at each position, that position mapped into the window
    img = _coords(64, 32)
    view, valid = warp(img, torch.ones(64, 32, 32, dtype=torch.bool), theta)
    p = grid_points(64, 8)
    seen = sample_at(view, p)
    expected = map_points(p, theta, identity_geometry(64))
    assert torch.allclose(seen, expected, atol=0.07)  # bilinear reads of a linear ramp, one pixel ~0.06
    assert bool(valid.all())


def test_warp_with_the_identity_changes_nothing_and_masks_follow_nodata():
    img = torch.randn(2, 5, 16, 16)
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    valid[:, :, :4] = False
    img = img * valid[:, None]
    out, m = warp(img, valid, identity_geometry(2))
    assert torch.allclose(out, img, atol=1e-5) and torch.equal(m, valid)
    # a flip moves the nodata strip to the other side
    flip = torch.cat([turn(torch.zeros(2, dtype=torch.long), torch.tensor([True, True])), torch.zeros(2, 2, 1)], -1)
    _, m = warp(img, valid, flip)
    assert not bool(m[:, :, -4:].any()) and bool(m[:, :, :12].all())


def test_mask_at_and_sample_at_read_cells_and_nothing_outside():
    valid = torch.zeros(1, 4, 4, dtype=torch.bool)
    valid[0, 0, 0] = True  # the top-left cell, centre (-0.75, -0.75)
    p = torch.tensor([[[-0.75, -0.75], [0.75, 0.75], [1.5, 0.0]]])
    assert mask_at(valid, p).tolist() == [[True, False, False]]
    feat = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert sample_at(feat, p)[0, :, 0].tolist() == pytest.approx([0.0, 15.0, 0.0])


@pytest.mark.parametrize("bands", [1, 6, 11])
def test_intensity_changes_each_band_on_its_own_and_keeps_nodata_at_zero(bands):
    torch.manual_seed(1)
    img = torch.randn(4, bands, 24, 24)
    valid = torch.ones(4, 24, 24, dtype=torch.bool)
    valid[:, :3] = False
    img = img * valid[:, None]
    out = intensity(img, valid, IntensitySettings(blur_p=1.0))
    assert out.shape == img.shape and bool((out[:, :, :3] == 0).all())
    shift = (out - img)[:, :, 3:].mean((2, 3))
    if bands > 1:  # per-band offsets: the bands of a window move differently
        assert float(shift.std(dim=1).min()) > 1e-3
    none = intensity(img, valid, IntensitySettings(brightness=0.0, contrast=(1.0, 1.0), blur_p=0.0, noise=0.0))
    assert torch.allclose(none, img, atol=1e-6)


def test_blur_keeps_flat_windows_and_leaves_sigma_zero_alone():
    flat = torch.full((2, 3, 16, 16), 2.5)
    assert torch.allclose(blur(flat, torch.tensor([1.0, 0.0])), flat, atol=1e-5)
    x = torch.randn(2, 3, 16, 16)
    out = blur(x, torch.tensor([0.0, 1.5]))
    assert torch.allclose(out[0], x[0]) and float(out[1].std()) < float(x[1].std())
    # a 1-D Gaussian of sigma 1 sums to one: a single bright pixel spreads, its mass stays
    spike = torch.zeros(1, 1, 15, 15)
    spike[0, 0, 7, 7] = 1.0
    spread = blur(spike, torch.tensor([1.0]))
    assert float(spread.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(spread[0, 0, 7, 7]) == pytest.approx((1 / math.sqrt(2 * math.pi)) ** 2, rel=0.05)


def test_patch_masks_hide_an_exact_share():
    torch.manual_seed(0)
    m = patch_mask(5, 4, 8, 0.75)
    assert m.shape == (5, 4, 8) and m.flatten(1).sum(1).tolist() == [24] * 5
    pix = pixel_mask(m, 4)
    assert pix.shape == (5, 16, 32) and bool((pix[:, ::4, ::4] == m).all())


def test_bad_view_settings_name_their_field():
    with pytest.raises(ConfigError) as e:
        GeometrySettings.of({"scale": [0.5, 0.2]})
    assert e.value.field == "pretraining.views.scale"
    with pytest.raises(ConfigError) as e:
        IntensitySettings.of({"hue": 0.1})
    assert "unknown keys ['hue']" in str(e.value)
