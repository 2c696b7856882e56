"""Per-band normalisation statistics over valid pixels, computed by streaming windows; JSON storage."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from rasterio.windows import Window

from core.errors import BandCountMismatchError, EmptyRegionError
from core.files import write_json
from core.raster.grid import iter_blocks, window_intersection

STATS_VERSION = 1


@dataclass
class BandStats:
    """Mean, standard deviation, range and valid-pixel count of each band."""

    mean: list[float]
    std: list[float]
    count: int
    min: list[float] = field(default_factory=list)
    max: list[float] = field(default_factory=list)

    @property
    def bands(self) -> int:
        return len(self.mean)

    def to_dict(self) -> dict:
        return {"version": STATS_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "BandStats":
        return cls(
            mean=[float(x) for x in d["mean"]],
            std=[float(x) for x in d["std"]],
            count=int(d.get("count", 0)),
            min=[float(x) for x in d.get("min", [])],
            max=[float(x) for x in d.get("max", [])],
        )

    def save(self, path: str | Path) -> Path:
        """Write as JSON atomically (temp file + rename)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "BandStats":
        return cls.from_dict(json.loads(Path(path).read_text()))


class _Accumulator:
    """Chan et al.'s parallel mean/variance merge in float64, so block order does not bias results."""

    def __init__(self, bands: int):
        self.n = 0
        self.mean = np.zeros(bands)
        self.m2 = np.zeros(bands)
        self.min = np.full(bands, np.inf)
        self.max = np.full(bands, -np.inf)

    def add(self, values: np.ndarray) -> None:  # values: (bands, n)
        nb = values.shape[1]
        if nb == 0:
            return
        v = values.astype(np.float64, copy=False)
        bm = v.mean(axis=1)
        bm2 = ((v - bm[:, None]) ** 2).sum(axis=1)
        n = self.n + nb
        delta = bm - self.mean
        self.mean = self.mean + delta * nb / n
        self.m2 = self.m2 + bm2 + delta**2 * self.n * nb / n
        self.n = n
        self.min = np.minimum(self.min, v.min(axis=1))
        self.max = np.maximum(self.max, v.max(axis=1))

    def result(self) -> BandStats:
        std = np.sqrt(self.m2 / self.n)
        return BandStats(
            mean=self.mean.tolist(), std=std.tolist(), count=int(self.n), min=self.min.tolist(), max=self.max.tolist()
        )


def compute_stats(
    scenes: Sequence,
    regions: Sequence | None = None,
    *,
    block: int = 512,
    progress: bool = False,
) -> BandStats:
    """Per-band statistics over the valid pixels of ``scenes`` (one pass, block by block).

    ``regions``, parallel to ``scenes``: None (whole scene), a Window, or (Window, mask) where
    mask is a bool array of the window's shape selecting pixels (e.g. an AOI). Never holds more
    than one block in memory.
    """
    if not scenes:
        raise ValueError("no scenes to compute statistics over")
    regions = list(regions) if regions is not None else [None] * len(scenes)
    acc = _Accumulator(scenes[0].count)
    jobs = []
    for scene, region in zip(scenes, regions):
        win, mask = _region(scene, region)
        jobs.extend((scene, b, win, mask) for b in iter_blocks(win, block))
    it = jobs
    if progress:
        from tqdm import tqdm

        it = tqdm(jobs, desc="statistics", unit="block", leave=False)
    for scene, b, win, mask in it:
        rw = scene.read(b)
        sel = rw.valid
        if mask is not None:
            r0, c0 = int(b.row_off - win.row_off), int(b.col_off - win.col_off)
            sel = sel & mask[r0 : r0 + int(b.height), c0 : c0 + int(b.width)]
        acc.add(rw.data[:, sel])
    if acc.n == 0:
        raise EmptyRegionError("no valid pixels to compute statistics over (all nodata or outside the region)")
    return acc.result()


def _region(scene, region) -> tuple[Window, np.ndarray | None]:
    full = scene.grid.full_window()
    if region is None:
        return full, None
    if isinstance(region, Window):
        win, mask = region, None
    else:
        win, mask = region
    inter = window_intersection(win, full)
    if inter is None:
        raise EmptyRegionError(f"the region lies outside scene {scene.name}")
    if mask is not None and inter != win:
        r0, c0 = int(inter.row_off - win.row_off), int(inter.col_off - win.col_off)
        mask = mask[r0 : r0 + int(inter.height), c0 : c0 + int(inter.width)]
    return inter, mask


def normalize(data: np.ndarray, stats: BandStats, valid: np.ndarray | None = None) -> np.ndarray:
    """(..., C, H, W) raw values -> float32 (x - mean) / std; invalid pixels (if given) become 0.

    The numeric primitive: models call it through their normaliser (models.normalization), which also
    decides which statistics apply."""
    c = data.shape[-3]
    if c != stats.bands:
        raise BandCountMismatchError(f"data has {c} bands but the statistics describe {stats.bands}")
    mean = np.asarray(stats.mean, np.float32).reshape(c, 1, 1)
    std = np.maximum(np.asarray(stats.std, np.float32), 1e-6).reshape(c, 1, 1)
    out = (data.astype(np.float32, copy=False) - mean) / std
    if valid is not None:
        out = np.where(valid[..., None, :, :], out, np.float32(0.0))
    return out.astype(np.float32, copy=False)


def stats_key(paths: Sequence[str | Path], region: object = None) -> str:
    """A short key for cached statistics: the files (path, size, mtime) and the region."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(repr(region).encode())
    return h.hexdigest()[:16]
