"""Which target windows to label next: ranked by the model's uncertainty, spread over the scene and its classes.

    suggest_windows(bundle, image, count, *, window=None, region=None, ...) -> SuggestionSet
      1. predict the region window by window (core.raster.prediction_windows' WindowPlan and hann
         StreamingBlender, as predict_raster does), with one extra channel beside the K class
         probabilities: the students' disagreement (ST-DASegNet bundles; absent for one network)
      2. per pixel: entropy H = -sum_k p_k ln p_k / ln K (in [0, 1]), disagreement
         D = 1/2 sum_k |p^S_k - p^T_k| (total variation between the two students' softmaxes, in [0, 1]),
         predicted class argmax_k p_k; summed into cells of window/4 pixels (memory follows the cell
         count, never the raster's area)
      3. candidates: every window of 4 x 4 cells (a stride of window/4), with at least ``min_valid`` of
         its pixels valid (and inside the AOI); for candidate c over its valid pixels:
             u_c    = mean H            (one network)   or   (mean H + mean D) / 2   (two students)
             base_c = u_c x valid_fraction_c           (uncertainty per labelled pixel of the window)
             h_c    = predicted-class histogram (fractions)
      4. greedy choice, ``count`` times: pick the candidate with the largest
             gain_c = base_c x (1 - diversity x max_{s chosen} sum_k min(h_c[k], h_s[k]))
         (histogram intersection with the most similar window chosen so far: windows whose predicted
         class mix was already chosen are worth less), then drop every candidate that overlaps it.
         Rank 1 is the first pick; gains never increase with rank.

Each :class:`Suggestion` has its pixel window in the image, its polygon in the image's CRS, and the
score components. ``SuggestionSet.features()`` are the polygons in the image's CRS (core.raster.vector_write
writes them as a GeoPackage), ``to_geojson()`` the same in WGS84 for web maps. Fewer than ``count`` come back when no more
non-overlapping candidates fit in the region.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window

from core.errors import BandCountMismatchError, ConfigError, EmptyRegionError
from core.raster.prediction_windows import StreamingBlender, WindowPlan, aoi_mask, resolve_region
from core.raster.scene import Scene
from core.raster.stats import compute_stats
from models.adaptation.st_dasegnet import DualSegmentor
from models.evaluate import pad_to_multiple
from models.inference.windowed import PredictionCancelled
from models.segmentor import decode, upsample

#: candidate windows start every window / CELLS_PER_SIDE pixels; statistics are kept per such cell
CELLS_PER_SIDE = 4
#: sides tried for the default window, largest first
AUTO_SIDES = (256, 128, 64, 32)
#: the default window: the largest AUTO_SIDES side whose ``count`` windows take at most this share of the region
AUTO_SHARE = 0.25


@dataclass
class Suggestion:
    """One window to label: rank 1 is the most useful."""

    rank: int
    window: Window  # pixels of the image (not of the region)
    polygon: dict  # GeoJSON Polygon in the image's CRS (pixel coordinates when it has none)
    score: float  # gain when chosen: uncertainty x valid fraction x (1 - diversity x similarity)
    uncertainty: float  # mean entropy, or the mean of entropy and disagreement (two students)
    entropy: float  # mean normalised entropy over the window's valid pixels, in [0, 1]
    disagreement: float | None  # mean total variation between the two students, in [0, 1]; None: one network
    similarity: float  # histogram intersection with the most similar window ranked above it (0 for rank 1)
    valid_fraction: float
    class_mix: dict[int, float]  # predicted class id -> fraction of the window's valid pixels

    def properties(self) -> dict:
        """Flat attributes for a vector layer (class mix as JSON text, as GeoPackage fields need)."""
        import json

        w = self.window
        return {
            "rank": self.rank, "score": self.score, "uncertainty": self.uncertainty, "entropy": self.entropy,
            "disagreement": self.disagreement, "similarity": self.similarity,
            "valid_fraction": self.valid_fraction,
            "class_mix": json.dumps({str(k): round(v, 4) for k, v in self.class_mix.items()}),
            "dominant_class": max(self.class_mix, key=self.class_mix.get) if self.class_mix else None,
            "col_off": int(w.col_off), "row_off": int(w.row_off), "width": int(w.width), "height": int(w.height),
        }


@dataclass
class SuggestionSet:
    """The ranked suggestions and how they were made."""

    suggestions: list[Suggestion]
    crs: Any  # rasterio CRS of the image, or None
    window: int  # side of each suggested window in pixels
    candidates: int  # candidate windows considered (enough valid pixels)
    two_networks: bool  # whether disagreement entered the uncertainty
    options: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.suggestions)

    def features(self) -> list[tuple[dict, dict]]:
        """(polygon in the image's CRS, properties) per suggestion, by rank: what the GeoPackage holds."""
        return [(s.polygon, s.properties()) for s in self.suggestions]

    def to_geojson(self) -> dict:
        """A FeatureCollection in WGS84 longitude/latitude (RFC 7946), for web maps; pixel coordinates when the
        image has no CRS."""
        from rasterio.warp import transform_geom

        feats = []
        for geom, props in self.features():
            if self.crs is not None:
                geom = transform_geom(self.crs, "EPSG:4326", geom)
            feats.append({"type": "Feature", "geometry": geom, "properties": props})
        return {"type": "FeatureCollection", "features": feats}

    def summary(self) -> dict:
        return {"count": len(self), "window": self.window, "candidates": self.candidates,
                "two_networks": self.two_networks, "options": self.options,
                "suggestions": [{**asdict(s), "window": [int(s.window.col_off), int(s.window.row_off),
                                                          int(s.window.width), int(s.window.height)]}
                                for s in self.suggestions]}


# the model's per-pixel outputs ----------------------------------------------------------------------
def _network_outputs(segmentor: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(probabilities (N, K, h, w), disagreement (N, h, w) or None) of normalised windows.

    ST-DASegNet: the prediction is the softmax of the mean of both decoders' logits (what
    DualSegmentor.predict_logits returns), the disagreement the total variation between each
    decoder's own softmax.
    """
    h, w = x.shape[-2:]
    xp = pad_to_multiple(x)
    if isinstance(segmentor, DualSegmentor):
        _, _, g_s, g_t = segmentor.styles(xp)
        a = upsample(decode(segmentor.decoder_s, g_s), xp.shape[-2:])[..., :h, :w].float()
        b = upsample(decode(segmentor.decoder_t, g_t), xp.shape[-2:])[..., :h, :w].float()
        tv = 0.5 * (a.softmax(dim=1) - b.softmax(dim=1)).abs().sum(dim=1)
        return ((a + b) / 2).softmax(dim=1), tv
    return segmentor.predict_logits(xp)[..., :h, :w].float().softmax(dim=1), None


class _CellStats:
    """Per-cell sums over valid pixels: entropy, disagreement, pixel count, predicted-class counts."""

    def __init__(self, rows: int, cols: int, cell: int, k: int):
        self.rows, self.cols, self.cell, self.k = rows, cols, cell, k
        n = rows * cols
        self.entropy = np.zeros(n)
        self.disagreement = np.zeros(n)
        self.count = np.zeros(n)
        self.classes = np.zeros((n, k))

    def add(self, win: Window, probs: np.ndarray, valid: np.ndarray, two: bool) -> None:
        """A finished piece (region pixels): probabilities (K [+1 disagreement], h, w) and its valid mask."""
        r = (int(win.row_off) + np.arange(valid.shape[0])) // self.cell
        c = (int(win.col_off) + np.arange(valid.shape[1])) // self.cell
        keep = valid & (r < self.rows)[:, None] & (c < self.cols)[None, :]
        if not keep.any():
            return
        idx = (r[:, None] * self.cols + c[None, :])[keep]
        p = probs[: self.k][:, keep].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=0) / (math.log(self.k) if self.k > 1 else 1.0)
        n = self.rows * self.cols
        self.entropy += np.bincount(idx, weights=ent, minlength=n)
        if two:
            self.disagreement += np.bincount(idx, weights=probs[self.k][keep].astype(np.float64), minlength=n)
        self.count += np.bincount(idx, minlength=n)
        cls = p.argmax(axis=0)
        np.add.at(self.classes, (idx, cls), 1.0)

    def window_sums(self, a: np.ndarray, side: int) -> np.ndarray:
        """Sums of ``a`` (cells, ...) over every side x side block of cells: (rows-side+1, cols-side+1, ...)."""
        g = a.reshape(self.rows, self.cols, *a.shape[1:])
        s = np.zeros((self.rows + 1, self.cols + 1, *a.shape[1:]))
        s[1:, 1:] = g.cumsum(axis=0).cumsum(axis=1)
        return s[side:, side:] - s[:-side, side:] - s[side:, :-side] + s[:-side, :-side]


# choosing windows ----------------------------------------------------------------------------------
def auto_window(count: int, region_pixels: int, shortest_side: int) -> int:
    """The default window: the largest of AUTO_SIDES whose ``count`` windows cover at most AUTO_SHARE
    of the region (and that fits in it); the smallest side otherwise."""
    for side in AUTO_SIDES:
        if side <= shortest_side and count * side * side <= AUTO_SHARE * region_pixels:
            return side
    return AUTO_SIDES[-1]


def select_windows(base: np.ndarray, hist: np.ndarray, available: np.ndarray, count: int, span: int,
                   diversity: float) -> list[tuple[int, int, float, float]]:
    """Greedy choice over a grid of candidates: (i, j, gain, similarity) per pick, best first.

    ``base`` (R, C): uncertainty x valid fraction; ``hist`` (R, C, K): predicted-class fractions;
    ``available`` (R, C): candidates that may be chosen; candidates (i, j) and (i', j') overlap when
    |i - i'| < span and |j - j'| < span. gain = base x (1 - diversity x max similarity to those chosen).
    """
    available = available.copy()
    max_sim = np.zeros(base.shape)
    picks = []
    for _ in range(count):
        if not available.any():
            break
        gain = np.where(available, base * (1.0 - diversity * max_sim), -np.inf)
        i, j = np.unravel_index(int(np.argmax(gain)), gain.shape)
        picks.append((int(i), int(j), float(gain[i, j]), float(max_sim[i, j])))
        available[max(0, i - span + 1): i + span, max(0, j - span + 1): j + span] = False
        max_sim = np.maximum(max_sim, np.minimum(hist, hist[i, j]).sum(axis=-1))
    return picks


def _polygon(transform, win: Window) -> dict:
    c0, r0 = int(win.col_off), int(win.row_off)
    c1, r1 = c0 + int(win.width), r0 + int(win.height)
    ring = [transform @ (c, r) for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0))]
    return {"type": "Polygon", "coordinates": [[(float(x), float(y)) for x, y in ring]]}


def _check_options(count: int, window: int | None, diversity: float, min_valid: float) -> None:
    if not 1 <= int(count) <= 100_000:
        raise ConfigError(f"count must be 1..100000, got {count}", field="count")
    if window is not None and (int(window) < 16 or int(window) % CELLS_PER_SIDE):
        raise ConfigError(f"window must be at least 16 pixels and a multiple of {CELLS_PER_SIDE}, got {window}",
                          field="window")
    if not 0.0 <= float(diversity) <= 1.0:
        raise ConfigError(f"diversity must be in 0..1, got {diversity}", field="diversity")
    if not 0.0 < float(min_valid) <= 1.0:
        raise ConfigError(f"min_valid must be in (0, 1], got {min_valid}", field="min_valid")


def suggest_windows(
    bundle: Any,
    image: Any,
    count: int,
    *,
    window: int | None = None,
    region: Any = None,
    stats: Any = None,
    diversity: float = 0.5,
    min_valid: float = 0.5,
    predict_window: int = 256,
    overlap: int = 32,
    nodata: float | None = None,
    device: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SuggestionSet:
    """Rank ``count`` non-overlapping windows of ``image`` by how much labelling them should teach the model.

    ``bundle``: a bundle path (or job output folder) or a loaded models.bundle.Bundle. ``image``: a raster
    path, a list of single-band files stacked in order, or a SceneSpec. ``window``: side of the suggested
    windows (a multiple of 4; default :func:`auto_window`). ``region``: as predict's (a Window, a
    (col, row, width, height) tuple, a RegionSpec or a GeoJSON AOI). ``stats``: the normalisation
    (None/auto: the bundle's default; target, source, input). ``diversity`` in [0, 1]: weight of the
    class-mix penalty. ``min_valid``: least valid share of a candidate's pixels. ``predict_window`` and
    ``overlap``: the prediction's own windows. ``progress(done, total)`` counts prediction windows;
    ``should_stop()`` returning True raises models.inference.PredictionCancelled.
    """
    _check_options(count, window, diversity, min_valid)
    if isinstance(bundle, (str, os.PathLike)):
        from models.bundle import load_bundle

        bundle = load_bundle(bundle)
    spec = list(image.paths) if hasattr(image, "paths") else image
    if isinstance(spec, (list, tuple)):
        spec = [Path(p) for p in spec]
    seg = bundle.segmentor.eval()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    seg.to(dev)
    two = isinstance(seg, DualSegmentor)
    k = bundle.num_classes
    with Scene.open(spec, nodata=nodata) as scene:
        if scene.count != bundle.band_count:
            raise BandCountMismatchError(
                f"{scene.name} has {scene.count} bands but the model was trained on {bundle.band_count}")
        reg, geoms = resolve_region(scene.grid, region)
        H, W = int(reg.height), int(reg.width)
        side = int(window) if window is not None else auto_window(count, H * W, min(H, W))
        if side > min(H, W):
            raise EmptyRegionError(f"a {side} px window does not fit in the {W} x {H} px region", field="window")
        cell = side // CELLS_PER_SIDE
        cells = _CellStats(H // cell, W // cell, cell, k)
        normalizer = bundle.normalization.for_prediction(stats, input_stats=lambda: compute_stats([scene], [reg]))
        plan = WindowPlan(H, W, predict_window, overlap, "hann")
        blender = StreamingBlender(plan, k + 1)
        for done, pw in enumerate(plan):
            if should_stop is not None and should_stop():
                raise PredictionCancelled(f"stopped after {done} of {len(plan)} windows")
            w = pw.window
            rw = scene.read(Window(reg.col_off + w.col_off, reg.row_off + w.row_off, w.width, w.height))
            valid = rw.valid & aoi_mask(geoms, rw.grid) if geoms is not None else rw.valid
            out = None
            if valid.any():
                x = torch.from_numpy(normalizer(rw.data, valid))[None].to(dev)
                with torch.inference_mode():
                    p, d = _network_outputs(seg, x)
                extra = d if d is not None else torch.zeros_like(p[:, :1, :, :])[:, 0]
                out = torch.cat([p, extra[:, None]], dim=1)[0].cpu().numpy()
            for piece in blender.add(pw.index, out, valid if out is not None else None):
                cells.add(piece.window, piece.probs, piece.valid, two)
            if progress is not None:
                progress(done + 1, len(plan))
        transform = scene.grid.transform
        crs = scene.grid.crs

    span = CELLS_PER_SIDE
    if cells.rows < span or cells.cols < span:
        raise EmptyRegionError(f"a {side} px window does not fit in the {W} x {H} px region", field="window")
    n = cells.window_sums(cells.count, span)
    safe = np.maximum(n, 1.0)
    ent = cells.window_sums(cells.entropy, span) / safe
    dis = cells.window_sums(cells.disagreement, span) / safe if two else None
    hist = cells.window_sums(cells.classes, span) / safe[..., None]
    valid_fraction = n / float(side * side)
    uncertainty = (ent + dis) / 2.0 if two else ent
    available = valid_fraction >= min_valid
    picks = select_windows(uncertainty * valid_fraction, hist, available, count, span, diversity)

    ids = list(bundle.class_ids)
    out: list[Suggestion] = []
    for rank, (i, j, gain, sim) in enumerate(picks, start=1):
        win = Window(int(reg.col_off) + j * cell, int(reg.row_off) + i * cell, side, side)
        mix = {ids[c]: float(hist[i, j, c]) for c in np.flatnonzero(hist[i, j] > 0)}
        out.append(Suggestion(
            rank=rank, window=win, polygon=_polygon(transform, win), score=gain,
            uncertainty=float(uncertainty[i, j]), entropy=float(ent[i, j]),
            disagreement=float(dis[i, j]) if dis is not None else None, similarity=sim,
            valid_fraction=float(valid_fraction[i, j]), class_mix=mix))
    options = {"count": int(count), "window": side, "diversity": float(diversity), "min_valid": float(min_valid),
               "predict_window": int(predict_window), "overlap": int(overlap), "stats": normalizer.name,
               "region": [int(reg.col_off), int(reg.row_off), W, H]}
    return SuggestionSet(out, crs, side, int(available.sum()), two, options)
