"""Consensus labels from several annotators by graph cuts (after Mahapatra et al.'s consensus segmentation).

    consensus_labels(stack, image, valid, options) -> ConsensusResult
      features   per-pixel low-level features of the image (models.consensus.image_features)
      scores     SC_j, annotator j's self-consistency: a Gaussian classifier on the features, trained on
                 j's own labels in one half of a checkerboard of 32 px blocks and tested on j's labels
                 in the other half (both ways); SC_j = share of j's held-out labels it reproduces.
                 Labels that follow the image's own structure are learnable from it; labels drawn
                 carelessly or shifted off the objects are not. Weight w_j = SC_j / max SC.
      fill       j's missing annotations predicted from its own nearest label (local consistency),
                 trusted as far as such predictions agree with the other annotators' weighted vote:
                 per distance band b (1, 2, 3-4, 5-8, > 8 px) a_jb = agreement rate, confidence
                 c_jb = max(0, 2 a_jb - 1) (0 where the guess is no better than a coin toss); the fill
                 votes with weight w_j c_jb. Semi-supervised: nothing but the annotations is known.
      image      a Gaussian classifier trained on the pixels where every present annotator (at least
                 two) agrees: P_img(k | features), the image's own vote
      MRF        E(f) = sum_p U_p(f_p) + sum_{p~q} w_pq [f_p != f_q],
                 U_p(k) = max_k' V_p(k') - V_p(k) - alpha * max(ln P_img(k | p), ln 0.01),
                 V_p(k) = sum_j w_j [A_j(p) = k] + sum_j w_j c_j(p) [fill_j(p) = k]  (annotators' votes),
                 w_pq = smoothness * exp(-beta |z_p - z_q|^2), beta = 1 / (2 mean |z_p - z_q|^2) over the
                 image's 4-neighbour pairs (z: standardised band values): a second-order, contrast-
                 sensitive Potts prior, minimised by alpha-expansion on graph cuts (models.consensus.graph_cut)
      outputs    labels (train ids), the disagreement map 1 - V^present_p(f_p) / sum_{j present} w_j,
                 per annotator: SC, weight, labelled share, fill confidence, agreement R_j with the result
                 (the share of j's labels the consensus keeps: STAPLE's estimate of j's precision), and
                 the score SC_j x R_j that ranks the annotators. SC alone cannot tell labels scattered at
                 random from boundaries shifted by a few pixels: at a boundary the low-level features
                 are mixed, so neither is learnable there (NC: 0.610 careless vs 0.619 dilated, though
                 their precision is 0.92 vs 0.77); the consensus, built from every annotator and the
                 image, can (agreement 0.906 vs 0.792).

The whole image is held in memory (features: 4 x 5 x bands bytes per pixel; 560 bytes per pixel in all with
3 bands, 4 classes and 4 annotators): meant for label rasters of up to some tens of megapixels, as annotation
campaigns produce. models.consensus.run refuses, before reading, one that would not fit in the free memory.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage as ndi

from core.errors import ConfigError, LabelValuesError
from core.jobspec import IGNORE_INDEX
from core.raster.annotations import AnnotationStack
from models.consensus.graph_cut import alpha_expansion
from models.consensus.image_features import FEATURES_PER_BAND, GaussianClassifier, pixel_features, subsample

#: upper edges (pixels) of the distance bands the fill confidence is measured in
FILL_BANDS = (1.5, 2.5, 4.5, 8.5, np.inf)
#: side of the checkerboard blocks that split pixels into the two cross-validation folds
FOLD_BLOCK = 32
#: the image's vote never counts more than this probability's log says
MIN_IMAGE_PROBABILITY = 0.01


@dataclass
class ConsensusOptions:
    smoothness: float = 0.25  # Potts weight between similar neighbours, in votes of the best annotator
    image_weight: float = 0.05  # alpha: weight of ln P_img, in votes per nat
    shrink: float = 0.5  # covariance shrinkage of the Gaussian classifiers
    max_train: int = 100_000  # pixels each classifier is fitted on (a random subset when there are more)
    cycles: int = 5  # alpha-expansion cycles at most
    seed: int = 0

    def validate(self) -> "ConsensusOptions":
        for name, lo, hi in (("smoothness", 0.0, 100.0), ("image_weight", 0.0, 100.0), ("shrink", 0.0, 1.0)):
            v = getattr(self, name)
            if not lo <= float(v) <= hi:
                raise ConfigError(f"{name} must be in {lo}..{hi}, got {v}", field=name)
        if not 1 <= int(self.cycles) <= 100:
            raise ConfigError(f"cycles must be 1..100, got {self.cycles}", field="cycles")
        if int(self.max_train) < 100:
            raise ConfigError(f"max_train must be at least 100, got {self.max_train}", field="max_train")
        return self


@dataclass
class AnnotatorScore:
    name: str
    score: float  # self_consistency x agreement: what ranks the annotators
    self_consistency: float  # SC: held-out agreement of the image-feature classifier with this annotator's labels
    weight: float  # SC / max SC: what disagreeing with this annotator costs
    labelled_fraction: float  # share of the annotated pixels (by anyone) this annotator labelled
    fill_confidence: list[float]  # per FILL_BANDS band: trust in its predicted missing labels
    filled_fraction: float  # share of the annotated pixels where its predicted label votes (confidence > 0)
    agreement: float | None = None  # share of its labelled pixels where the consensus has its label


@dataclass
class ConsensusResult:
    labels: np.ndarray  # (H, W) train ids, IGNORE_INDEX where no label
    disagreement: np.ndarray  # (H, W) float32 in [0, 1]; -1 where no annotator labelled
    annotators: list[AnnotatorScore]
    energy: dict
    options: dict = field(default_factory=dict)

    def report(self, class_ids: list[int]) -> dict:
        lab = self.labels[self.labels != IGNORE_INDEX]
        counts = np.bincount(lab, minlength=len(class_ids))
        order = sorted(self.annotators, key=lambda a: -a.score)
        return {"annotators": {a.name: asdict(a) for a in self.annotators},
                "ranking": [a.name for a in order],
                "class_pixels": {str(c): int(n) for c, n in zip(class_ids, counts)},
                "mean_disagreement": float(self.disagreement[self.disagreement >= 0].mean())
                if (self.disagreement >= 0).any() else None,
                "energy": self.energy, "options": self.options}


def _folds(h: int, w: int) -> np.ndarray:
    r, c = np.mgrid[0:h, 0:w]
    return ((r // FOLD_BLOCK + c // FOLD_BLOCK) % 2).astype(bool)


def self_consistency(x: np.ndarray, labels: np.ndarray, mask: np.ndarray, k: int, opts: ConsensusOptions,
                     rng: np.random.Generator) -> float:
    """Held-out agreement of a feature classifier trained on ``labels`` (flat) where ``mask`` (flat)."""
    folds = _folds(*mask.shape).ravel()
    m = mask.ravel()
    y = labels.ravel().astype(np.intp)
    hits = total = 0
    for f in (False, True):
        tr = subsample(m & (folds == f), opts.max_train, rng)
        te = subsample(m & (folds != f), opts.max_train, rng)
        if len(tr) < 2 or len(te) == 0:
            continue
        clf = GaussianClassifier(k, opts.shrink).fit(x[tr], y[tr])
        hits += int((clf.log_proba(x[te]).argmax(axis=1) == y[te]).sum())
        total += len(te)
    return hits / total if total else 0.0


def _votes(labels: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """(K, H, W) summed weights of the annotators naming each class (IGNORE_INDEX names none)."""
    v = np.zeros((k, *labels.shape[1:]))
    for a, w in zip(labels, weights):
        for c in range(k):
            v[c] += w * (a == c)
    return v


def _fill(a: np.ndarray, others_best: np.ndarray, others_any: np.ndarray, valid: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(predicted labels, confidence per pixel, confidence per band) of one annotator's missing pixels."""
    missing = a == IGNORE_INDEX
    dist, (ir, ic) = ndi.distance_transform_edt(missing, return_indices=True)
    guess = a[ir, ic]
    conf = np.zeros(a.shape)
    per_band = []
    lo = 0.5
    for hi in FILL_BANDS:
        band = missing & valid & (dist > lo) & (dist <= hi)
        judged = band & others_any
        agree = float((guess[judged] == others_best[judged]).mean()) if judged.any() else 0.0
        c = max(0.0, 2.0 * agree - 1.0)
        conf[band] = c
        per_band.append(round(c, 4))
        lo = hi
    return guess, conf, per_band


def _contrast_weights(z: np.ndarray, valid: np.ndarray, smoothness: float) -> tuple[np.ndarray, np.ndarray]:
    """Potts weights to the right and downwards neighbour: smoothness x exp(-beta |dz|^2); where the image
    has no data on either side, the weight of an average contrast (beta |dz|^2 = 1/2)."""
    dr = ((z[:, :, 1:] - z[:, :, :-1]) ** 2).sum(axis=0)
    dd = ((z[:, 1:, :] - z[:, :-1, :]) ** 2).sum(axis=0)
    vr = valid[:, 1:] & valid[:, :-1]
    vd = valid[1:, :] & valid[:-1, :]
    both = np.concatenate([dr[vr], dd[vd]])
    beta = 1.0 / (2.0 * both.mean()) if both.size and both.mean() > 0 else 0.0
    w_right = np.zeros(valid.shape)
    w_down = np.zeros(valid.shape)
    blind = smoothness * np.exp(-0.5)
    w_right[:, :-1] = np.where(vr, smoothness * np.exp(-beta * dr), blind)
    w_down[:-1, :] = np.where(vd, smoothness * np.exp(-beta * dd), blind)
    return w_right, w_down


def consensus_labels(stack: AnnotationStack, image: np.ndarray, valid: np.ndarray,
                     options: ConsensusOptions | None = None,
                     progress: Callable[[str], None] | None = None) -> ConsensusResult:
    """The consensus of ``stack`` (annotations on the image grid) over ``image`` (bands, H, W) where ``valid``."""
    opts = (options or ConsensusOptions()).validate()
    say = progress or (lambda _msg: None)
    rng = np.random.default_rng(opts.seed)
    labels = stack.labels
    k = len(stack.classes)
    if image.shape[1:] != labels.shape[1:]:
        raise LabelValuesError(f"annotations {labels.shape[1:]} and image {image.shape[1:]} are not on one grid")
    # labels count wherever they are, even where the image has no data; the image's terms only where it has
    present = labels != IGNORE_INDEX
    annotated = present.any(axis=0)
    if not (present & valid[None]).any():
        raise LabelValuesError("no annotation labels a valid pixel of the image", field="annotations")

    say("features")
    feats = pixel_features(image, valid)
    x = feats.reshape(-1, feats.shape[-1])

    say("self-consistency scores")
    sc = np.array([self_consistency(x, labels[j], present[j] & valid, k, opts, rng) for j in range(len(labels))])
    weights = sc / sc.max() if sc.max() > 0 else np.ones(len(sc))
    v_present = _votes(np.where(present, labels, IGNORE_INDEX), weights, k)

    say("missing annotations")
    votes = v_present.copy()
    per_band, filled = [], []
    for j, a in enumerate(labels):
        if not present[j].any() or present[j][annotated].all():
            per_band.append([1.0] * len(FILL_BANDS))
            filled.append(0.0)
            continue
        others = v_present.copy()
        for c in range(k):  # the others' votes: this annotator's own taken out
            others[c] -= weights[j] * (present[j] & (a == c))
        others_any = others.max(axis=0) > 0  # a missing annotation: where someone else annotated
        guess, conf, bands = _fill(a, others.argmax(axis=0), others_any, others_any)
        use = (conf > 0) & ~present[j] & others_any
        for c in range(k):
            votes[c] += weights[j] * conf * (use & (guess == c))
        per_band.append(bands)
        filled.append(float(use.sum() / max(annotated.sum(), 1)))

    say("image classifier")
    all_agree = present.sum(axis=0) >= 2
    first = np.where(present, labels, 0).max(axis=0)
    for j in range(len(labels)):
        all_agree &= ~present[j] | (labels[j] == first)
    idx = subsample(all_agree & valid, opts.max_train, rng)
    log_p = np.zeros((k, *valid.shape))
    if opts.image_weight > 0 and len(idx) > 1:
        clf = GaussianClassifier(k, opts.shrink).fit(x[idx], first.ravel()[idx].astype(np.intp))
        lp = clf.log_proba(x).T.reshape(k, *valid.shape)
        log_p = np.where(valid, np.maximum(lp, np.log(MIN_IMAGE_PROBABILITY)), 0.0)

    say("graph cuts")
    domain = votes.sum(axis=0) > 0
    unary = votes.max(axis=0)[None] - votes - opts.image_weight * log_p
    unary[:, ~domain] = 0.0
    z = feats[..., ::FEATURES_PER_BAND].transpose(2, 0, 1).astype(np.float64)  # the standardised bands
    w_right, w_down = _contrast_weights(z, valid, opts.smoothness)
    candidates = [c for c in range(k) if (votes[c] > 0).any()]
    f, energy = alpha_expansion(unary, w_right, w_down, movable=domain, cycles=opts.cycles, candidates=candidates)

    out = np.where(domain, f, IGNORE_INDEX).astype(np.uint8)
    total_present = (present * weights[:, None, None]).sum(axis=0)
    won = np.take_along_axis(v_present, np.clip(f, 0, k - 1)[None].astype(np.intp), axis=0)[0]
    disagreement = np.where(total_present > 0, 1.0 - won / np.maximum(total_present, 1e-12), -1.0).astype(np.float32)
    n_annotated = max(int(annotated.sum()), 1)
    scores = []
    for j, name in enumerate(stack.names):
        pj = present[j]
        agreement = float((out[pj] == labels[j][pj]).mean()) if pj.any() else None
        scores.append(AnnotatorScore(
            name=name, score=round(float(sc[j]) * (agreement or 0.0), 4), self_consistency=round(float(sc[j]), 4),
            weight=round(float(weights[j]), 4),
            labelled_fraction=round(float(pj.sum() / n_annotated), 4), fill_confidence=per_band[j],
            filled_fraction=round(filled[j], 4), agreement=None if agreement is None else round(agreement, 4)))
    return ConsensusResult(out, disagreement, scores, {k_: (round(v, 4) if isinstance(v, float) else v)
                                                       for k_, v in energy.items()}, asdict(opts))
