"""Low-level image features per pixel and a small Gaussian classifier over them (numpy only).

Features of each band, standardised over the valid pixels: the value, its 3 x 3 and 7 x 7 local
means, its 7 x 7 local standard deviation and its gradient magnitude (Sobel): what a pixel looks
like and how its neighbourhood is built, with no learned weights.

The classifier is quadratic discriminant analysis with each class covariance shrunk towards the
pooled one (``shrink``): closed form, fast on a few hundred thousand pixels, and stable for rare
classes. It is the "low-level" model the annotators' labels are checked against and the image's
own vote in the consensus.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

FEATURES_PER_BAND = 5


def pixel_features(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(H, W, bands x 5) float32 features of a (bands, H, W) image; invalid pixels read 0 before filtering."""
    out = []
    for band in image.astype(np.float64):
        v = band[valid]
        mean, std = (float(v.mean()), float(v.std())) if v.size else (0.0, 1.0)
        x = np.where(valid, (band - mean) / (std or 1.0), 0.0)
        m7 = ndi.uniform_filter(x, 7)
        out += [x, ndi.uniform_filter(x, 3), m7,
                np.sqrt(np.maximum(ndi.uniform_filter(x * x, 7) - m7 * m7, 0.0)),
                np.hypot(ndi.sobel(x, 0), ndi.sobel(x, 1))]
    return np.stack(out, axis=-1).astype(np.float32)


class GaussianClassifier:
    """QDA with shrinkage: class k ~ N(mu_k, (1 - s) Sigma_k + s Sigma_pooled), prior = its share."""

    def __init__(self, num_classes: int, shrink: float = 0.5):
        self.k = num_classes
        self.shrink = shrink

    def fit(self, x: np.ndarray, y: np.ndarray) -> "GaussianClassifier":
        x = x.astype(np.float64)
        d = x.shape[1]
        pooled = np.cov(x.T) + 1e-6 * np.eye(d) if len(x) > 1 else np.eye(d)
        self.mu = np.zeros((self.k, d))
        self.prec = np.zeros((self.k, d, d))
        self.bias = np.full(self.k, -np.inf)  # log prior - log det / 2; -inf: a class never seen
        for c in range(self.k):
            xc = x[y == c]
            if len(xc) < 2:
                continue
            cov = np.cov(xc.T) if len(xc) > d else pooled
            cov = (1 - self.shrink) * cov + self.shrink * pooled + 1e-6 * np.eye(d)
            self.mu[c] = xc.mean(axis=0)
            self.prec[c] = np.linalg.inv(cov)
            self.bias[c] = np.log(len(xc) / len(x)) - 0.5 * np.linalg.slogdet(cov)[1]
        return self

    def log_proba(self, x: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
        """(N, K) log posteriors (-inf for classes never seen in training)."""
        out = np.empty((len(x), self.k))
        for s in range(0, len(x), chunk):
            xs = x[s: s + chunk].astype(np.float64)
            score = np.full((len(xs), self.k), -np.inf)
            for c in np.flatnonzero(np.isfinite(self.bias)):
                dx = xs - self.mu[c]
                score[:, c] = self.bias[c] - 0.5 * np.einsum("ij,jk,ik->i", dx, self.prec[c], dx)
            score -= score.max(axis=1, keepdims=True)
            out[s: s + chunk] = score - np.log(np.exp(score).sum(axis=1, keepdims=True))
        return out


def subsample(mask: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Flat indexes of at most ``limit`` True pixels of ``mask``, spread at random."""
    idx = np.flatnonzero(mask)
    return idx if len(idx) <= limit else np.sort(rng.choice(idx, size=limit, replace=False))
