"""Semi-supervised correction (method: semi): the formulas on small hand-computed examples (gated fusion,
per-class masks, inpainting loss), then the method's objective on synthetic batches: which terms each
phase has, where the inpainting loss looks, the weighted total, exact resume and the plain inference model."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from models.adaptation import build_method
from models.adaptation.semi import (choose_mask_classes, class_region_mask, head_features, inpainting_loss,
                                    mask_image)
from models.gated_fusion import GatedFeatureFusion
from models.segmentor import build_segmentor


def _gff_1x1(reset, select, cand) -> GatedFeatureFusion:
    """A one-channel GFF with 1x1 gates: each argument is (weight on a, weight on b, bias)."""
    g = GatedFeatureFusion(1, kernel_size=1)
    with torch.no_grad():
        for conv, (wa, wb, bias) in ((g.reset_gate, reset), (g.select_gate, select), (g.candidate, cand)):
            conv.weight.copy_(torch.tensor([wa, wb]).view(1, 2, 1, 1))
            conv.bias.fill_(bias)
    return g


def _px(v: float) -> torch.Tensor:
    return torch.full((1, 1, 1, 1), float(v))


def test_gff_mixes_by_hand():
    # r = sigmoid(0) = 0.5, z = sigmoid(ln 3) = 0.75, h = relu(a + r b) = relu(2 + 2) = 4
    g = _gff_1x1(reset=(0, 0, 0.0), select=(0, 0, math.log(3)), cand=(1, 1, 0.0))
    out = g(_px(2), _px(4)).detach()
    assert float(out) == pytest.approx(0.25 * 2 + 0.75 * 4)  # 3.5
    # the candidate's ReLU: h = relu(1 - 0.5 * 4) = 0, so only (1 - z) a is left
    g = _gff_1x1(reset=(0, 0, 0.0), select=(0, 0, math.log(3)), cand=(1, -1, 0.0))
    assert float(g(_px(1), _px(4)).detach()) == pytest.approx(0.25)


def test_gff_gates_read_both_inputs():
    # reset gate on b alone: b = 0 -> r = 0.5; b = ln 3 -> r = 0.75; h = relu(0 * a + 1 * r b)
    g = _gff_1x1(reset=(0, 1, 0.0), select=(0, 0, 100.0), cand=(0, 1, 0.0))  # z = 1: out = h
    assert float(g(_px(5), _px(math.log(3))).detach()) == pytest.approx(0.75 * math.log(3), rel=1e-5)
    # select gate on a alone: a = -100 -> z = 0, out = a whatever b is
    g = _gff_1x1(reset=(0, 0, 0.0), select=(1, 0, 0.0), cand=(0, 1, 0.0))
    assert float(g(_px(-100), _px(7)).detach()) == pytest.approx(-100.0)
    with pytest.raises(ValueError):
        g(_px(1), torch.zeros(1, 1, 2, 2))


def test_mask_classes_fit_under_the_share_or_take_the_least_predicted():
    # window 0: shares 0.6 / 0.3 / 0.1 with max 0.5 -> class 0 never fits, 1 and 2 always (0.4), in any order
    p0 = torch.tensor([0] * 6 + [1] * 3 + [2])
    # window 1: 0.9 / 0.1 with max 0.05 -> nothing fits -> the least predicted class (1) alone
    p1 = torch.tensor([0] * 9 + [1])
    pred = torch.stack([p0, p1]).view(2, 2, 5)
    valid = torch.ones_like(pred, dtype=torch.bool)
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        a = choose_mask_classes(pred[:1], valid[:1], 4, max_fraction=0.5, generator=g)
        assert a.tolist() == [[False, True, True, False]]
    b = choose_mask_classes(pred[1:], valid[1:], 4, max_fraction=0.05)
    assert b.tolist() == [[False, True, False, False]]
    # everything fits under 1.0: every present class, none absent (class 3)
    c = choose_mask_classes(pred, valid, 4, max_fraction=1.0)
    assert c.tolist() == [[True, True, True, False], [True, True, False, False]]
    # shares count valid pixels only: with class 0's pixels invalid, window 0 is 0.75 / 0.25 of class 1 / 2
    v = valid.clone()
    v[0] = pred[0] != 0
    d = choose_mask_classes(pred[:1], v[:1], 4, max_fraction=0.3)
    assert d.tolist() == [[False, False, True, False]]
    # a window without valid pixels masks nothing
    assert not choose_mask_classes(pred[:1], torch.zeros_like(v[:1]), 4, max_fraction=0.5).any()


def test_random_order_decides_when_not_every_class_fits():
    # shares 0.4 / 0.4 / 0.2 with max 0.5: either {0} or {1} first, then 2 may follow only if it fits
    pred = torch.tensor([0] * 4 + [1] * 4 + [2] * 2).view(1, 2, 5)
    valid = torch.ones_like(pred, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    seen = {tuple(choose_mask_classes(pred, valid, 3, max_fraction=0.5, generator=g)[0].tolist())
            for _ in range(40)}
    # 0.4 + 0.2 > 0.5, so a big class excludes the small one; 0.2 then 0.4 is 0.6 too: singletons only
    assert seen == {(True, False, False), (False, True, False), (False, False, True)}


def test_class_region_mask_by_hand():
    pred = torch.tensor([[[0, 1, 2], [2, 2, 1]]])
    valid = torch.tensor([[[True, True, True], [False, True, True]]])
    chosen = torch.tensor([[False, False, True]])
    assert class_region_mask(pred, valid, chosen).tolist() == [[[False, False, True], [False, True, False]]]


def test_masking_zeroes_every_band_of_the_masked_pixels_only():
    x = torch.arange(1, 9, dtype=torch.float32).view(1, 2, 2, 2)
    m = torch.tensor([[[True, False], [False, False]]])
    out = mask_image(x, m)
    assert out[0, :, 0, 0].tolist() == [0.0, 0.0]
    assert torch.equal(out[0, :, 1], x[0, :, 1]) and torch.equal(out[0, :, 0, 1], x[0, :, 0, 1])


def test_inpainting_loss_by_hand_counts_masked_pixels_only():
    x = torch.zeros(1, 2, 2, 2)
    rec = torch.zeros(1, 2, 2, 2)
    rec[0, 0, 0, 0] = 2.0     # masked pixel, band 0: |2|
    rec[0, 1, 0, 0] = -1.0    # masked pixel, band 1: |-1|
    rec[0, :, 1, 1] = 50.0    # not masked: must not count
    m = torch.tensor([[[True, True], [False, False]]])  # two masked pixels x two bands
    assert float(inpainting_loss(rec, x, m)) == pytest.approx((2 + 1) / 4)
    assert float(inpainting_loss(rec, x, torch.zeros_like(m))) == 0.0


# -- the method -----------------------------------------------------------------------------------------
def _semi(tiny, total=10, **adapt):
    cfg = tiny("semi", bands=4, classes=3, **{f"adaptation.{k}": v for k, v in adapt.items()})
    return build_method(cfg, total_iters=total)


def _batch(make_batch, seed=0, crop=32):
    b = make_batch(bands=4, classes=3, b=2, crop=crop, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    label = torch.randint(0, 3, (2, crop, crop), generator=g)
    label[:, :, crop // 2:] = 255  # the right half of each labelled target window is outside the labels
    b["target_labelled"] = {"img": torch.randn(2, 4, crop, crop, generator=g), "label": label,
                            "valid": torch.ones(2, crop, crop, dtype=torch.bool)}
    return b


def test_head_features_are_what_the_classifier_sees(tiny):
    m = _semi(tiny)
    seg = m.segmentor.eval()
    x = torch.randn(2, 4, 32, 32)
    feats = seg.extract(x)
    f = head_features(seg.decode_head, feats)
    assert f.shape[1] == seg.decode_head.channels
    assert torch.allclose(seg.decode_head.conv_seg(f), seg.decode_head(feats), atol=1e-6)
    # the hook is gone afterwards: the head gives logits again
    assert seg.decode_head(feats).shape[1] == 3


def test_phase_one_is_segmentation_alone_and_phase_two_adds_fine_and_inpainting(tiny, make_batch):
    m = _semi(tiny, total=8, phase1=0.5)
    assert m.phase1_iters() == 4
    batch = _batch(make_batch)
    early = m.losses(batch, iteration=3)
    assert set(early) == {"loss", "ce_src", "ce_tgt"}
    late = m.losses(batch, iteration=4)
    assert set(late) == {"loss", "ce_src", "ce_tgt", "ce_fine", "inpaint", "masked_share"}
    assert float(late["inpaint"]) > 0 and 0 < float(late["masked_share"]) <= 1


def test_total_is_the_weighted_sum_of_the_terms(tiny, make_batch):
    m = _semi(tiny, phase1=0.0, target_weight=2.0, fine_weight=0.5, inpaint_weight=3.0)
    t = m.losses(_batch(make_batch), iteration=0)
    want = t["ce_src"] + 2.0 * t["ce_tgt"] + 0.5 * 2.0 * t["ce_fine"] + 3.0 * t["inpaint"]
    assert float(t["loss"]) == pytest.approx(float(want), rel=1e-6)


def test_unlabelled_target_pixels_never_enter_the_segmentation_terms(tiny, make_batch):
    m = _semi(tiny, phase1=0.0)
    batch = _batch(make_batch)
    batch["target_labelled"]["label"][:] = 255  # nothing labelled in the target windows
    t = m.losses(batch, iteration=0)
    assert float(t["ce_tgt"]) == 0.0 and float(t["ce_fine"]) == 0.0
    assert float(t["ce_src"]) > 0 and float(t["inpaint"]) > 0


def test_inpainting_loss_looks_only_at_masked_valid_pixels_of_the_unlabelled_windows(tiny, make_batch):
    m = _semi(tiny, phase1=0.0)
    m.eval()  # deterministic passes (BN/dropout), the same masks below
    batch = _batch(make_batch)
    target = batch["target"]
    # no valid pixel: nothing is masked, the loss is 0
    empty = {"img": target["img"], "valid": torch.zeros_like(target["valid"])}
    loss, share = m.inpainting_term(empty)
    assert float(loss) == 0.0 and float(share) == 0.0
    # by hand: the term equals inpainting_loss over the masks the coarse map chose, and those masks
    # are inside the valid pixels
    state = m.mask_rng.get_state()
    loss, share = m.inpainting_term(target)
    m.mask_rng.set_state(state)
    with torch.no_grad():
        mask = m.masks_of(m.segmentor.forward_logits(target["img"]), target["valid"])
        rec = m.net["inpainter"](m.segmentor.extract(mask_image(target["img"], mask)), target["img"].shape[-2:])
    assert not (mask & ~target["valid"]).any() and mask.any()
    assert float(loss) == pytest.approx(float(inpainting_loss(rec, target["img"], mask)), rel=1e-5)
    assert float(share) == pytest.approx(float(mask.sum() / target["valid"].sum()))
    # the labelled windows play no part in it: another labelled batch, the same term
    m.mask_rng.set_state(state)
    again, _ = m.inpainting_term(_batch(make_batch, seed=9)["target"] | {"img": target["img"], "valid": target["valid"]})
    assert float(again) == pytest.approx(float(loss), rel=1e-6)


def test_a_batch_without_labelled_target_windows_is_refused(tiny, make_batch):
    from core.errors import ConfigError

    m = _semi(tiny)
    with pytest.raises(ConfigError, match="labelled target windows"):
        m.losses(make_batch(bands=4, classes=3), iteration=0)


def test_training_steps_resume_exactly_and_inference_is_the_plain_segmentor(tiny, make_batch):
    torch.manual_seed(0)
    a = _semi(tiny, total=6, phase1=0.3)
    torch.manual_seed(0)
    b = _semi(tiny, total=6, phase1=0.3)
    batches = [_batch(make_batch, seed=s) for s in range(4)]
    for it in range(2):
        a.train_step(batches[it], it)
    # resume from here, mask generator included (a copy: a live optimiser's state would be shared)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    for it in range(2, 4):
        la, lb = a.train_step(batches[it], it), b.train_step(batches[it], it)
        assert la == pytest.approx(lb, rel=1e-5)
        assert math.isfinite(la["loss"]) and "inpaint" in la
    cfg = a.inference_config()
    assert cfg["type"] == "Segmentor"
    seg = build_segmentor(cfg)
    seg.load_state_dict(a.inference_segmentor().state_dict())
    x = torch.randn(1, 4, 32, 32)
    assert torch.allclose(seg.eval()(x), a.segmentor.eval()(x), atol=1e-6)


def test_semi_config_refuses_fractions_out_of_range(tiny):
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="adaptation.phase1"):
        _semi(tiny, phase1=1.5)
