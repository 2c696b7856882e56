"""Windowed prediction's torch-free parts: options, the window plan, blending weights, a streaming blender.

The blender finishes each part of the output as soon as the last window covering it has been seen
(windows arrive in the plan's row-major order), so it holds at most the overlap strip between two
rows of windows: memory follows the window size and the raster's width times the overlap, never the
raster's area.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from rasterio.windows import Window

from core.errors import ConfigError, EmptyRegionError

BLEND_MODES = ("none", "average", "hann")
PRECISIONS = ("fp32", "bf16")
STATS_CHOICES = ("auto", "target", "source", "input")
#: what runs the network: torch, or onnxruntime on the bundle's ONNX export (CPU, fp32)
ENGINES = ("torch", "onnxruntime")


@dataclass
class PredictOptions:
    """How a raster is predicted; every field has a default that suits a CPU or one GPU."""

    # 256: twice the default training crop; memory per stream grows with window x batch (attention
    # layers quadratically), so large GPUs and large models ask for more
    window: int = 256  # window side in pixels fed to the model
    overlap: int = 32  # pixels shared by neighbouring windows (at least; spread evenly)
    blend: str = "hann"  # none: each pixel from the nearest window centre; average; hann: tapered
    batch_size: int = 4
    tta: bool = False  # average over identity, horizontal, vertical and both flips
    precision: str = "fp32"  # or bf16 (autocast) where the device supports it
    stats: Any = "auto"  # auto (the bundle's default: target when it has them) | target | source | input | BandStats
    nodata: float | None = None  # overrides the input's nodata value(s)
    region: Any = None  # Window, (col_off, row_off, width, height), a GeoJSON AOI (WGS84) or a RegionSpec
    probabilities: Any = False  # True: also write <output>_probs.tif (uint8, one band per class); or a path
    device: str | None = None  # cpu, cuda, cuda:1 ...; default: cuda when available
    streams: int | None = None  # batches in the model at once; default: CPU min(cores, 4), GPU 1
    threads: int | None = None  # torch threads per stream on CPU; default: cores // streams
    blocksize: int = 512  # COG tile size
    compress: str = "DEFLATE"
    prefetch: int = 3  # batches read ahead of the model (bounded queue)
    cache_mb: int = 64  # GDAL block cache while predicting
    pad_multiple: int = 32  # window sides off this multiple are padded to it (reflect) for the network
    engine: str = "torch"  # or onnxruntime

    def validate(self) -> "PredictOptions":
        def bad(name: str, msg: str) -> None:
            raise ConfigError(msg, field=name)

        if not 16 <= int(self.window) <= 16384:
            bad("window", f"window must be 16..16384 pixels, got {self.window}")
        if not 0 <= int(self.overlap) <= int(self.window) // 2:
            bad("overlap", f"overlap must be 0..window/2 ({int(self.window) // 2}), got {self.overlap}")
        if self.blend not in BLEND_MODES:
            bad("blend", f"blend must be one of {', '.join(BLEND_MODES)}, got {self.blend!r}")
        if not 1 <= int(self.batch_size) <= 1024:
            bad("batch_size", f"batch size must be 1..1024, got {self.batch_size}")
        if self.precision not in PRECISIONS:
            bad("precision", f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if isinstance(self.stats, str) and self.stats not in STATS_CHOICES:
            bad("stats", f"stats must be one of {', '.join(STATS_CHOICES)} or band statistics, got {self.stats!r}")
        if self.blocksize % 16 or not 64 <= self.blocksize <= 4096:
            bad("blocksize", f"blocksize must be a multiple of 16 in 64..4096, got {self.blocksize}")
        if self.prefetch < 1:
            bad("prefetch", "prefetch must be at least 1")
        if self.streams is not None and not 1 <= int(self.streams) <= 64:
            bad("streams", f"streams must be 1..64, got {self.streams}")
        if self.threads is not None and not 1 <= int(self.threads) <= 1024:
            bad("threads", f"threads must be 1..1024, got {self.threads}")
        if self.engine not in ENGINES:
            bad("engine", f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine == "onnxruntime" and self.device is not None and not str(self.device).startswith("cpu"):
            bad("device", "the onnxruntime engine runs on the CPU; leave device unset or use cpu")
        if self.engine == "onnxruntime" and self.precision != "fp32":
            bad("precision", "the onnxruntime engine runs fp32 only")
        return self

    def as_dict(self) -> dict:
        d = asdict(self)
        d["stats"] = self.stats if isinstance(self.stats, str) else "custom"
        d["region"] = None if self.region is None else str(self.region)
        return d


# window plan -----------------------------------------------------------------------------------
def axis_starts(length: int, window: int, overlap: int) -> list[int]:
    """Window starts covering ``length`` pixels: neighbours share at least ``overlap`` pixels, the
    last window ends at the edge, and the spare overlap is spread evenly rather than piled on it."""
    if length <= window:
        return [0]
    stride = window - overlap
    n = 1 + math.ceil((length - window) / stride)
    return [round(i * (length - window) / (n - 1)) for i in range(n)]


def axis_weights(starts: Sequence[int], size: int, i: int, blend: str) -> np.ndarray:
    """1-D weights of window ``i`` along one axis (float32, length ``size``).

    hann: a half-Hann ramp over the pixels shared with each neighbour (sin^2 up, cos^2 down, so two
    neighbours' ramps sum to 1) and flat elsewhere; no ramp at the region's edges, where nothing else
    covers the pixels. none: 1 on the pixels nearer this window's centre than a neighbour's, else 0.
    """
    w = np.ones(size, np.float32)
    n = len(starts)
    if blend == "average" or n == 1:
        return w
    if blend == "hann":
        if i > 0:
            ov = starts[i - 1] + size - starts[i]
            t = (np.arange(ov, dtype=np.float64) + 0.5) / ov
            w[:ov] *= (np.sin(np.pi / 2 * t) ** 2).astype(np.float32)
        if i < n - 1:
            ov = starts[i] + size - starts[i + 1]
            t = (np.arange(ov, dtype=np.float64) + 0.5) / ov
            w[size - ov :] *= (np.cos(np.pi / 2 * t) ** 2).astype(np.float32)
        return w
    if blend == "none":
        lo = 0 if i == 0 else (starts[i - 1] + size + starts[i]) // 2 - starts[i]
        hi = size if i == n - 1 else (starts[i] + size + starts[i + 1]) // 2 - starts[i]
        w[:] = 0.0
        w[lo:hi] = 1.0
        return w
    raise ValueError(f"unknown blend {blend!r}")


@dataclass(frozen=True)
class PlannedWindow:
    index: int  # position in the plan's order (row-major)
    row: int  # index of the window row / column
    col: int
    window: Window  # in output (region) pixel coordinates


@dataclass
class WindowPlan:
    """Windows over an output of ``height`` x ``width`` pixels, in row-major order."""

    height: int
    width: int
    window: int
    overlap: int
    blend: str = "hann"
    row_starts: list[int] = field(init=False)
    col_starts: list[int] = field(init=False)

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise EmptyRegionError(f"nothing to predict: the region is {self.width} x {self.height} pixels")
        self.row_starts = axis_starts(self.height, self.window, self.overlap)
        self.col_starts = axis_starts(self.width, self.window, self.overlap)
        self.win_h = min(self.window, self.height)
        self.win_w = min(self.window, self.width)
        self._wr = [axis_weights(self.row_starts, self.win_h, i, self.blend) for i in range(len(self.row_starts))]
        self._wc = [axis_weights(self.col_starts, self.win_w, j, self.blend) for j in range(len(self.col_starts))]

    @property
    def n_rows(self) -> int:
        return len(self.row_starts)

    @property
    def n_cols(self) -> int:
        return len(self.col_starts)

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    def __iter__(self) -> Iterator[PlannedWindow]:
        for i, r in enumerate(self.row_starts):
            for j, c in enumerate(self.col_starts):
                yield PlannedWindow(i * self.n_cols + j, i, j, Window(c, r, self.win_w, self.win_h))

    def weights(self, row: int, col: int) -> np.ndarray:
        """(h, w) blending weights of window (row, col)."""
        return np.outer(self._wr[row], self._wc[col])

    def axis_weight(self, axis: int, k: int) -> np.ndarray:
        return self._wr[k] if axis == 0 else self._wc[k]

    @property
    def window_pixels(self) -> int:
        return len(self) * self.win_h * self.win_w


# streaming blender -----------------------------------------------------------------------------
@dataclass
class Piece:
    """A finished part of the output: blended class probabilities and the valid mask there."""

    window: Window  # in output pixel coordinates
    probs: np.ndarray  # (K, h, w) float32
    valid: np.ndarray  # (h, w) bool


def _segments(starts: Sequence[int], size: int, length: int) -> list[tuple[int, int, int, int]]:
    """Split one axis at every window edge: (start, stop, first covering window, last covering window)."""
    cuts = sorted({0, length, *starts, *(s + size for s in starts)})
    out = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        cover = [k for k, s in enumerate(starts) if s <= a and s + size >= b]
        out.append((a, b, cover[0], cover[-1]))
    return out


class StreamingBlender:
    """Blend per-window probabilities into finished output pieces, window by window, in plan order.

    The output is cut into cells along every window edge; a cell covered by one window is passed
    through, one covered by several accumulates weighted probabilities until its last covering
    window (in row-major order) has been added, and is then emitted. Windows that were skipped
    (entirely nodata) are added as ``None``: the cells they alone cover are never emitted, so the
    output keeps nodata there.

    ``window_rows`` [first, stop): only the windows of those rows are added (a shard's,
    core.raster.prediction_shards). Cells that windows outside them also cover come out blended from
    these windows alone; the caller keeps only the output rows that no other window row reaches.
    """

    def __init__(self, plan: WindowPlan, num_classes: int, window_rows: tuple[int, int] | None = None):
        self.plan = plan
        self.k = num_classes
        first, stop = window_rows or (0, plan.n_rows)
        if not 0 <= first < stop <= plan.n_rows:
            raise ValueError(f"window rows {first}..{stop} are not rows of a plan of {plan.n_rows}")
        self._next = first * plan.n_cols
        self._end = stop * plan.n_cols
        self._rseg = _segments(plan.row_starts, plan.win_h, plan.height)
        self._cseg = _segments(plan.col_starts, plan.win_w, plan.width)
        # for window row i: the row segments inside it (indexes); same for columns
        self._rin = [[a for a, s in enumerate(self._rseg) if s[2] <= i <= s[3]] for i in range(plan.n_rows)]
        self._cin = [[b for b, s in enumerate(self._cseg) if s[2] <= j <= s[3]] for j in range(plan.n_cols)]
        self._acc: dict[tuple[int, int], list] = {}  # cell -> [acc (K,h,w), wsum (h,w), valid (h,w)]
        self._held = 0
        self.peak_cells_bytes = 0

    def add(self, index: int, probs: np.ndarray | None, valid: np.ndarray | None = None) -> list[Piece]:
        """Add window ``index`` (probabilities (K, h, w) or None when skipped); return finished pieces."""
        if index != self._next or index >= self._end:
            raise ValueError(f"windows must be added in plan order: expected {self._next}, got {index}")
        self._next += 1
        p = self.plan
        i, j = divmod(index, p.n_cols)
        r0, c0 = p.row_starts[i], p.col_starts[j]
        if probs is not None and valid is None:
            valid = np.ones(probs.shape[1:], bool)
        if p.blend == "none":
            return self._add_none(i, j, r0, c0, probs, valid)
        out: list[Piece] = []
        wr, wc = p.axis_weight(0, i), p.axis_weight(1, j)
        for a in self._rin[i]:
            ra, rb, rlo, rhi = self._rseg[a]
            for b in self._cin[j]:
                ca, cb, clo, chi = self._cseg[b]
                single = rlo == rhi and clo == chi
                last = rhi == i and chi == j
                sr, sc = slice(ra - r0, rb - r0), slice(ca - c0, cb - c0)
                win = Window(ca, ra, cb - ca, rb - ra)
                if single:
                    # only this window covers the cell, where its weights are 1: pass it through
                    if probs is not None:
                        out.append(Piece(win, probs[:, sr, sc], valid[sr, sc]))
                    continue
                cell = self._acc.get((a, b))
                if probs is not None:
                    wgt = np.outer(wr[sr], wc[sc])
                    if cell is None:
                        cell = [probs[:, sr, sc] * wgt, wgt, valid[sr, sc]]
                        self._acc[(a, b)] = cell
                        self._held += cell[0].nbytes + cell[1].nbytes + cell[2].nbytes
                        self.peak_cells_bytes = max(self.peak_cells_bytes, self._held)
                    else:
                        cell[0] += probs[:, sr, sc] * wgt
                        cell[1] = cell[1] + wgt
                if last and cell is not None:
                    del self._acc[(a, b)]
                    self._held -= cell[0].nbytes + cell[1].nbytes + cell[2].nbytes
                    out.append(Piece(win, cell[0] / cell[1], cell[2]))
        return out

    def _add_none(self, i: int, j: int, r0: int, c0: int, probs, valid) -> list[Piece]:
        if probs is None:
            return []
        wr, wc = self.plan.axis_weight(0, i), self.plan.axis_weight(1, j)
        rs, cs = np.flatnonzero(wr), np.flatnonzero(wc)
        sr, sc = slice(rs[0], rs[-1] + 1), slice(cs[0], cs[-1] + 1)
        win = Window(c0 + cs[0], r0 + rs[0], len(cs), len(rs))
        return [Piece(win, probs[:, sr, sc], valid[sr, sc])]

    @property
    def done(self) -> bool:
        return self._next == self._end


def clip_piece(piece: Piece, first: int, stop: int) -> Piece | None:
    """The part of ``piece`` in output rows [first, stop), or None when it has none there."""
    r0, h = int(piece.window.row_off), int(piece.window.height)
    a, b = max(r0, first), min(r0 + h, stop)
    if b <= a:
        return None
    if (a, b) == (r0, r0 + h):
        return piece
    w = piece.window
    return Piece(Window(w.col_off, a, w.width, b - a), piece.probs[:, a - r0 : b - r0], piece.valid[a - r0 : b - r0])


# regions -----------------------------------------------------------------------------------------
def resolve_region(grid: Any, region: Any) -> tuple[Window, list[dict] | None]:
    """The pixel window to predict and, for an AOI, its geometries in the raster's CRS.

    ``region``: None (everything), a Window, (col_off, row_off, width, height), a GeoJSON geometry /
    Feature / FeatureCollection (WGS84 unless it names a CRS), a path to a GeoJSON/GeoPackage file,
    or a RegionSpec (column/row fractions or an AOI).
    """
    full = Window(0, 0, grid.width, grid.height)
    if region is None:
        return full, None
    if hasattr(region, "columns") and hasattr(region, "aoi"):  # RegionSpec
        if region.aoi is not None:
            return resolve_region(grid, region.aoi)
        c0, c1 = region.columns or (0.0, 1.0)
        r0, r1 = region.rows or (0.0, 1.0)
        region = Window(
            round(c0 * grid.width), round(r0 * grid.height),
            round(c1 * grid.width) - round(c0 * grid.width), round(r1 * grid.height) - round(r0 * grid.height),
        )
    if isinstance(region, (tuple, list)) and len(region) == 4 and all(isinstance(v, (int, float)) for v in region):
        region = Window(*[int(v) for v in region])
    if isinstance(region, Window):
        win = _clip(region, full)
        if win is None:
            raise EmptyRegionError(f"the region {region} lies outside the {grid.width} x {grid.height} raster")
        return win, None
    return _aoi_window(grid, region)


def _clip(win: Window, full: Window) -> Window | None:
    c0, r0 = max(int(win.col_off), 0), max(int(win.row_off), 0)
    c1 = min(int(win.col_off + win.width), int(full.width))
    r1 = min(int(win.row_off + win.height), int(full.height))
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def _aoi_window(grid: Any, aoi: Any) -> tuple[Window, list[dict]]:
    from rasterio.features import bounds as geom_bounds
    from rasterio.windows import from_bounds

    from core.raster.vector import read_vector

    layer = read_vector(aoi)
    if grid.crs is None:
        raise EmptyRegionError("an AOI needs a georeferenced raster (this one has no CRS)")
    geoms = [g for g, _ in layer.to_crs(grid.crs)]
    if not geoms:
        raise EmptyRegionError("the AOI holds no geometry")
    xs0, ys0, xs1, ys1 = zip(*(geom_bounds(g) for g in geoms))
    win = from_bounds(min(xs0), min(ys0), max(xs1), max(ys1), transform=grid.transform)
    c0, r0 = math.floor(win.col_off), math.floor(win.row_off)
    c1, r1 = math.ceil(win.col_off + win.width), math.ceil(win.row_off + win.height)
    clipped = _clip(Window(c0, r0, c1 - c0, r1 - r0), Window(0, 0, grid.width, grid.height))
    if clipped is None:
        raise EmptyRegionError("the AOI does not overlap the raster")
    return clipped, geoms


def aoi_mask(geoms: list[dict], grid: Any) -> np.ndarray:
    """(h, w) bool: True inside the AOI, for a window's grid."""
    from rasterio.features import geometry_mask

    return geometry_mask(geoms, out_shape=(grid.height, grid.width), transform=grid.transform, invert=True)
