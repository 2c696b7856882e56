"""EMA schedule and pseudo-label weighting of ST-DASegNet, checked against the rule on constructed maps."""
from __future__ import annotations

import pytest
import torch

from models.adaptation.st_dasegnet import ema_alpha, ema_update, pseudo_labels, pseudo_weights


def test_alpha_follows_the_schedule():
    assert ema_alpha(1) == pytest.approx(0.5)
    assert ema_alpha(3) == pytest.approx(0.75)
    assert ema_alpha(9) == pytest.approx(0.9)
    assert ema_alpha(998) == pytest.approx(1 - 1 / 999) and ema_alpha(998) < 0.999
    assert ema_alpha(999) == 0.999 and ema_alpha(40000) == 0.999
    for t in range(1, 2000, 37):
        assert ema_alpha(t) == pytest.approx(min(1 - 1 / (t + 1), 0.999))


def test_ema_update_is_parameters_only():
    teacher = torch.nn.BatchNorm1d(3)
    student = torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        teacher.weight.fill_(1.0)
        student.weight.fill_(3.0)
        student.running_mean.fill_(5.0)
    ema_update(teacher, student, 0.75)
    assert torch.allclose(teacher.weight, torch.full((3,), 0.75 * 1 + 0.25 * 3))
    assert torch.allclose(teacher.running_mean, torch.zeros(3))  # buffers untouched


def test_q_and_pixel_weights_on_a_constructed_confidence_map():
    # 2 images x 2 x 5 = 20 pixels; 5 at >= 0.975, others spread across the 0.8 boundary
    conf = torch.tensor([
        [[0.99, 0.98, 0.975, 0.97, 0.85], [0.80, 0.79, 0.50, 0.99, 0.30]],
        [[0.976, 0.60, 0.81, 0.95, 0.20], [0.10, 0.7999, 0.9, 0.4, 0.88]],
    ])
    label = torch.tensor([
        [[0, 1, 2, 2, 1], [2, 0, 1, 1, 0]],
        [[2, 1, 0, 2, 1], [0, 2, 1, 2, 0]],
    ])
    cw = [1.0, 1.5, 2.0]
    w, q = pseudo_weights(conf, label, cw, threshold=0.975, rare_threshold=0.8)
    assert q == pytest.approx(5 / 20)
    expected = torch.empty_like(conf)
    for idx in torch.cartesian_prod(*(torch.arange(n) for n in conf.shape)):
        i, j, k = idx.tolist()
        p, y = conf[i, j, k].item(), label[i, j, k].item()
        expected[i, j, k] = q * cw[y] if p >= 0.8 else 0.5 * q
    assert torch.allclose(w, expected)
    assert w[0, 1, 0] == pytest.approx(0.25 * 2.0)   # p = 0.80 exactly: confident, class weight
    assert w[1, 1, 1] == pytest.approx(0.125)        # p just below 0.8: half of q


def test_invalid_pixels_do_not_count_and_get_no_weight():
    conf = torch.tensor([[[0.99, 0.99, 0.5, 0.5]]])
    label = torch.zeros(1, 1, 4, dtype=torch.long)
    valid = torch.tensor([[[True, False, True, False]]])
    w, q = pseudo_weights(conf, label, [2.0], valid=valid)
    assert q == pytest.approx(0.5)  # 1 of the 2 valid pixels is confident
    assert w.tolist() == [[[1.0, 0.0, 0.25, 0.0]]]


def test_pseudo_labels_upsample_softmax_argmax():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 2, 0, 0] = 5.0
    logits[0, 1, 1, 1] = 1.0
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, 3, 3] = False
    conf, lab = pseudo_labels(logits, (4, 4), valid)
    assert lab[0, 0, 0] == 2 and lab[0, 3, 3] == 255
    assert conf[0, 0, 0] == pytest.approx(torch.softmax(torch.tensor([0.0, 0.0, 5.0]), 0)[2].item())
    assert ((conf > 0) & (conf <= 1)).all()


# -- named variants (not the spec's defaults): budget-tied EMA, source warm-up, class-wise thresholds ----------
def test_budget_horizon_caps_alpha_at_one_over_horizon_iterations():
    from models.adaptation.st_dasegnet import budget_max_alpha

    assert budget_max_alpha(400, 0.1) == pytest.approx(1 - 1 / 40)
    assert budget_max_alpha(40000, 0.1) == 0.999  # the spec's cap is kept where the budget is the paper's
    assert budget_max_alpha(5, 0.1) == 0.5  # never a memory under two iterations
    assert ema_alpha(100, budget_max_alpha(400, 0.1)) == pytest.approx(0.975)


def test_classwise_quality_counts_each_class_above_its_own_quantile():
    from models.adaptation.st_dasegnet import classwise_quality, quality_weights

    # class 0: confidences 0.99, 0.98, 0.6, 0.5; class 1 (hard): 0.7, 0.65, 0.6, 0.55
    conf = torch.tensor([[[0.99, 0.98, 0.6, 0.5], [0.7, 0.65, 0.6, 0.55]]])
    label = torch.tensor([[[0, 0, 0, 0], [1, 1, 1, 1]]])
    # at the median, each class keeps its upper half: 2 + 2 of 8 pixels, where the fixed 0.975 keeps 2
    assert classwise_quality(conf, label, 2, threshold=0.975, quantile=0.5) == pytest.approx(0.5)
    assert pseudo_weights(conf, label, [1, 1], threshold=0.975)[1] == pytest.approx(0.25)
    # tau_c never exceeds the fixed threshold: quantile 1.0 keeps class 0's pixels at >= 0.975 and class 1's max
    assert classwise_quality(conf, label, 2, threshold=0.975, quantile=1.0) == pytest.approx(3 / 8)
    valid = torch.ones_like(conf, dtype=torch.bool)
    valid[0, 1] = False  # class 1 all invalid: only class 0 counts
    assert classwise_quality(conf, label, 2, threshold=0.975, quantile=0.5, valid=valid) == pytest.approx(0.5)
    w = quality_weights(conf, label, [1.0, 2.0], 0.5, rare_threshold=0.8, valid=valid)
    assert torch.allclose(w[0, 0], torch.tensor([0.5, 0.5, 0.25, 0.25])) and (w[0, 1] == 0).all()


def test_source_warmup_keeps_teachers_equal_to_students_and_the_target_terms_off(tiny):
    from models.adaptation import build_method
    from models.adaptation.st_dasegnet import STDASegNet
    from tests.models.conftest import synthetic_batch  # noqa: F401 (shared helper)

    cfg = tiny("st-dasegnet", bands=4, classes=3, **{"adaptation.source_warmup": 0.5, "adaptation.ema_horizon": 0.1})
    m: STDASegNet = build_method(cfg, total_iters=10)
    assert m.warmup_iters() == 5 and m.max_alpha() == pytest.approx(0.5)
    torch.manual_seed(0)
    batch = synthetic_batch(bands=4, classes=3)
    for it in range(4):
        m.train_step(batch, it)
    m.update_teachers(4)  # still warming up: alpha 0, the teacher is the student
    for pt, ps in zip(m.net["teacher_s"].parameters(), m.net["students"].decoder_s.parameters()):
        assert torch.equal(pt, ps)
    terms, _ = m.student_losses(batch)
    warm = m.combine(terms, adapting=False)
    assert torch.allclose(warm, terms["ce_src_s"] + terms["ce_src_t"])
    assert m.update_teachers(8) == pytest.approx(min(1 - 1 / 4, 0.5))  # after warm-up: t counts from its end
