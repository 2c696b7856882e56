"""Label-free signals on hand-made windows: a 1x1-conv stand-in whose logits are its input (so every
probability is known), the tiny ST-DASegNet and feature-regression methods for agreement, evaluation's
windows of the real NC scene, and Spearman's rho on a hand example with ties."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from models.adaptation import build_method
from models.label_free import domain_windows, label_free_signals, predicted_classes, spearman
from models.normalization import Normalizer


class LogitsAreInput(nn.Module):
    """A 1x1 conv with identity weights: the logits of a pixel are its K input values."""

    def __init__(self, k: int):
        super().__init__()
        self.conv = nn.Conv2d(k, k, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(k)[:, :, None, None])

    def predict_logits(self, x):
        return self.conv(x)


def _window(pixels, counted=None):
    """(h, w, K) logits per pixel -> a window (K, h, w) and its counted mask (all True unless given)."""
    x = torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1)
    m = torch.ones(x.shape[1:], dtype=torch.bool) if counted is None else torch.tensor(counted)
    return x, m


def test_uniform_prediction_has_entropy_log_k_and_no_coverage():
    k = 4
    x, m = _window(np.zeros((3, 5, k)))
    s = label_free_signals(LogitsAreInput(k), [(x, m)], [(x, m)], class_ids=[10, 20, 30, 40])
    assert s["entropy"] == pytest.approx(math.log(k))
    assert s["entropy_normalised"] == pytest.approx(1.0)
    assert s["mean_max_prob"] == pytest.approx(1 / k)
    assert s["pseudo_coverage"] == 0 and s["pseudo_coverage_0.9"] == 0
    assert "agreement" not in s  # one network: nothing to agree with
    assert s["pixels"] == {"target": 15, "source": 15} and s["windows"] == {"target": 1, "source": 1}


def test_coverage_confidence_distributions_and_nodata_excluded():
    ln = math.log
    # target: p_max 0.99 (class 0), 0.95 (class 0), 0.5 (tie -> class 0), 0.8 (class 1);
    # the third column is nodata and would be a sure class-1 pixel if it counted
    target = _window([[[ln(99), 0], [ln(19), 0], [0, 50]],
                      [[0, 0], [0, ln(4)], [0, 50]]],
                     counted=[[True, True, False], [True, True, False]])
    # source: two windows, classes 1, 1, 0 and then 1
    source = [_window([[[0, 3], [0, 2], [5, 0]]]), _window([[[0, 1]]])]
    s = label_free_signals(LogitsAreInput(2), [target], source, class_ids=[3, 7])
    assert s["pixels"] == {"target": 4, "source": 4}
    assert s["pseudo_coverage"] == pytest.approx(1 / 4)  # only 0.99 reaches 0.975
    assert s["pseudo_coverage_0.9"] == pytest.approx(2 / 4)
    assert s["mean_max_prob"] == pytest.approx((0.99 + 0.95 + 0.5 + 0.8) / 4, abs=1e-6)

    def h(p):
        return -(p * math.log(p) + (1 - p) * math.log(1 - p))

    assert s["entropy"] == pytest.approx((h(0.99) + h(0.95) + h(0.5) + h(0.8)) / 4, abs=1e-6)
    assert s["entropy_normalised"] == pytest.approx(s["entropy"] / math.log(2))
    assert s["class_distribution"] == {"target": {"3": 0.75, "7": 0.25}, "source": {"3": 0.25, "7": 0.75}}
    assert s["class_tv"] == pytest.approx(0.5)
    # the source's classes found once and handed over: the same signals, the same source windows counted
    once = predicted_classes(LogitsAreInput(2), source, 2)
    assert once.windows == 2 and once.counts.tolist() == [1, 3]
    assert label_free_signals(LogitsAreInput(2), [target], once, class_ids=[3, 7]) == s
    # a lower threshold moves the coverage it names, not the fixed 0.9 one
    assert label_free_signals(LogitsAreInput(2), [target], [], class_ids=[3, 7],
                              pseudo_threshold=0.94)["pseudo_coverage"] == pytest.approx(2 / 4)


def test_expected_miou_by_hand():
    ln = math.log
    # p = (0.99, 0.01), (0.95, 0.05), (0.5, 0.5) -> class 0 (tie), (0.2, 0.8) -> class 1
    target = _window([[[ln(99), 0], [ln(19), 0]], [[0, 0], [0, ln(4)]]])
    s = label_free_signals(LogitsAreInput(2), [target], [], class_ids=[3, 7])
    iou0 = 2.44 / (3 + 2.64 - 2.44)  # hits / (predicted + members - hits)
    iou1 = 0.8 / (1 + 1.36 - 0.8)
    assert s["expected_miou"] == pytest.approx((iou0 + iou1) / 2, abs=1e-6)


def test_expected_miou_weighs_a_neglected_class_and_skips_unexpected_ones():
    # every pixel 90 % sure of class 0: confident, but class 1 is expected on a tenth of the ground and never
    # predicted, so its expected IoU is 0; class 2 is expected on 0.0001 % of the pixels and does not count
    logits = np.log(np.array([0.9, 0.1 - 1e-6, 1e-6]))
    x, m = _window(np.broadcast_to(logits, (4, 4, 3)).copy())
    s = label_free_signals(LogitsAreInput(3), [(x, m)], [], class_ids=[1, 2, 3])
    assert s["mean_max_prob"] == pytest.approx(0.9, abs=1e-5)
    assert s["expected_miou"] == pytest.approx((0.9 + 0.0) / 2, abs=1e-5)
    # a model sure and right of both classes it predicts expects an IoU of 1 for each
    sure = _window([[[20.0, 0, 0], [0, 20.0, 0]]])
    assert label_free_signals(LogitsAreInput(3), [sure], [], class_ids=[1, 2, 3])["expected_miou"] == \
        pytest.approx(1.0, abs=1e-6)


def test_no_counted_pixel_gives_no_signal():
    x, _ = _window(np.zeros((2, 2, 2)))
    s = label_free_signals(LogitsAreInput(2), [(x, torch.zeros(2, 2, dtype=torch.bool))], [], class_ids=[1, 2])
    assert s["mean_max_prob"] is None and s["class_tv"] is None and s["pixels"]["target"] == 0
    assert s["expected_miou"] is None


def test_students_agree_fully_when_identical_and_the_mean_is_the_prediction(tiny):
    m = build_method(tiny("st-dasegnet"), total_iters=2)
    students = m.net["students"]
    g = torch.Generator().manual_seed(0)
    wins = [(torch.randn(4, 40, 36, generator=g), torch.ones(40, 36, dtype=torch.bool)) for _ in range(2)]
    differ = label_free_signals(m, wins, [], class_ids=[1, 2, 3])
    assert differ["agreement_of"] == "students" and 0 <= differ["agreement"] < 1  # decoders start independently
    # the signals come from the logits the model predicts with (the students' mean)
    with torch.no_grad():
        students.eval()
        p = [torch.softmax(students.predict_logits(torch.nn.functional.pad(x[None], (0, 28, 0, 24), mode="reflect"))
                           [..., :40, :36], 1).max(1).values.mean() for x, _ in wins]
    assert differ["mean_max_prob"] == pytest.approx(float(sum(p) / 2), abs=1e-5)
    students.train()

    # identical students: the same backbone (as built), symmetric DDM weights, the same decoder
    for branch in students.ddm.distinct:
        branch.excite_t.load_state_dict(branch.excite_s.state_dict())
    students.ddm.universal.proj_t.load_state_dict(students.ddm.universal.proj_s.state_dict())
    students.decoder_t.load_state_dict(students.decoder_s.state_dict())
    m.train()
    same = label_free_signals(m, wins, [], class_ids=[1, 2, 3])
    assert same["agreement"] == 1.0
    assert students.training and m.net["teacher_s"].training  # each module's mode restored


def test_feature_regression_compares_teacher_and_student(tiny):
    m = build_method(tiny("feature-regression"), total_iters=2)
    m.set_teacher(m.teacher.state_dict())
    wins = [(torch.randn(4, 32, 32, generator=torch.Generator().manual_seed(1)), torch.ones(32, 32, dtype=torch.bool))]
    assert label_free_signals(m, wins, [], class_ids=[1, 2, 3])["agreement"] == 1.0  # the student starts as a copy
    with torch.no_grad():
        m.student.decode_head.conv_seg.weight.mul_(-1)
    s = label_free_signals(m, wins, [], class_ids=[1, 2, 3])
    assert s["agreement_of"] == "teacher and student" and s["agreement"] < 1
    so = build_method(tiny("source-only"), total_iters=2)
    assert "agreement" not in label_free_signals(so, wins, [], class_ids=[1, 2, 3])


def test_domain_windows_count_every_valid_region_pixel_once(source):
    stats = Normalizer(source.stats())
    valid = sum(int(it.read().valid.sum()) for it in source.items)
    wins = list(domain_windows(source, stats, tile=64, margin=16))
    assert len(wins) == 35  # 443 rows x 293 columns in 64-px cores
    assert sum(int(m.sum()) for _, m in wins) == valid
    for x, m in wins:
        assert x.dtype == torch.float32 and x.shape[0] == 6 and x.shape[1:] == m.shape
        assert abs(float(x[:, m].mean())) < 3  # normalised, not raw reflectances
    few = list(domain_windows(source, stats, tile=64, margin=16, max_windows=8))
    assert len(few) == 8 and 0 < sum(int(m.sum()) for _, m in few) < valid


def test_spearman_hand_example_with_ties():
    # ranks of xs with the tie averaged: 1, 2.5, 2.5, 4; ys: 1, 3, 2, 4 -> rho = 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([1, 2, None, 3], [1, 2, 5, 3]) == pytest.approx(1.0)  # unknown pairs are left out
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1], [2]) is None
