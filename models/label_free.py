"""Label-free signals of whether adaptation helped: what a model's target predictions say without target labels.

Over unlabelled target windows (normalised as evaluation feeds the model)::

    mean_max_prob           mean over pixels of max_k p_k: how sure the model is
    entropy                 mean of -sum_k p_k ln p_k (nats); entropy_normalised = entropy / ln K, in [0, 1]
    agreement               fraction of pixels where two networks' argmaxes agree: ST-DASegNet's two
                            students (D_S and D_T logits, whose mean is its prediction), feature
                            regression's teacher and student; absent for a single network
    pseudo_coverage         fraction of pixels with max_k p_k >= pseudo_threshold (ST-DASegNet's 0.975);
                            pseudo_coverage_0.9 the same at 0.9
    class_distribution      predicted fraction of each class id, on target and on source windows;
                            class_tv = half the L1 distance between the two (total variation)
    expected_miou           the mIoU the model expects of itself if its probabilities were right: per class k,
                            H_k / (P_k + M_k - H_k), with H_k the sum of p_k over the pixels predicted k
                            (expected hits), P_k their count and M_k the sum of p_k over every pixel (expected
                            members); averaged over the classes it expects on at least 0.1 % of the pixels.
                            Unlike the scalar confidences it weighs every class alike, as mIoU does, so a model
                            that ignores a class scores low

Only the pixels each window marks as counted (valid, inside its core) enter any mean, so nodata never does.
:func:`spearman` is the rank correlation Benchmark A reports between each signal and the true target mIoU.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from models.adaptation.base import AdaptationMethod
from models.adaptation.feature_regression import FeatureRegression
from models.adaptation.st_dasegnet import DualSegmentor
from models.evaluate import pad_to_multiple, spread_context_windows
from models.normalization import Normalizer
from models.segmentor import decode, upsample

#: the scalar signals, in display order (each one the benchmark correlates with the target mIoU)
SIGNALS = ("mean_max_prob", "entropy", "entropy_normalised", "agreement", "pseudo_coverage",
           "pseudo_coverage_0.9", "class_tv", "expected_miou")
#: at most this many windows per domain: enough for stable means, cheap beside training
MAX_WINDOWS = 64
#: ST-DASegNet's pseudo-label confidence threshold
PSEUDO_THRESHOLD = 0.975
#: the second, looser coverage threshold every job reports
LOOSE_THRESHOLD = 0.9
#: expected_miou averages over the classes whose expected share of the target pixels is at least this
EXPECTED_CLASS_SHARE = 0.001

#: (normalised image (C, h, w) float, pixels that count (h, w) bool)
LabelFreeWindow = tuple[Tensor, Tensor]


def domain_windows(domain, normalizer: Normalizer, *, max_windows: int = MAX_WINDOWS, tile: int = 256,
                   margin: int = 32) -> Iterator[LabelFreeWindow]:
    """Evaluation's windows of every scene's region (cores with context), at most ``max_windows`` of
    them spread evenly over the plan, normalised by ``normalizer`` (the model's, for this domain);
    labels are never read."""
    for item, win, core in spread_context_windows(domain, max_windows, tile=tile, margin=margin):
        rw = item.read(win)
        counted = np.zeros_like(rw.valid)
        counted[core] = rw.valid[core]
        if counted.any():
            yield torch.from_numpy(normalizer(rw.data, rw.valid)), torch.from_numpy(counted)


class _Networks:
    """How one model predicts a window: its probabilities, and the two networks whose argmaxes are
    compared for ``agreement`` (None for a single network)."""

    def __init__(self, model: AdaptationMethod | nn.Module):
        self.method = model if isinstance(model, AdaptationMethod) else None
        seg = model.inference_segmentor() if self.method is not None else model
        self.segmentor = seg
        self.teacher = model.teacher if isinstance(model, FeatureRegression) else None
        self.agreement_of = ("students" if isinstance(seg, DualSegmentor)
                             else "teacher and student" if self.teacher is not None else None)
        self.device = next(seg.parameters()).device

    def __enter__(self) -> "_Networks":
        # every module's own mode, restored on exit: methods keep frozen parts in eval while training
        owner = self.method.net if self.method is not None else self.segmentor
        self._modes = [(m, m.training) for m in owner.modules()]
        owner.eval()
        return self

    def __exit__(self, *exc) -> None:
        for m, training in self._modes:
            m.training = training

    @torch.no_grad()
    def logits(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """(1, C, h, w) -> logits (1, K, h, w) of the prediction, and the pair compared for agreement."""
        h, w = x.shape[-2:]
        xp = pad_to_multiple(x)
        seg = self.segmentor
        if isinstance(seg, DualSegmentor):
            # the students' logits separately; their mean is exactly DualSegmentor.predict_logits
            _, _, g_s, g_t = seg.styles(xp)
            a = upsample(decode(seg.decoder_s, g_s), xp.shape[-2:])[..., :h, :w]
            b = upsample(decode(seg.decoder_t, g_t), xp.shape[-2:])[..., :h, :w]
            return (a + b) / 2, (a, b)
        out = seg.predict_logits(xp)[..., :h, :w]
        if self.teacher is not None:
            return out, (self.teacher.predict_logits(xp)[..., :h, :w], out)
        return out, None


def _windows_on(windows: Iterable[LabelFreeWindow], device: torch.device):
    for x, counted in windows:
        x = torch.as_tensor(x, dtype=torch.float32)
        yield (x if x.dim() == 4 else x[None]).to(device), torch.as_tensor(counted, dtype=torch.bool).to(device)


def _fractions(counts: np.ndarray, class_ids: Sequence[int]) -> dict[str, float] | None:
    total = counts.sum()
    if total == 0:
        return None
    return {str(int(c)): float(n / total) for c, n in zip(class_ids, counts)}


@dataclass(frozen=True)
class PredictedClasses:
    """A model's predicted pixels per class (train index) over some windows: the source side of
    ``class_distribution``, computed once where several target regions are compared with one source."""

    counts: np.ndarray
    windows: int


def predicted_classes(method_or_segmentor: AdaptationMethod | nn.Module, windows: Iterable[LabelFreeWindow],
                      k: int) -> PredictedClasses:
    """What the model predicts on the counted pixels of source ``windows``, the source as the method saw it in
    training (per-domain batch-norm statistics: the source's)."""
    counts, n = np.zeros(k, np.int64), 0
    with _Networks(method_or_segmentor) as nets, \
            nets.method.source_statistics() if nets.method is not None else contextlib.nullcontext():
        for x, counted in _windows_on(windows, nets.device):
            ids = nets.logits(x)[0].argmax(dim=1)[0][counted.reshape(x.shape[-2:])]
            n += 1
            counts += torch.bincount(ids, minlength=k).cpu().numpy()
    return PredictedClasses(counts, n)


def label_free_signals(
    method_or_segmentor: AdaptationMethod | nn.Module,
    target_windows: Iterable[LabelFreeWindow],
    source: Iterable[LabelFreeWindow] | PredictedClasses,
    *,
    class_ids: Sequence[int],
    pseudo_threshold: float = PSEUDO_THRESHOLD,
) -> dict:
    """The signals over the counted pixels of ``target_windows``; the class distribution also over ``source``:
    source windows, or what :func:`predicted_classes` found on them for this model. ``class_ids[k]`` is the id
    of train index k. Signals are None without pixels."""
    k = len(class_ids)
    thresholds = {"pseudo_coverage": float(pseudo_threshold), "pseudo_coverage_0.9": LOOSE_THRESHOLD}
    n = 0
    sums = {"max_prob": 0.0, "entropy": 0.0, "agree": 0, **{name: 0 for name in thresholds}}
    target_counts = np.zeros(k, np.int64)
    # per class: sum of p_k where k is predicted (expected hits), and over every pixel (expected members)
    expected_hits, expected_members = np.zeros(k), np.zeros(k)
    target_windows_seen = 0
    with _Networks(method_or_segmentor) as nets:
        for x, counted in _windows_on(target_windows, nets.device):
            logits, pair = nets.logits(x)
            log_p = logits.float().log_softmax(dim=1)[0]
            m = counted.reshape(log_p.shape[-2:])
            p_max, ids = log_p.exp().max(dim=0)
            p_max, ids = p_max[m], ids[m]
            n += int(m.sum())
            target_windows_seen += 1
            sums["max_prob"] += float(p_max.double().sum())
            sums["entropy"] += float((-(log_p.exp() * log_p).sum(dim=0))[m].double().sum())
            for name, t in thresholds.items():
                sums[name] += int((p_max >= t).sum())
            target_counts += torch.bincount(ids, minlength=k).cpu().numpy()
            prob = log_p.exp()[:, m].double()  # (K, counted pixels)
            expected_hits += torch.zeros(k, dtype=torch.float64, device=prob.device).index_add_(
                0, ids, prob.gather(0, ids[None])[0]).cpu().numpy()
            expected_members += prob.sum(dim=1).cpu().numpy()
            if pair is not None:
                sums["agree"] += int((pair[0].argmax(dim=1)[0] == pair[1].argmax(dim=1)[0])[m].sum())
    src = source if isinstance(source, PredictedClasses) else predicted_classes(method_or_segmentor, source, k)
    source_counts = src.counts
    windows = {"target": target_windows_seen, "source": src.windows}

    def mean(total):
        return float(total / n) if n else None

    out: dict = {
        "mean_max_prob": mean(sums["max_prob"]),
        "entropy": mean(sums["entropy"]),
        "entropy_normalised": (mean(sums["entropy"]) / math.log(k) if n and k > 1 else None),
    }
    if nets.agreement_of is not None:
        out["agreement"] = mean(sums["agree"])
        out["agreement_of"] = nets.agreement_of
    out.update({name: mean(sums[name]) for name in thresholds})
    dist = {"target": _fractions(target_counts, class_ids), "source": _fractions(source_counts, class_ids)}
    out["class_tv"] = (0.5 * sum(abs(dist["target"][c] - dist["source"][c]) for c in dist["target"])
                       if dist["target"] and dist["source"] else None)
    out["class_distribution"] = dist
    out["expected_miou"] = expected_miou(expected_hits, target_counts, expected_members)
    out["pseudo_threshold"] = float(pseudo_threshold)
    out["pixels"] = {"target": n, "source": int(source_counts.sum())}
    out["windows"] = windows
    return out


def expected_miou(hits: np.ndarray, predicted: np.ndarray, members: np.ndarray) -> float | None:
    """The mIoU a model's probabilities promise: per class hits / (predicted + members - hits), where ``hits``
    is the summed p_k over the pixels predicted k, ``predicted`` their count and ``members`` the summed p_k over
    every pixel; over the classes with ``members`` at least :data:`EXPECTED_CLASS_SHARE` of the pixels."""
    n = float(predicted.sum())
    if n <= 0:
        return None
    present = members >= EXPECTED_CLASS_SHARE * n
    union = predicted + members - hits
    return float(np.mean(hits[present] / union[present])) if present.any() else None


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties get their average rank) over the pairs where both are known;
    None with fewer than two such pairs or a constant side, where no ranking exists."""
    from scipy.stats import spearmanr

    pairs = [(float(x), float(y)) for x, y in zip(xs, ys) if x is not None and y is not None]
    if len(pairs) < 2 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return None
    rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return None if math.isnan(rho) else float(rho)
