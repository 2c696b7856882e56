"""Segmentation metrics from one confusion matrix pooled over the whole evaluation set.

Per-class IoU, precision, recall and F1; mIoU and mF1 over the classes PRESENT in the ground
truth (a class with no reference pixels has an undefined IoU and is left out of the mean, and the
output says so); overall accuracy. Torch-free (numpy), so any layer may use it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from core.jobspec import IGNORE_INDEX

MEAN_OVER = "classes present in the ground truth"


class ConfusionMatrix:
    """Counts (reference train id, predicted train id), accumulated window by window."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None):
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, label: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add pixels where ``label`` is a class (not ignore) and ``valid`` (if given) is True."""
        pred = np.asarray(pred).ravel()
        label = np.asarray(label).ravel()
        keep = label != IGNORE_INDEX
        keep &= label < self.num_classes
        if valid is not None:
            keep &= np.asarray(valid, dtype=bool).ravel()
        k = self.num_classes
        idx = label[keep].astype(np.int64) * k + pred[keep].astype(np.int64)
        self.matrix += np.bincount(idx, minlength=k * k).reshape(k, k)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.matrix += other.matrix

    def compute(self) -> dict:
        return metrics_from_confusion(self.matrix, self.class_names)


def metrics_from_confusion(matrix: np.ndarray, class_names: Sequence[str]) -> dict:
    """Every metric as plain JSON-able values; NaN-free (undefined values are ``None``)."""
    m = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(m)
    ref = m.sum(axis=1)  # reference pixels per class
    pred = m.sum(axis=0)
    total = m.sum()
    present = ref > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (ref + pred - tp)
        precision = tp / pred
        recall = tp / ref
        f1 = 2 * tp / (ref + pred)
    iou[~present] = np.nan
    f1[~present] = np.nan
    recall[~present] = np.nan

    def clean(a: np.ndarray) -> list:
        return [None if not np.isfinite(v) else float(v) for v in a]

    per_class = {
        name: {"iou": clean(iou)[i], "f1": clean(f1)[i], "precision": clean(precision)[i],
               "recall": clean(recall)[i], "pixels": int(ref[i]), "present": bool(present[i])}
        for i, name in enumerate(class_names)
    }
    return {
        "miou": float(np.nanmean(iou)) if present.any() else None,
        "mf1": float(np.nanmean(f1)) if present.any() else None,
        "oa": float(tp.sum() / total) if total > 0 else None,
        "mean_over": MEAN_OVER,
        "classes_present": [n for n, p in zip(class_names, present) if p],
        "classes_absent": [n for n, p in zip(class_names, present) if not p],
        "pixels": int(total),
        "per_class": per_class,
        "confusion_matrix": {"rows": "reference", "columns": "prediction", "classes": list(class_names),
                             "counts": m.astype(np.int64).tolist()},
    }


def format_metrics(metrics: dict) -> str:
    """A small text table for the terminal."""
    lines = [f"{'class':<20}{'IoU':>8}{'F1':>8}{'pixels':>12}"]
    for name, c in metrics["per_class"].items():
        iou = "-" if c["iou"] is None else f"{c['iou']:.4f}"
        f1 = "-" if c["f1"] is None else f"{c['f1']:.4f}"
        lines.append(f"{name:<20}{iou:>8}{f1:>8}{c['pixels']:>12}")

    def fmt(v):
        return "-" if v is None else f"{v:.4f}"

    lines.append(f"mIoU {fmt(metrics['miou'])}  mF1 {fmt(metrics['mf1'])}  OA {fmt(metrics['oa'])}  "
                 f"(means over {metrics['mean_over']}: {len(metrics['classes_present'])} of "
                 f"{len(metrics['per_class'])}; pixels {metrics['pixels']})")
    return "\n".join(lines)
