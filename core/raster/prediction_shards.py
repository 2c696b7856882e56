"""A large prediction cut into shards of whole window rows: the window rows each shard runs, the output rows
it writes, the seams between neighbours, and its files (written once, then assembled into the COG by
models.inference.shards through core.raster.cog).

Windows are planned over the whole raster, as for one worker (core.raster.prediction_windows.WindowPlan).
Each window row is run by exactly one shard. Shard s writes the output rows that only its own windows
cover (its part). The rows that windows of two neighbours both cover form a seam: each neighbour keeps
what its windows predicted there (an edge file), and the assembly replays those windows through the
same blender, in the plan's order, to write the seam (a seam part). So every output pixel is blended
from the same windows, in the same order, with the same weights, as one worker would: the assembled
raster equals one worker's, bit for bit, and no window is predicted twice.

    WindowPlan rows:  0 1 2 3 | 4 5 6 7 | 8 9 10       (shards of whole window rows)
    shard 1 runs:             4 5 6 7
    shard 1 writes:    output rows [end of window row 3, start of window row 8)
    seam 0 (0|1):      output rows [start of window row 4, end of window row 3), from rows 3 and 4

A file is published once: written to a hidden temporary file, then hard-linked to its name, which fails
if the name exists, so a shard that ran twice (a claimant presumed dead that was not) never overwrites
what another run wrote.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from core.raster.prediction_windows import Piece, StreamingBlender, WindowPlan, clip_piece

#: the part files of one shard (and of one seam): class ids, and per-class probabilities when asked for
PART_KINDS = ("classes", "probabilities")
#: a shard's edge files: what its windows predicted over the seam above it and the seam below it
EDGES = ("top", "bottom")
#: what every shard of a prediction reads, in the prediction's shard folder (models.inference.shards)
SHARD_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Shard:
    index: int
    rows: tuple[int, int]  # output rows only its windows cover, [start, stop): its part
    window_rows: tuple[int, int]  # window rows of the plan it runs (no other shard runs them), [start, stop)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Shard":
        return cls(int(d["index"]), tuple(d["rows"]), tuple(d["window_rows"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Seam:
    """The output rows that windows of shard ``index`` and of shard ``index + 1`` both cover."""

    index: int
    rows: tuple[int, int]  # [start, stop)
    window_rows: tuple[int, int]  # the window rows (of both shards) whose windows reach into them

    def __bool__(self) -> bool:  # no overlap between the windows: nothing to blend across the border
        return self.rows[1] > self.rows[0]


def split_plan(plan: WindowPlan, shards: int) -> list[Shard]:
    """``plan`` in at most ``shards`` shards of whole window rows, as even as the rows allow (at least one).
    Fewer when a shard would write no row of its own (its neighbours' windows would meet over it)."""
    n = max(1, min(int(shards), plan.n_rows))
    while True:
        groups = [round(k * plan.n_rows / n) for k in range(n + 1)]  # first window row of each shard, then the end
        covered = [(plan.row_starts[a], plan.row_starts[b - 1] + plan.win_h) for a, b in zip(groups, groups[1:])]
        out = []
        for s in range(n):
            start = 0 if s == 0 else covered[s - 1][1]
            stop = plan.height if s == n - 1 else covered[s + 1][0]
            out.append(Shard(s, (start, stop), (groups[s], groups[s + 1])))
        if n == 1 or all(sh.rows[1] > sh.rows[0] for sh in out):
            return out
        n -= 1


def seams(plan: WindowPlan, shards: list[Shard]) -> list[Seam]:
    """The seam between each shard and the next (seam k between shards k and k + 1), empty ones included."""
    out = []
    for a, b in zip(shards, shards[1:]):
        start = plan.row_starts[b.window_rows[0]]  # where b's windows begin
        stop = max(start, plan.row_starts[a.window_rows[1] - 1] + plan.win_h)  # where a's end (empty if before)
        out.append(Seam(a.index, (start, stop), rows_touching(plan, start, stop) if stop > start else (0, 0)))
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


def edge_path(folder: str | Path, index: int, edge: str) -> Path:
    """Where shard ``index`` publishes what its windows predicted over the seam at its ``edge``."""
    if edge not in EDGES:
        raise ValueError(f"edge must be one of {EDGES}, not {edge!r}")
    return Path(folder) / f"shard-{index:04d}-edge-{edge}.npz"


def seam_part_path(folder: str | Path, seam: int, kind: str = "classes") -> Path:
    """Where the assembly publishes seam ``seam``'s rows of one output."""
    if kind not in PART_KINDS:
        raise ValueError(f"kind must be one of {PART_KINDS}, not {kind!r}")
    return Path(folder) / f"seam-{seam:04d}-{kind}.tif"


def shard_edges(plan: WindowPlan, shards: list[Shard], index: int) -> dict[str, Seam]:
    """The seams at shard ``index``'s edges that hold rows (top: with the shard before, bottom: after)."""
    all_seams = seams(plan, shards)
    edges = {"top": all_seams[index - 1] if index > 0 else None,
             "bottom": all_seams[index] if index < len(shards) - 1 else None}
    return {edge: seam for edge, seam in edges.items() if seam}


def remove_part_temporaries(folder: str | Path, index: int) -> list[Path]:
    """Delete what an interrupted run of shard ``index`` left half-written (only its claimant may call this)."""
    removed = []
    for p in Path(folder).glob(f".shard-{index:04d}-*.tmp.*"):
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _publish_once(tmp: Path, path: Path) -> bool:
    """Give the finished ``tmp`` its name ``path`` unless a file has it already (False: ``tmp`` is dropped)."""
    try:
        with open(tmp, "rb") as fh:  # on disk before it has a name others trust
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic, and refuses to replace an existing file
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


class EdgeRecorder:
    """What one shard's windows predict over the seams at its edges, kept as they come (``add``, in any
    order) and published once per edge (``publish``): for each window that reaches into a seam, its
    probabilities and valid mask over the seam's rows, or nothing when it was skipped (all nodata)."""

    def __init__(self, plan: WindowPlan, edges: dict[str, Seam]):
        self.plan = plan
        self.edges = edges
        self._kept: dict[str, dict[str, np.ndarray]] = {edge: {} for edge in edges}

    def add(self, index: int, probs: np.ndarray | None, valid: np.ndarray | None) -> None:
        row = index // self.plan.n_cols
        r0 = self.plan.row_starts[row]
        for edge, seam in self.edges.items():
            if not seam.window_rows[0] <= row < seam.window_rows[1] or probs is None:
                continue
            a, b = max(seam.rows[0] - r0, 0), min(seam.rows[1] - r0, self.plan.win_h)
            self._kept[edge][f"probs_{index}"] = np.array(probs[:, a:b])
            self._kept[edge][f"valid_{index}"] = np.array(valid[a:b]) if valid is not None else np.ones(
                (b - a, probs.shape[2]), bool)

    def publish(self, folder: str | Path, index: int) -> bool:
        """Publish each edge's file for shard ``index``; False when one was already there (then kept)."""
        published = True
        for edge, arrays in self._kept.items():
            path = edge_path(folder, index, edge)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp.npz")
            np.savez(tmp, **arrays)
            published = _publish_once(tmp, path) and published
        return published


def blend_seam(plan: WindowPlan, num_classes: int, seam: Seam, above: str | Path,
               below: str | Path) -> Iterator[Piece]:
    """The finished pieces of ``seam``'s rows, from the edge files of the shard above it and of the shard
    below: its windows replayed, in the plan's order, through the blender one worker uses (the rows of a
    window outside the seam are zeros; the cells they alone feed are cut away)."""
    with np.load(above) as a, np.load(below) as b:
        kept = {**{k: a[k] for k in a.files}, **{k: b[k] for k in b.files}}
    blender = StreamingBlender(plan, num_classes, window_rows=seam.window_rows)
    for index in range(seam.window_rows[0] * plan.n_cols, seam.window_rows[1] * plan.n_cols):
        part = kept.get(f"probs_{index}")
        probs = valid = None
        if part is not None:
            r0 = plan.row_starts[index // plan.n_cols]
            a = max(seam.rows[0] - r0, 0)
            probs = np.zeros((num_classes, plan.win_h, plan.win_w), part.dtype)
            valid = np.zeros((plan.win_h, plan.win_w), bool)
            probs[:, a : a + part.shape[1]] = part
            valid[a : a + part.shape[1]] = kept[f"valid_{index}"]
        for piece in blender.add(index, probs, valid):
            piece = clip_piece(piece, *seam.rows)
            if piece is not None:
                yield piece


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
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        return _publish_once(self._tmp, self.path)

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._ds.close()
        finally:
            self._tmp.unlink(missing_ok=True)
