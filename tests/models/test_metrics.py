"""Metrics from a pooled confusion matrix, checked on a hand-made example."""
from __future__ import annotations

import numpy as np
import pytest

from models.metrics import ConfusionMatrix


def test_hand_example_pooled_over_windows():
    cm = ConfusionMatrix(3, ["a", "b", "c"])
    # window 1
    cm.update(np.array([[0, 0, 1], [1, 1, 2]]), np.array([[0, 1, 1], [1, 255, 2]]))
    # window 2: a class-2 pixel predicted 0, one pixel masked out as invalid
    cm.update(np.array([[0, 2]]), np.array([[2, 0]]), valid=np.array([[True, False]]))
    m = cm.compute()
    # reference a: 1 pixel (pred a); b: 3 pixels (a, b, b); c: 2 pixels (c, a)
    assert m["confusion_matrix"]["counts"] == [[1, 0, 0], [1, 2, 0], [1, 0, 1]]
    assert m["per_class"]["a"]["iou"] == pytest.approx(1 / 3)
    assert m["per_class"]["b"]["iou"] == pytest.approx(2 / 3)
    assert m["per_class"]["c"]["iou"] == pytest.approx(1 / 2)
    assert m["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["oa"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"]["f1"] == pytest.approx(2 * 1 / (1 + 3))
    assert m["mf1"] == pytest.approx(np.mean([2 / 4, 4 / 5, 2 / 3]))
    assert m["pixels"] == 6


def test_absent_classes_are_excluded_from_means_and_named():
    cm = ConfusionMatrix(3, ["a", "b", "c"])
    cm.update(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 0]))  # "c" never in the reference; predicted twice
    m = cm.compute()
    assert m["per_class"]["c"]["iou"] is None and m["per_class"]["c"]["present"] is False
    assert m["classes_absent"] == ["c"] and "present in the ground truth" in m["mean_over"]
    assert m["miou"] == pytest.approx((1 / 2 + 1 / 2) / 2)  # false positives of "c" still cost a and b
