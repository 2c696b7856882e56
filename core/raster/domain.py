"""Domain: an opened DomainSpec — its scenes (and labels), the region of each, GSD matching, statistics.

Each scene is worked on through a *working grid*: its own grid, or the same footprint resampled to
another domain's GSD when ``match_grid_of`` asks for it (JobSpec params.match_gsd). Windows passed
to a :class:`DomainScene` are windows of its working grid; its reads honour the region (pixels of an
AOI's bounding window outside the AOI are invalid) and make invalid pixels' labels 255.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rasterio.features import rasterize
from rasterio.windows import Window

from core.errors import EmptyRegionError, GeoadaptError, MissingCRSError
from core.jobspec import IGNORE_INDEX
from core.raster.grid import Grid, iter_blocks, should_match_gsd, window_intersection
from core.raster.labels import Labels
from core.raster.scene import DEFAULT_MAX_PIXELS, RasterWindow, Scene
from core.raster.stats import BandStats, compute_stats, stats_key
from core.raster.vector import geometry_bounds, read_vector


@dataclass
class DomainScene:
    """One scene of a domain on its working grid, with its labels and region."""

    scene: Scene
    labels: Labels | None
    grid: Grid  # working grid
    region: Window  # on the working grid
    region_mask: np.ndarray | None = None  # (region.height, region.width) bool for an AOI
    aoi: list[dict] | None = field(default=None, repr=False)  # AOI geometries in the scene CRS
    index: int = 0

    @property
    def resampled(self) -> bool:
        return not self.grid.same_as(self.scene.grid)

    @property
    def count(self) -> int:
        return self.scene.count

    @property
    def name(self) -> str:
        return self.scene.name

    def in_region(self, window: Window) -> np.ndarray:
        """(h, w) bool: which pixels of a working-grid window lie in the region."""
        h, w = int(window.height), int(window.width)
        rows = np.arange(int(window.row_off), int(window.row_off) + h)
        cols = np.arange(int(window.col_off), int(window.col_off) + w)
        r0, c0 = int(self.region.row_off), int(self.region.col_off)
        rin = (rows >= r0) & (rows < r0 + int(self.region.height))
        cin = (cols >= c0) & (cols < c0 + int(self.region.width))
        m = rin[:, None] & cin[None, :]
        if self.region_mask is not None and m.any():
            rr, cc = rows[rin] - r0, cols[cin] - c0
            sub = self.region_mask[np.ix_(rr, cc)]
            m[np.ix_(rin, cin)] = sub
        return m

    def region_mask_on(self, grid: Grid) -> np.ndarray:
        """(h, w) bool: which pixels of any (georeferenced) grid lie in this scene's region."""
        off = self.grid.aligned_offset(grid)
        if off is not None:
            return self.in_region(Window(off[0], off[1], grid.width, grid.height))
        if grid.crs is None or self.grid.crs is None:
            raise MissingCRSError("placing a region on another grid needs both to be georeferenced")
        from rasterio.warp import transform_geom

        geoms = self.aoi or [_window_polygon(self.grid, self.region)]
        if grid.crs != self.grid.crs:
            geoms = [transform_geom(self.grid.crs, grid.crs, g) for g in geoms]
        return rasterize(
            [(g, 1) for g in geoms], out_shape=(grid.height, grid.width), transform=grid.transform, fill=0, dtype="uint8"
        ).astype(bool)

    def read(self, window: Window | None = None, *, resampling: str = "bilinear") -> RasterWindow:
        """Image window of the working grid; pixels outside the region are invalid."""
        window = window if window is not None else self.region
        if self.resampled:
            rw = self.scene.read(onto=self.grid.window(window), resampling=resampling)
        else:
            rw = self.scene.read(window)
        rw.valid &= self.in_region(window)
        rw.data[:, ~rw.valid] = 0.0
        return rw

    def read_labels(self, window: Window | None = None, valid: np.ndarray | None = None) -> np.ndarray:
        """(h, w) uint8 train ids of a working-grid window; 255 where unlabelled or ``valid`` is False."""
        window = window if window is not None else self.region
        if self.labels is None:
            return np.full((int(window.height), int(window.width)), IGNORE_INDEX, np.uint8)
        if self.resampled:
            ids = self.labels.read(onto=self.grid.window(window))
        else:
            ids = self.labels.read(window)
        if valid is not None:
            ids = np.where(valid, ids, np.uint8(IGNORE_INDEX))
        return ids

    def valid_map(self, cell: int, block: int = 1024) -> np.ndarray:
        """Fraction of valid (and in-region) pixels per cell x cell block of the region, streamed."""
        rh, rw_ = int(self.region.height), int(self.region.width)
        ny, nx = math.ceil(rh / cell), math.ceil(rw_ / cell)
        out = np.zeros((ny, nx), np.float64)
        step = max(cell, (block // cell) * cell)
        for b in iter_blocks(self.region, step):
            v = self.read(b, resampling="nearest").valid
            accumulate_cells(out, v, b, self.region, cell)
        return out / cell_areas(rh, rw_, cell)

    def label_map(self, cell: int, n_classes: int, block: int = 1024) -> np.ndarray:
        """(K, ny, nx) counts of each train id per cell of the region, over valid pixels (streamed)."""
        rh, rw_ = int(self.region.height), int(self.region.width)
        ny, nx = math.ceil(rh / cell), math.ceil(rw_ / cell)
        out = np.zeros((n_classes, ny, nx), np.float64)
        step = max(cell, (block // cell) * cell)
        for b in iter_blocks(self.region, step):
            rw = self.read(b, resampling="nearest")
            ids = self.read_labels(b, rw.valid)
            for k in np.unique(ids):
                if k != IGNORE_INDEX and k < n_classes:
                    accumulate_cells(out[k], ids == k, b, self.region, cell)
        return out


def accumulate_cells(out: np.ndarray, mask: np.ndarray, b: Window, region: Window, cell: int) -> None:
    """Add a block's mask, summed per cell, into a per-cell map of ``region``."""
    r0, c0 = int(b.row_off - region.row_off), int(b.col_off - region.col_off)
    # blocks start on cell boundaries (step is a multiple of cell), so cells never straddle blocks
    h, w = mask.shape
    ph, pw = math.ceil(h / cell) * cell, math.ceil(w / cell) * cell
    m = np.zeros((ph, pw), np.float64)
    m[:h, :w] = mask
    sums = m.reshape(ph // cell, cell, pw // cell, cell).sum(axis=(1, 3))
    out[r0 // cell : r0 // cell + sums.shape[0], c0 // cell : c0 // cell + sums.shape[1]] += sums


def cell_areas(h: int, w: int, cell: int) -> np.ndarray:
    """Pixels per cell of an h x w region (edge cells are smaller)."""
    rows = np.minimum(cell, h - np.arange(0, h, cell))
    cols = np.minimum(cell, w - np.arange(0, w, cell))
    return rows[:, None].astype(np.float64) * cols[None, :]


def _window_polygon(grid: Grid, win: Window) -> dict:
    t = grid.transform
    c0, r0 = win.col_off, win.row_off
    c1, r1 = c0 + win.width, r0 + win.height
    ring = [list(t @ (c, r)) for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0))]
    return {"type": "Polygon", "coordinates": [ring]}


def region_of(grid: Grid, region, *, what: str = "scene") -> tuple[Window, np.ndarray | None, list[dict] | None]:
    """A RegionSpec on a grid -> (bounding window, mask within it or None, AOI geometries or None)."""
    full = grid.full_window()
    if region is None:
        return full, None, None
    if region.aoi is not None:
        if grid.crs is None:
            raise MissingCRSError(f"{what} has no CRS, so an AOI cannot be placed on it")
        layer = read_vector(region.aoi if isinstance(region.aoi, dict) else Path(region.aoi))
        geoms = [g for g, _ in layer.to_crs(grid.crs)]
        if not geoms:
            raise EmptyRegionError("the AOI holds no geometry")
        left, bottom, right, top = grid.bounds
        bbs = [geometry_bounds(g) for g in geoms]
        if not any(b[0] < right and b[2] > left and b[1] < top and b[3] > bottom for b in bbs):
            raise EmptyRegionError(f"the AOI does not overlap {what}")
        mask = rasterize([(g, 1) for g in geoms], out_shape=grid.shape, transform=grid.transform, fill=0, dtype="uint8")
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            raise EmptyRegionError(f"the AOI covers no whole pixel of {what}")
        win = Window(int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))
        sub = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(bool)
        return win, sub, geoms
    c0, c1 = region.columns or (0.0, 1.0)
    r0, r1 = region.rows or (0.0, 1.0)
    ca, cb = int(round(c0 * grid.width)), int(round(c1 * grid.width))
    ra, rb = int(round(r0 * grid.height)), int(round(r1 * grid.height))
    win = window_intersection(Window(ca, ra, max(cb - ca, 0), max(rb - ra, 0)), full) if cb > ca and rb > ra else None
    if win is None:
        raise EmptyRegionError(f"the region {region.columns or ''} {region.rows or ''} selects no pixel of {what}")
    return win, None, None


class Domain:
    """The scenes of one domain (source, target or validation), opened, with regions and statistics."""

    def __init__(self, items: list[DomainScene], classes, *, matched_gsd: float | None = None,
                 balance: str = "area"):
        self.items = items
        self.classes = list(classes) if classes is not None else []
        #: the GSD (m) this domain was resampled to, when GSD matching applied
        self.matched_gsd = matched_gsd
        #: how training crops are shared between the scenes (DomainSpec.balance): "area" or "scenes"
        self.balance = balance
        self._stats: BandStats | None = None

    @classmethod
    def open(
        cls,
        spec,
        classes,
        *,
        match_grid_of: "Domain | None" = None,
        match_gsd: bool | None = None,
        labels: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        field: str | None = None,
    ) -> "Domain":
        """Open every scene of a DomainSpec (and its labels unless ``labels=False``).

        With ``match_grid_of`` (the source domain), scenes whose GSD differs from it (by >20% by
        default, or as ``match_gsd`` says) get a working grid resampled to the source GSD.
        """
        items: list[DomainScene] = []
        matched = None
        try:
            for i, sc in enumerate(spec.scenes):
                f = f"{field}.scenes.{i}" if field else None
                try:
                    scene = Scene.open(sc, max_pixels=max_pixels)
                except GeoadaptError as e:
                    raise _with_field(e, f) from None
                items.append(DomainScene(scene, None, scene.grid, scene.grid.full_window(), index=i))
                try:
                    if labels and sc.labels is not None:
                        items[-1].labels = Labels.open(sc, scene, classes, max_pixels=max_pixels)
                    grid = scene.grid
                    if match_grid_of is not None:
                        src_gsd = match_grid_of.gsd
                        if should_match_gsd(src_gsd, grid.gsd, match_gsd):
                            grid = grid.with_gsd(src_gsd)
                            matched = src_gsd
                    win, mask, aoi = region_of(grid, spec.region, what=f"scene {scene.name}")
                    items[-1].grid, items[-1].region, items[-1].region_mask, items[-1].aoi = grid, win, mask, aoi
                except GeoadaptError as e:
                    raise _with_field(e, f) from None
        except BaseException:
            for it in items:
                it.scene.close()
                if it.labels is not None:
                    it.labels.close()
            raise
        return cls(items, classes, matched_gsd=matched, balance=spec.balance)

    def close(self) -> None:
        for it in self.items:
            if it.labels is not None:
                it.labels.close()
            it.scene.close()

    def __enter__(self) -> "Domain":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def band_count(self) -> int:
        return self.items[0].scene.count

    @property
    def gsd(self) -> float:
        """Median working-grid GSD of the scenes, in metres."""
        return float(np.median([it.grid.gsd for it in self.items]))

    @property
    def labelled(self) -> bool:
        return all(it.labels is not None for it in self.items)

    def class_counts(self, cell: int = 64) -> np.ndarray:
        """Pixels of each train id over the valid, labelled pixels of every scene's region (streamed)."""
        k = len(self.classes)
        return sum(it.label_map(cell, k).sum(axis=(1, 2)) for it in self.items)

    def stats(self, store: str | Path | None = None, *, block: int = 512, progress: bool = False) -> BandStats:
        """Per-band statistics over the valid pixels of every scene's region (cached; streamed).

        ``store``: a folder where they are kept as ``stats-<key>.json`` (key: files, region, grid), so a
        dataset's statistics are computed once and travel with it.
        """
        if self._stats is not None:
            return self._stats
        path = None
        if store is not None:
            paths = [p for it in self.items for p in it.scene.paths]
            key = stats_key(paths, [(tuple(it.region.flatten()), it.grid.to_dict()["transform"],
                                     None if it.region_mask is None else int(it.region_mask.sum()))
                                    for it in self.items])
            path = Path(store) / f"stats-{key}.json"
            if path.is_file():
                self._stats = BandStats.load(path)
                return self._stats
        self._stats = compute_stats(self.items, [it.region for it in self.items], block=block, progress=progress)
        if path is not None:
            self._stats.save(path)
        return self._stats


#: fields of a scene that an error may name by themselves; placed under the scene's own field
_SCENE_FIELDS = ("labels", "label_windows")


def _with_field(e: GeoadaptError, f: str | None) -> GeoadaptError:
    if f and not e.field:
        e.field = f
    elif f and e.field in _SCENE_FIELDS:
        e.field = f"{f}.{e.field}"
    return e
