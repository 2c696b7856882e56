"""Training window samplers over domains: random crops of the valid area of a region, and paired crops
of the same ground in two domains (feature-regression transfer).

Choosing windows is cheap because each scene's region is summarised once, streamed, on a coarse
grid of cells (``crop // 8`` px): the fraction of valid pixels per cell (and, for rare-class
sampling, class counts per cell). A window is drawn among cell-aligned positions whose estimated
valid fraction reaches ``min_valid``, jittered by up to a cell, then read; the read's own valid
fraction is checked again, so no returned window is mostly nodata.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from rasterio.windows import Window

from core.errors import EmptyRegionError
from core.jobspec import IGNORE_INDEX
from core.raster.domain import Domain, DomainScene, accumulate_cells, cell_areas
from core.raster.grid import iter_blocks
from core.raster.warp import bounds_in
from models.sampling.photometric import PhotometricDistortion, PhotometricSettings
from models.sampling.rescale import RandomRescale, RescaleSettings
from models.normalization import SOURCE, TARGET, Normalization, Normalizer

#: DAFormer's rare-class sampling temperature: p(c) ~ exp((1 - f_c) / T)
RCS_TEMPERATURE = 0.01
_MAX_TRIES = 64


class _CellIndex:
    """Admissible crop positions of one scene's region, on a coarse grid of cells."""

    def __init__(self, item: DomainScene, crop: int, cell: int, valid_cells: np.ndarray, min_valid: float):
        self.item, self.crop, self.cell = item, crop, cell
        reg = item.region
        self.r0, self.c0 = int(reg.row_off), int(reg.col_off)
        self.h, self.w = int(reg.height), int(reg.width)
        # last top-left pixel offsets (inside the region when it is at least one crop large)
        self.max_dr, self.max_dc = max(self.h - crop, 0), max(self.w - crop, 0)
        k = max(1, crop // cell)
        ny, nx = valid_cells.shape
        ii = np.arange(0, self.max_dr // cell + 1)
        jj = np.arange(0, self.max_dc // cell + 1)
        # valid fraction of the k x k cells under each candidate (integral image over valid counts)
        area = cell_areas(self.h, self.w, cell)
        counts = np.pad(valid_cells * area, ((0, k), (0, k)))
        integ = np.pad(counts.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        i1, j1 = np.minimum(ii + k, ny + k), np.minimum(jj + k, nx + k)
        s = integ[i1][:, j1] - integ[ii][:, j1] - integ[i1][:, jj] + integ[ii][:, jj]
        frac = s / float(crop * crop)
        #: the share a read window must hold, and the most any position reaches
        self.min_share, self.best = float(min_valid), float(frac.max()) if frac.size else 0.0
        self.ok = frac >= min_valid * 0.9  # slack for the jitter; the read re-checks exactly
        self.positions = np.argwhere(self.ok)  # (n, 2) cell indices (i, j)

    def window_at(self, i: int, j: int, rng: np.random.Generator) -> Window:
        dr = min(i * self.cell + int(rng.integers(0, self.cell)), self.max_dr)
        dc = min(j * self.cell + int(rng.integers(0, self.cell)), self.max_dc)
        return Window(self.c0 + dc, self.r0 + dr, self.crop, self.crop)

    def window_over(self, pr: int, pc: int, rng: np.random.Generator) -> Window | None:
        """A random admissible window containing region pixel (pr, pc), or None."""
        lo_r, hi_r = max(0, pr - self.crop + 1), min(pr, self.max_dr)
        lo_c, hi_c = max(0, pc - self.crop + 1), min(pc, self.max_dc)
        if hi_r < lo_r or hi_c < lo_c:
            return None
        dr, dc = int(rng.integers(lo_r, hi_r + 1)), int(rng.integers(lo_c, hi_c + 1))
        if not self.ok[min(dr // self.cell, self.ok.shape[0] - 1), min(dc // self.cell, self.ok.shape[1] - 1)]:
            return None
        return Window(self.c0 + dc, self.r0 + dr, self.crop, self.crop)


def _default_cell(crop: int) -> int:
    return max(1, crop // 8)


class _Base:
    def __init__(self, seed: int):
        self.rng = np.random.Generator(np.random.PCG64(int(seed)))
        #: (scene index in the domain, window of its working grid) of each crop of the last batch
        self.last_windows: list[tuple[int, Window]] = []

    def state_dict(self) -> dict:
        """The RNG state: loading it makes the next draws identical (exact resume)."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def _windowed(item: DomainScene) -> bool:
    """Whether a scene's labels are limited to label windows (the rest of its valid ground unlabelled)."""
    return item.labels is not None and item.labels.windows_path is not None


class WindowSampler(_Base):
    """Random ``crop`` x ``crop`` windows over the valid area of a domain's region, normalised by
    ``normalizer`` (the model's for this domain: models.normalization).

    ``rare_class_bias`` (0-1): the share of windows drawn around a pixel of a class chosen with
    DAFormer's rare-class distribution p(c) ~ exp((1 - f_c) / T) over the region's class
    frequencies f_c; the rest are uniform over admissible positions.

    ``photometric``: mmseg-style photometric distortion of each crop's raw values before it is
    normalised (see models.sampling.photometric); None leaves crops as read.

    ``rescale``: mmseg-style random resize of each crop (see models.sampling.rescale): the window read is
    ``crop / r`` px of ground, resized to ``crop`` px; None reads ``crop`` px as they are.
    """

    #: what a window's pixels must mostly be (for messages)
    _drawn = "valid"

    def __init__(
        self,
        domain: Domain,
        crop: int,
        normalizer: Normalizer,
        *,
        seed: int,
        labelled: bool = True,
        min_valid: float = 0.5,
        rare_class_bias: float = 0.0,
        cell: int | None = None,
        photometric: PhotometricSettings | None = None,
        rescale: RescaleSettings | None = None,
    ):
        super().__init__(seed)
        if labelled and not domain.labelled:
            raise ValueError("a labelled sampler needs labels on every scene of the domain")
        if not 0.0 <= rare_class_bias <= 1.0:
            raise ValueError("rare_class_bias is a probability (0-1)")
        self.domain, self.crop, self.normalizer = domain, int(crop), normalizer
        self.labelled, self.min_valid, self.rare_class_bias = labelled, float(min_valid), float(rare_class_bias)
        self.cell = cell or _default_cell(self.crop)
        self.index = [self._scene_index(it) for it in domain.items]
        self._check_positions()
        self._item_p = _position_weights(self.index, domain.balance)
        self.class_freq: np.ndarray | None = None
        if self.labelled and self.rare_class_bias > 0:
            self._init_rare_classes()
        # its own generator: the crop positions stay those of the same seed without distortion
        self.photometric = None if photometric is None else PhotometricDistortion(
            normalizer.stats, photometric, seed=int(seed) + 104_729)
        self.rescale = None if rescale is None else RandomRescale(rescale, self.crop, seed=int(seed) + 130_363)

    def _cell_fractions(self, item: DomainScene) -> np.ndarray:
        """The per-cell fraction of the pixels a window must mostly hold (here: valid ones; labelled ones where a
        labelled sampler meets a scene whose labels are limited to label windows, since valid ground outside
        them would train on nothing)."""
        if self._draws_labels_of(item):
            h, w = int(item.region.height), int(item.region.width)
            return item.label_map(self.cell, len(self.domain.classes)).sum(axis=0) / cell_areas(h, w, self.cell)
        return item.valid_map(self.cell)

    def _draws_labels_of(self, item: DomainScene) -> bool:
        """Whether crops of this scene are drawn by their labelled pixels (labels limited to label windows, the
        rest of its valid ground unlabelled), rather than by their valid ones."""
        return self.labelled and _windowed(item)

    def _scene_index(self, item: DomainScene) -> _CellIndex:
        """Where crops of a scene may be drawn. Where crops are drawn by their labelled pixels, a crop must hold
        ``min_valid`` of them, or half the share the best crop reaches where the labels are smaller than that
        allows (a 32 px window holds a quarter of a 64 px crop): otherwise no crop would be admissible and the
        scene's labels would go unused."""
        fractions = self._cell_fractions(item)
        index = _CellIndex(item, self.crop, self.cell, fractions, self.min_valid)
        if self._draws_labels_of(item) and 0.0 < index.best < self.min_valid:
            index = _CellIndex(item, self.crop, self.cell, fractions, 0.5 * index.best)
        return index

    def _check_positions(self) -> None:
        _weights_or_fail(self.index, "the region", self.crop, self.min_valid)

    def _accept(self, valid: np.ndarray, label: np.ndarray | None, idx: _CellIndex) -> bool:
        """Whether a read window holds the share its scene's index asks of what the sampler draws (here: valid
        pixels; labelled ones on a scene whose labels are limited to label windows)."""
        if self._draws_labels_of(idx.item):
            return label is not None and (label != IGNORE_INDEX).mean() >= idx.min_share
        return valid.mean() >= idx.min_share

    def state_dict(self) -> dict:
        state = super().state_dict()
        for name in ("photometric", "rescale"):
            if getattr(self, name) is not None:
                state[name] = getattr(self, name).state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for name in ("photometric", "rescale"):
            if getattr(self, name) is not None and name in state:
                getattr(self, name).load_state_dict(state[name])

    def _init_rare_classes(self) -> None:
        k = len(self.domain.classes)
        self._class_cells = [it.item.label_map(self.cell, k) for it in self.index]  # (K, ny, nx) each
        totals = sum(m.sum(axis=(1, 2)) for m in self._class_cells)
        self.class_freq = totals / max(totals.sum(), 1.0)
        present = totals > 0
        logits = np.where(present, (1.0 - self.class_freq) / RCS_TEMPERATURE, -np.inf)
        p = np.exp(logits - logits[present].max())
        self.class_p = p / p.sum()

    def _draw_window(self) -> tuple[_CellIndex, Window]:
        if self.class_freq is not None and self.rng.random() < self.rare_class_bias:
            for _ in range(8):
                got = self._draw_for_class(int(self.rng.choice(len(self.class_p), p=self.class_p)))
                if got is not None:
                    return got
        idx = self.index[int(self.rng.choice(len(self.index), p=self._item_p))]
        i, j = idx.positions[int(self.rng.integers(len(idx.positions)))]
        return idx, idx.window_at(int(i), int(j), self.rng)

    def _draw_for_class(self, c: int) -> tuple[_CellIndex, Window] | None:
        per_item = np.array([m[c].sum() for m in self._class_cells])
        if per_item.sum() == 0:
            return None
        n = int(self.rng.choice(len(per_item), p=per_item / per_item.sum()))
        m = self._class_cells[n][c].ravel()
        flat = int(self.rng.choice(m.size, p=m / m.sum()))
        idx = self.index[n]
        ci, cj = divmod(flat, self._class_cells[n].shape[2])
        # a pixel of the cell (approximate: any pixel of a cell holding the class), then a window over it
        pr = min(ci * self.cell + int(self.rng.integers(0, self.cell)), idx.h - 1)
        pc = min(cj * self.cell + int(self.rng.integers(0, self.cell)), idx.w - 1)
        win = idx.window_over(pr, pc, self.rng)
        return None if win is None else (idx, win)

    def sample(self, batch: int) -> dict:
        imgs, labels, valids = [], [], []
        self.last_windows = []
        for _ in range(int(batch)):
            for _try in range(_MAX_TRIES):
                idx, win = self._draw_window()
                if self.rescale is not None:
                    win = self.rescale.window_around(win, (idx.r0, idx.c0, idx.h, idx.w))
                rw = idx.item.read(win)
                label = idx.item.read_labels(win, rw.valid) if self.labelled else None
                if self._accept(rw.valid, label, idx):
                    break
            else:
                raise EmptyRegionError(
                    f"no {self.crop} px window with {self.min_valid:.0%} {self._drawn} pixels found in "
                    f"{_MAX_TRIES} tries"
                )
            self.last_windows.append((idx.item.index, win))
            data = rw.data if self.photometric is None else self.photometric(rw.data)
            img, valid = self.normalizer(data, rw.valid), rw.valid
            if label is None:
                label = np.full(valid.shape, IGNORE_INDEX, np.uint8)
            if self.rescale is not None:
                img, valid, label = self.rescale.resize(img, valid, label)
            imgs.append(img)
            labels.append(label)
            valids.append(valid)
        return {
            "img": torch.from_numpy(np.stack(imgs)),
            "label": torch.from_numpy(np.stack(labels).astype(np.int64)),
            "valid": torch.from_numpy(np.stack(valids)),
        }


class LabelledWindowSampler(WindowSampler):
    """Random windows over the labelled pixels of a partly labelled domain (a semi job's target: labels on
    some scenes, or only inside label windows): positions are drawn where at least ``min_labelled`` of a
    window's pixels carry a label (half the best crop's share where the labels are smaller than that allows,
    by the rule of :meth:`WindowSampler._scene_index`), and each read is checked again. Scenes without labels
    are never drawn."""

    _drawn = "labelled"

    def __init__(self, domain: Domain, crop: int, normalizer: Normalizer, *, seed: int, min_labelled: float = 0.5,
                 cell: int | None = None, photometric: PhotometricSettings | None = None):
        if not 0.0 < min_labelled <= 1.0:
            raise ValueError("min_labelled is a fraction (0-1]")
        if not any(it.labels is not None for it in domain.items):
            raise EmptyRegionError("no scene of the domain has labels to draw labelled windows from")
        # labels are checked per scene (_cell_fractions), not required on every scene
        self._classes = len(domain.classes)
        super().__init__(domain, crop, normalizer, seed=seed, labelled=False, min_valid=min_labelled, cell=cell,
                         photometric=photometric)
        self.labelled = True

    def _cell_fractions(self, item: DomainScene) -> np.ndarray:
        h, w = int(item.region.height), int(item.region.width)
        if item.labels is None:
            return np.zeros((math.ceil(h / self.cell), math.ceil(w / self.cell)))
        return item.label_map(self.cell, self._classes).sum(axis=0) / cell_areas(h, w, self.cell)

    def _check_positions(self) -> None:
        _weights_or_fail(self.index, "the labelled part of the domain", self.crop, self.min_valid, "labelled")

    def _draws_labels_of(self, item: DomainScene) -> bool:
        return item.labels is not None

    def _accept(self, valid: np.ndarray, label: np.ndarray | None, idx: _CellIndex) -> bool:
        return label is not None and (label != IGNORE_INDEX).mean() >= idx.min_share


class PairedSampler(_Base):
    """The same ground from two domains: a window of a source scene, and the target read onto that
    window's grid (reprojected and resampled from whatever CRS and GSD it has).

    ``valid`` is True where both are valid and the ground lies in both regions. ``label`` (source
    labels, 255 = ignore) is included when the source domain is labelled. Each side is normalised as
    ``normalization`` (the model's) normalises its domain.
    """

    def __init__(
        self,
        source: Domain,
        target: Domain,
        crop: int,
        normalization: Normalization,
        *,
        seed: int,
        min_valid: float = 0.5,
        resampling: str = "bilinear",
        cell: int | None = None,
    ):
        super().__init__(seed)
        self.source, self.target, self.crop = source, target, int(crop)
        self.source_normalizer = normalization.for_domain(SOURCE)
        self.target_normalizer = normalization.for_domain(TARGET)
        self.min_valid, self.resampling = float(min_valid), resampling
        self.cell = cell or _default_cell(self.crop)
        self.partners: list[list[DomainScene]] = []
        self.index: list[_CellIndex] = []
        for it in source.items:
            partners = [t for t in target.items if _overlap(it, t)]
            self.partners.append(partners)
            cells = self._pair_cells(it, partners)
            self.index.append(_CellIndex(it, self.crop, self.cell, cells, self.min_valid))
        _weights_or_fail(self.index, "the ground shared by source and target", self.crop, self.min_valid)
        self._item_p = _position_weights(self.index, source.balance)

    def _pair_cells(self, it: DomainScene, partners: list[DomainScene]) -> np.ndarray:
        """Per-cell fraction of source-region pixels whose ground is valid in both domains (streamed)."""
        reg, cell = it.region, self.cell
        h, w = int(reg.height), int(reg.width)
        out = np.zeros((math.ceil(h / cell), math.ceil(w / cell)))
        step = max(cell, (1024 // cell) * cell)
        for b in iter_blocks(reg, step):
            v = it.read(b, resampling="nearest").valid
            if v.any():
                v &= self._target_valid(it.grid.window(b), partners, "nearest")[1]
            accumulate_cells(out, v, b, reg, cell)
        return out / cell_areas(h, w, cell)

    def _target_valid(self, grid, partners, resampling):
        """The target read onto ``grid`` from the partner scene that covers most of it."""
        best = None
        for t in partners:
            rw = t.scene.read(onto=grid, resampling=resampling)
            rw.valid &= t.region_mask_on(grid)
            if best is None or rw.valid.sum() > best.valid.sum():
                best = rw
            if best.valid.all():
                break
        if best is None:
            return None, np.zeros((grid.height, grid.width), bool)
        return best, best.valid

    def sample(self, batch: int) -> dict:
        srcs, tgts, valids, labels = [], [], [], []
        labelled = self.source.labelled
        self.last_windows = []
        for _ in range(int(batch)):
            for _try in range(_MAX_TRIES):
                n = int(self.rng.choice(len(self.index), p=self._item_p))
                idx = self.index[n]
                i, j = idx.positions[int(self.rng.integers(len(idx.positions)))]
                win = idx.window_at(int(i), int(j), self.rng)
                s = idx.item.read(win)
                if s.valid.mean() < self.min_valid:
                    continue
                t, tv = self._target_valid(s.grid, self.partners[n], self.resampling)
                both = s.valid & tv
                if both.mean() >= self.min_valid:
                    break
            else:
                raise EmptyRegionError(
                    f"no {self.crop} px window with {self.min_valid:.0%} of its ground valid in both domains "
                    f"found in {_MAX_TRIES} tries"
                )
            self.last_windows.append((idx.item.index, win))
            srcs.append(self.source_normalizer(s.data, both))
            tgts.append(self.target_normalizer(t.data, both))
            valids.append(both)
            if labelled:
                labels.append(idx.item.read_labels(win, both))
        out = {
            "source": torch.from_numpy(np.stack(srcs)),
            "target": torch.from_numpy(np.stack(tgts)),
            "valid": torch.from_numpy(np.stack(valids)),
        }
        if labelled:
            out["label"] = torch.from_numpy(np.stack(labels).astype(np.int64))
        return out


def _overlap(a: DomainScene, b: DomainScene) -> bool:
    if a.grid.crs is None or b.grid.crs is None:
        return a.grid.crs is None and b.grid.crs is None and a.grid.shape == b.scene.grid.shape
    x = a.grid.bounds
    y = bounds_in(b.scene.grid, a.grid.crs)
    return min(x[2], y[2]) > max(x[0], y[0]) and min(x[3], y[3]) > max(x[1], y[1])


def _position_weights(index: list[_CellIndex], balance: str) -> np.ndarray:
    """Each scene's share of the crops: in proportion to its admissible positions ("area"), or equal
    among the scenes that have any ("scenes")."""
    n = np.array([len(ix.positions) for ix in index], np.float64)
    if balance == "scenes":
        n = (n > 0).astype(np.float64)
    return n / n.sum()


def _weights_or_fail(index: list[_CellIndex], what: str, crop: int, min_valid: float, kind: str = "valid") -> None:
    if sum(len(ix.positions) for ix in index) == 0:
        raise EmptyRegionError(f"{what} holds no {crop} px window with {min_valid:.0%} {kind} pixels")
