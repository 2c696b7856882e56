"""A large prediction cut into shards of whole window rows: which output rows each shard owns, which window
rows it runs, and its part files (written once, then assembled into the COG by core.raster.cog).

Windows are planned over the whole raster, as for one worker (core.raster.prediction_windows.WindowPlan).
Shard s is given a run of window rows and owns the output rows from the first row of its first window row
to the first row of the next shard's; it runs every window row that touches those rows (the window row
before its own, whose overlap reaches into them, runs in both neighbours), blends them in the plan's
order, exactly as one worker would, and keeps only its own rows. So every output pixel is blended from
the same windows, in the same order, with the same weights: the assembled raster equals one worker's,
bit for bit.

    WindowPlan rows:  0 1 2 3 | 4 5 6 7 | 8 9 10       (shards of whole window rows)
    shard 1 runs:           3 4 5 6 7                   (3 for its overlap with row 4)
    shard 1 owns:      output rows [row_starts[4], row_starts[8])

A part is published once: written to a hidden temporary file, then hard-linked to its name, which fails
if the name exists, so a shard that ran twice (a claimant presumed dead that was not) never overwrites
the part another run wrote.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from core.raster.prediction_windows import WindowPlan

#: the part files of one shard: class ids, and per-class probabilities when asked for
PART_KINDS = ("classes", "probabilities")
#: what every shard of a prediction reads, in the prediction's shard folder (models.inference.shards)
SHARD_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Shard:
    index: int
    rows: tuple[int, int]  # output rows it owns, [start, stop)
    window_rows: tuple[int, int]  # window rows of the plan it runs, [start, stop)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Shard":
        return cls(int(d["index"]), tuple(d["rows"]), tuple(d["window_rows"]))  # type: ignore[arg-type]


def split_plan(plan: WindowPlan, shards: int) -> list[Shard]:
    """``plan`` in at most ``shards`` shards of whole window rows (at least one), as even as the rows allow
    in the window rows each shard *runs*: a shard after the first also runs the window rows before its own
    whose overlap reaches into it, so it is given that many fewer rows of its own. (Evening out the rows
    owned instead left the later shards a row longer, and the worker that drew them the last one to finish.)
    """
    n = max(1, min(int(shards), plan.n_rows))
    rerun = [g - rows_touching(plan, plan.row_starts[g], plan.row_starts[g] + 1)[0] for g in range(plan.n_rows)]
    mean_rerun = sum(rerun[1:]) / max(1, plan.n_rows - 1)
    per_shard = (plan.n_rows + (n - 1) * mean_rerun) / n  # window rows each shard runs, split evenly
    groups = [0]  # first window row of each shard, then the end
    rerun_so_far = 0
    for k in range(1, n):
        # rows run by shards 0..k-1 = their own rows (the next shard's first row) + what they re-ran
        g = round(k * per_shard - rerun_so_far)
        g = min(max(g, groups[-1] + 1), plan.n_rows - (n - k))  # every shard keeps a row of its own
        groups.append(g)
        rerun_so_far += rerun[g]
    groups.append(plan.n_rows)
    out = []
    for s in range(n):
        start = 0 if s == 0 else plan.row_starts[groups[s]]
        stop = plan.height if s == n - 1 else plan.row_starts[groups[s + 1]]
        out.append(Shard(s, (start, stop), rows_touching(plan, start, stop)))
    return out


def rows_touching(plan: WindowPlan, start: int, stop: int) -> tuple[int, int]:
    """The window rows [first, last + 1) of ``plan`` that cover any output row in [start, stop)."""
    touching = [i for i, r in enumerate(plan.row_starts) if r < stop and r + plan.win_h > start]
    return touching[0], touching[-1] + 1


def shard_count(requested: int | None, pixels: int, shard_pixels: int) -> int:
    """How many shards a prediction of ``pixels`` output pixels gets: ``requested`` (a job's
    ``params.shards``) when given, else one per ``shard_pixels`` started (1: not sharded)."""
    if requested is not None:
        return max(1, int(requested))
    if shard_pixels <= 0 or pixels <= shard_pixels:
        return 1
    return -(-int(pixels) // int(shard_pixels))


def part_path(folder: str | Path, index: int, kind: str = "classes") -> Path:
    """Where shard ``index`` publishes its part of one output (``kind``: classes or probabilities)."""
    if kind not in PART_KINDS:
        raise ValueError(f"kind must be one of {PART_KINDS}, not {kind!r}")
    return Path(folder) / f"shard-{index:04d}-{kind}.tif"


def remove_part_temporaries(folder: str | Path, index: int) -> list[Path]:
    """Delete what an interrupted run of shard ``index`` left half-written (only its claimant may call this)."""
    removed = []
    for kind in PART_KINDS:
        for p in Path(folder).glob(f".{part_path(folder, index, kind).name}.*.tmp.tif"):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class PartWriter:
    """One shard's rows of one output, as a tiled uncompressed GeoTIFF (read once, by the assembly).

    ``write`` takes data placed in the whole output's pixel coordinates, inside the shard's rows.
    ``close`` publishes the file under ``path`` unless a part is already there (then it returns False and
    the file written here is dropped): a part, once written, is never written again.
    """

    def __init__(self, path: str | Path, grid: Any, rows: tuple[int, int], *, count: int, dtype: str,
                 nodata: float | None, blocksize: int = 512):
        self.path = Path(path)
        self.row0, self.row1 = int(rows[0]), int(rows[1])
        self.dtype = dtype
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:12]}.tmp.tif")
        part = grid.window(Window(0, self.row0, grid.width, self.row1 - self.row0))
        tile = max(16, min(blocksize, 16 * -(-max(part.width, part.height) // 16)))
        self._ds = rasterio.open(
            self._tmp, "w", driver="GTiff", width=part.width, height=part.height, count=count, dtype=dtype,
            crs=part.crs, transform=part.transform, nodata=nodata, interleave="band", tiled=True,
            blockxsize=tile, blockysize=tile, BIGTIFF="IF_SAFER", SPARSE_OK="TRUE")
        self._closed = False

    def write(self, data: np.ndarray, window: Window) -> None:
        if data.ndim == 2:
            data = data[None]
        r0 = int(window.row_off)
        if r0 < self.row0 or r0 + int(window.height) > self.row1:
            raise ValueError(f"rows {r0}..{r0 + int(window.height)} lie outside this part's {self.row0}..{self.row1}")
        local = Window(window.col_off, r0 - self.row0, window.width, window.height)
        self._ds.write(data.astype(self.dtype, copy=False), window=local)

    def close(self) -> bool:
        """Publish the part; False when one was already there (this run's file is then dropped)."""
        if self._closed:
            return True
        self._closed = True
        try:
            self._ds.close()
            with open(self._tmp, "rb") as fh:  # on disk before it has a name others trust
                os.fsync(fh.fileno())
            try:
                os.link(self._tmp, self.path)  # atomic, and refuses to replace an existing part
            except FileExistsError:
                return False
            return True
        finally:
            self._tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._ds.close()
        finally:
            self._tmp.unlink(missing_ok=True)
