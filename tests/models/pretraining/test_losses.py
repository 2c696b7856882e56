"""The pretraining objectives on small hand-computed examples."""
from __future__ import annotations

import math

import pytest
import torch

from models.pretraining.losses import cosine_regression, nt_xent, patch_targets, patchify, reconstruction_loss


def test_nt_xent_by_hand():
    # two pairs of orthogonal unit vectors: each vector's partner has similarity 1, the two others 0
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # temperature 1: -log(e / (e + 1 + 1))
    assert float(nt_xent(z, z, 1.0)) == pytest.approx(math.log(math.e + 2) - 1)
    # temperature 0.5: similarities double: -log(e^2 / (e^2 + 2))
    assert float(nt_xent(z, z, 0.5)) == pytest.approx(math.log(math.e ** 2 + 2) - 2)
    # lengths do not matter (cosine), and one pair has no negative: 0
    assert float(nt_xent(3 * z, z, 1.0)) == pytest.approx(math.log(math.e + 2) - 1)
    assert float(nt_xent(z[:1], z[:1], 0.2)) == pytest.approx(0.0)


def test_nt_xent_with_a_negative_as_close_as_the_partner():
    # z1 = [a, b], z2 = [a, a]: b's partner (a) is as close as a negative... of b: each row by hand, t = 1
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    z1, z2 = torch.stack([a, b]), torch.stack([a, a])
    # rows: z1[0]=a: others b(0) a(1, partner) a(1) -> -log(e/(1+2e));  z1[1]=b: a(0) a(0) a(0, partner) -> log 3
    #       z2[0]=a: a(1, partner) b(0) a(1) -> -log(e/(1+2e));       z2[1]=a: a(1) b(0, partner) a(1) -> -log(1/(1+2e))
    rows = [math.log(1 + 2 * math.e) - 1, math.log(3), math.log(1 + 2 * math.e) - 1, math.log(1 + 2 * math.e)]
    assert float(nt_xent(z1, z2, 1.0)) == pytest.approx(sum(rows) / 4)


def test_cosine_regression_by_hand():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    t = torch.tensor([[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0]])  # same direction, orthogonal, opposite
    assert cosine_regression(p, t, torch.ones(3)).tolist() == pytest.approx(2.0)  # (0 + 2 + 4) / 3
    assert float(cosine_regression(p, t, torch.tensor([True, False, True]))) == pytest.approx(2.0)  # (0 + 4) / 2
    assert float(cosine_regression(p, t, torch.tensor([True, True, False]))) == pytest.approx(1.0)
    assert float(cosine_regression(p, t, torch.zeros(3, dtype=torch.bool))) == 0.0
    # the target is not trained through
    p.requires_grad_(True)
    t.requires_grad_(True)
    cosine_regression(p, t).backward()
    assert t.grad is None and p.grad is not None


def test_patchify_is_row_major_per_band():
    img = torch.arange(32.0).reshape(1, 2, 4, 4)
    x = patchify(img, 2)
    assert x.shape == (1, 4, 2, 4)
    assert x[0, 1, 0].tolist() == [2.0, 3.0, 6.0, 7.0]        # second patch (top right), band 0
    assert x[0, 2, 1].tolist() == [24.0, 25.0, 28.0, 29.0]    # third patch (bottom left), band 1


def test_patch_targets_standardise_each_patch_and_band_over_valid_pixels():
    img = torch.zeros(1, 2, 2, 4)
    img[0, 0, :, :2] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])      # patch 0, band 0: mean 2.5, var 1.25
    img[0, 1, :, :2] = torch.tensor([[10.0, 10.0], [10.0, 10.0]])  # band 1 flat: all 0 after
    img[0, 0, :, 2:] = torch.tensor([[5.0, 9.0], [7.0, 100.0]])    # patch 1, band 0; 100 is nodata
    valid = torch.ones(1, 2, 4, dtype=torch.bool)
    valid[0, 1, 3] = False
    eps = 1e-2
    t, pix = patch_targets(img, valid, 2, eps=eps)
    want0 = [(v - 2.5) / math.sqrt(1.25 + eps) for v in (1, 2, 3, 4)]
    assert t[0, 0, 0].tolist() == pytest.approx(want0, rel=1e-5)
    assert t[0, 0, 1].tolist() == pytest.approx([0, 0, 0, 0])
    # patch 1 over its three valid pixels: mean 7, var 8/3; the nodata pixel's target is 0 and not a pixel
    want1 = [(v - 7) / math.sqrt(8 / 3 + eps) for v in (5, 9, 7)] + [0.0]
    assert t[0, 1, 0].tolist() == pytest.approx(want1, rel=1e-5)
    assert pix[0].tolist() == [[True] * 4, [True, True, True, False]]


def test_reconstruction_counts_masked_valid_patches_only():
    target = torch.zeros(1, 3, 1, 4)
    pixels = torch.ones(1, 3, 4, dtype=torch.bool)
    pixels[0, 2, :3] = False  # patch 2 is 25 % valid
    pred = torch.zeros(1, 3, 1, 4)
    pred[0, 0] = 1.0   # masked, valid: error 1 per pixel
    pred[0, 1] = 3.0   # visible: does not count
    pred[0, 2] = 2.0   # masked, too little valid
    masked = torch.tensor([[True, False, True]])
    assert float(reconstruction_loss(pred, target, pixels, masked, min_valid=0.5)) == pytest.approx(1.0)
    # with the threshold low enough, patch 2 counts too: its one valid pixel errs by 4 -> (1 + 4) / 2
    assert float(reconstruction_loss(pred, target, pixels, masked, min_valid=0.25)) == pytest.approx(2.5)
    # bands are averaged: two bands, errors 1 and 3 -> 2
    pred2, target2 = torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4)
    pred2[0, 0, 0], pred2[0, 0, 1] = 1.0, math.sqrt(3.0)
    assert float(reconstruction_loss(pred2, target2, torch.ones(1, 1, 4, dtype=torch.bool),
                                     torch.tensor([[True]]))) == pytest.approx(2.0)
    assert float(reconstruction_loss(pred, target, pixels, torch.zeros(1, 3, dtype=torch.bool))) == 0.0
