"""Tile inference task (queue "tiles"): one map tile of a registered image through a model bundle.

    render_model_tile(request)                         request: built by service/api/routes/tiles.py
      bundle  <- LRU per process, keyed by (bundle path, version)         (loaded once, not per tile)
      scene   <- LRU per process (the dataset's open band files)
      lattice <- one pixel grid per (dataset, TMS): the TMS CRS at the image's own resolution (so the
                 model sees pixels at the scale it was trained on), origin at the TMS's corner;
                 model windows of `window` px start at every multiple of window/2 px of it
      the tile's bounds -> the lattice pixels under it -> the windows that touch them
        missing windows: Scene.read(onto=their union) -> normalise (bundle's target statistics)
                         -> predict_logits in batches -> softmax x hann weights -> window LRU
      blend: sum of weighted probabilities (the hann weights of overlapping windows sum to 1)
      -> argmax -> nearest onto the tile's pixels -> ClassPalette.png (nodata transparent)
      -> written atomically at request["out"] (the API's disk cache) -> {"status": "ok", ...}

No seams by construction: a lattice pixel's class depends only on where it is (the windows around
it), never on which tile asked, so neighbouring tiles (and zoom levels) agree exactly where they
meet, as if the whole image had been predicted once with hann blending. Every window gives each of
its pixels at least a quarter window of context where that pixel counts much. The PNG goes through
the shared disk, the small status through the Celery result backend.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from celery import Task

from core.errors import ConfigError, GeoadaptError
from core.lru import LRU, MISSING
from core.raster import zooms
from core.raster.grid import Grid
from core.raster.warp import crs_name
from core.task_names import RENDER_MODEL_TILE
from core.tiles import ClassPalette
from workers.celery_app import app

log = logging.getLogger("geoadapt.tiles")

#: bundles and scenes kept per worker process
MAX_BUNDLES = 4
MAX_SCENES = 8
#: lattice pixels a side of the blocks read from a dataset, and how many blocks a dataset keeps
READ_BLOCK = 512
MAX_BLOCKS = 16
#: seconds one tile may take before the worker gives up on it
TILE_TIME_LIMIT_S = 120


class _TileTask(Task):
    """A task whose results go to the tile result backend, whatever backend the jobs' app has (none)."""

    _tile_backend = None

    @property
    def backend(self):  # noqa: D401  (Celery reads task.backend to store results)
        if self._tile_backend is None:
            settings = getattr(self.app, "settings", None)
            if settings is None:
                return self.app.backend
            from celery.app.backends import by_url

            cls, url = by_url(settings.tile_result_backend_url, self.app.loader)
            opts = {"engine_options": {"connect_args": {"timeout": 30}}} if url and url.startswith("sqlite") else {}
            self._tile_backend = cls(app=self.app, url=url, **opts)
        return self._tile_backend

    @backend.setter
    def backend(self, value):
        self._tile_backend = value


# ---- per-process caches ----------------------------------------------------------------------------

def _load_bundle(path: str):
    import torch

    from models.bundle import load_bundle

    torch.set_num_threads(max(1, int(os.environ.get("GEOADAPT_TILE_THREADS", "1"))))
    return load_bundle(path)


class _OpenScene:
    """A dataset's scene, its native resolution in a TMS CRS, and blocks of it read onto a lattice.

    Reads go through fixed blocks of the lattice (READ_BLOCK px square, cached): each reprojection
    has a set-up cost (PROJ builds the datum transformation, tens of ms for some CRSs), and a block
    read onto the same grid always gives the same pixels, so a window assembled from blocks is
    the same whichever tile asked for it.
    """

    def __init__(self, paths: tuple[str, ...]):
        from core.raster.scene import Scene

        self.scene = Scene.open([Path(p) for p in paths])
        self.lock = threading.Lock()  # GDAL handles must not be used by two threads at once
        self._res: dict[str, tuple[float, float]] = {}
        self._blocks = LRU(MAX_BLOCKS)

    def native_res(self, crs) -> tuple[float, float]:
        """(x, y) pixel size of the image expressed in ``crs`` units, near the image's centre."""
        key = crs_name(crs)
        if key not in self._res:
            from rasterio.warp import calculate_default_transform

            g = self.scene.grid
            with self.lock:
                t, _, _ = calculate_default_transform(g.crs, crs, g.width, g.height, *g.bounds)
            self._res[key] = (abs(t.a), abs(t.e))
        return self._res[key]

    def _block(self, lat: "Lattice", bx: int, by: int, resampling: str):
        def read():
            with self.lock:
                return self.scene.read(onto=lat.grid(bx * READ_BLOCK, by * READ_BLOCK, READ_BLOCK, READ_BLOCK),
                                       resampling=resampling)

        return self._blocks.get((lat.key, resampling, bx, by), read)

    def pixels(self, lat: "Lattice", c0: int, r0: int, c1: int, r1: int,
               resampling: str = "nearest") -> tuple[np.ndarray, np.ndarray]:
        """(data (bands, h, w) float32, valid (h, w)) of lattice pixels [c0, c1) x [r0, r1)."""
        B = READ_BLOCK
        data = np.zeros((self.scene.count, r1 - r0, c1 - c0), np.float32)
        valid = np.zeros((r1 - r0, c1 - c0), bool)
        for by in range(r0 // B, (r1 - 1) // B + 1):
            for bx in range(c0 // B, (c1 - 1) // B + 1):
                blk = self._block(lat, bx, by, resampling)
                x0, x1 = max(c0, bx * B), min(c1, (bx + 1) * B)
                y0, y1 = max(r0, by * B), min(r1, (by + 1) * B)
                src = (slice(y0 - by * B, y1 - by * B), slice(x0 - bx * B, x1 - bx * B))
                dst = (slice(y0 - r0, y1 - r0), slice(x0 - c0, x1 - c0))
                data[(slice(None), *dst)] = blk.data[(slice(None), *src)]
                valid[dst] = blk.valid[src]
        return data, valid


_bundles = LRU(MAX_BUNDLES)
_scenes = LRU(MAX_SCENES, close=lambda s: s.scene.close())


# ---- the tile --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lattice:
    """The pixels live inference runs on, for one dataset in one TMS (all zooms share it).

    Pixel (col, row) covers x in [x0 + col*rx, x0 + (col+1)*rx) and y in (y0 - (row+1)*ry, y0 - row*ry];
    model windows are ``window`` px square and start at every multiple of ``stride`` = window/2.
    """

    crs: Any
    x0: float
    y0: float
    rx: float
    ry: float
    window: int

    @property
    def stride(self) -> int:
        return self.window // 2

    @property
    def key(self) -> tuple:
        """What identifies the lattice's pixels (not its windows) in caches."""
        return (crs_name(self.crs), self.x0, self.y0, self.rx, self.ry)

    def grid(self, col: int, row: int, width: int, height: int) -> Grid:
        t = Affine(self.rx, 0.0, self.x0 + col * self.rx, 0.0, -self.ry, self.y0 - row * self.ry)
        return Grid(self.crs, t, width, height)

    def span(self, left: float, bottom: float, right: float, top: float) -> tuple[int, int, int, int]:
        """(col0, row0, col1, row1), end exclusive: the lattice pixels that bounds touch."""
        c0 = math.floor((left - self.x0) / self.rx + 1e-9)
        c1 = math.ceil((right - self.x0) / self.rx - 1e-9)
        r0 = math.floor((self.y0 - top) / self.ry + 1e-9)
        r1 = math.ceil((self.y0 - bottom) / self.ry - 1e-9)
        return c0, r0, max(c1, c0 + 1), max(r1, r0 + 1)

    def windows(self, c0: int, r0: int, c1: int, r1: int) -> list[tuple[int, int]]:
        """(kx, ky) of the windows touching pixels [c0, c1) x [r0, r1); window k starts at k*stride."""
        s = self.stride
        kx = range(c0 // s - 1, (c1 - 1) // s + 1)
        ky = range(r0 // s - 1, (r1 - 1) // s + 1)
        return [(i, j) for j in ky for i in kx]


def make_lattice(tms, native_res: tuple[float, float], window: int) -> Lattice:
    import morecantile

    if tms.is_variable:
        raise ConfigError(f"tile matrix set {tms.id} has variable matrix widths; live inference needs a regular one",
                          field="tileMatrixSetId")
    b = tms.xy_bounds(morecantile.Tile(0, 0, tms.minzoom))
    return Lattice(tms.rasterio_crs, b.left, b.top, float(native_res[0]), float(native_res[1]), int(window))


def hann(window: int) -> np.ndarray:
    """(window, window) weights; copies shifted by window/2 sum to exactly 1 (sin^2 + cos^2)."""
    w = np.sin(np.pi * (np.arange(window) + 0.5) / window) ** 2
    return np.outer(w, w).astype(np.float32)


def _predict_windows(bundle, opened: "_OpenScene", lat: Lattice, keys: list[tuple[int, int]],
                     resampling: str) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray] | None]:
    """Weighted probabilities (K, w, w) float16 and weights (w, w) float32 of each window; None: no data.

    Each window is assembled from fixed read blocks and predicted alone: reading onto a grid made for
    the occasion (GDAL's approximate reprojection) or batching (other kernels) could pick a pixel or
    round a logit differently depending on what came with it, and a window must come out the same
    whichever tile asks for it.
    """
    import torch

    from core.raster.stats import normalize

    s, w = lat.stride, lat.window
    stats = bundle.resolve_stats(None)
    weights = hann(w)
    out: dict = {}
    for k in keys:
        data, valid = opened.pixels(lat, k[0] * s, k[1] * s, k[0] * s + w, k[1] * s + w, resampling)
        if not valid.any():
            out[k] = None
            continue
        x = torch.from_numpy(normalize(data, stats, valid)[None])
        probs = bundle.predict_logits(x).softmax(dim=1)[0].cpu().numpy()
        wv = weights * valid
        out[k] = ((probs * wv).astype(np.float16), wv)
    return out


_windows = LRU(int(os.environ.get("GEOADAPT_TILE_WINDOW_CACHE", "128")))


def predict_area(bundle, opened: "_OpenScene", lat: Lattice, c0: int, r0: int, c1: int, r1: int,
                 resampling: str = "nearest", cache_key: tuple = ()) -> np.ndarray:
    """Class ids (train ids; 255 = no data) of lattice pixels [c0, c1) x [r0, r1), blended from the
    windows around them. The same pixel gets the same class whatever area is asked for."""
    from core.jobspec import IGNORE_INDEX

    s, w = lat.stride, lat.window
    keys = lat.windows(c0, r0, c1, r1)
    where = (*cache_key, *lat.key, lat.window)
    found = {k: _windows.peek((where, k)) for k in keys}
    missing = [k for k, v in found.items() if v is MISSING]
    if missing:
        for k, v in _predict_windows(bundle, opened, lat, missing, resampling).items():
            _windows.put((where, k), v)
            found[k] = v
    acc = np.zeros((bundle.num_classes, r1 - r0, c1 - c0), np.float32)
    wsum = np.zeros((r1 - r0, c1 - c0), np.float32)
    for (kx, ky), v in found.items():
        if v is None:
            continue
        wp, wv = v
        # the part of window (kx, ky) inside the area, in both frames
        ax0, ax1 = max(c0, kx * s), min(c1, kx * s + w)
        ay0, ay1 = max(r0, ky * s), min(r1, ky * s + w)
        if ax0 >= ax1 or ay0 >= ay1:
            continue
        win = (slice(ay0 - ky * s, ay1 - ky * s), slice(ax0 - kx * s, ax1 - kx * s))
        area = (slice(ay0 - r0, ay1 - r0), slice(ax0 - c0, ax1 - c0))
        acc[(slice(None), *area)] += wp[(slice(None), *win)]
        wsum[area] += wv[win]
    ids = acc.argmax(axis=0).astype(np.uint8)
    ids[wsum <= 0] = IGNORE_INDEX
    return ids


_tms_sets: dict = {}


def _tms(tms_id: str):
    """morecantile.tms.get deep-copies the set on every call: keep one per id."""
    import morecantile

    if tms_id not in _tms_sets:
        _tms_sets[tms_id] = morecantile.tms.get(tms_id)
    return _tms_sets[tms_id]


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def render_tile(request: dict[str, Any]) -> dict[str, Any]:
    """Predict and render one tile (see the module docstring); the plain function behind the task."""
    import morecantile

    from core.jobspec import IGNORE_INDEX

    t0 = time.perf_counter()
    tms = _tms(request["tms"])
    z, x, y = int(request["z"]), int(request["x"]), int(request["y"])
    out = Path(request["out"])
    window = int(request.get("window", 256))
    levels = int(request.get("zoom_out_levels", 1))
    resampling = request.get("resampling", "nearest")
    matrix = tms.matrix(z)
    size_x, size_y = int(matrix.tileWidth), int(matrix.tileHeight)

    images = tuple(request["images"])
    opened = _scenes.get(images, lambda: _OpenScene(images))
    native = opened.native_res(tms.rasterio_crs)
    native_zoom = zooms.native_zoom(tms, min(native))
    if z < native_zoom - levels:
        return {"status": "out_of_range",
                "message": f"zoom {z} is too far out for live inference on this image (zoom {native_zoom - levels} "
                           f"or more); predict the image to a COG for a view of all of it"}
    lat = make_lattice(tms, native, window)
    b = tms.xy_bounds(morecantile.Tile(x, y, z))
    c0, r0, c1, r1 = lat.span(b.left, b.bottom, b.right, b.top)
    if not opened.pixels(lat, c0, r0, c1, r1, resampling)[1].any():
        _write_atomic(out.with_suffix(".empty"), b"")
        return {"status": "empty", "seconds": round(time.perf_counter() - t0, 3)}
    bundle = _bundles.get((request["bundle"], request.get("version")), lambda: _load_bundle(request["bundle"]))
    t_model = time.perf_counter()
    key = (request["bundle"], request.get("version"), images, resampling)
    train_ids = predict_area(bundle, opened, lat, c0, r0, c1, r1, resampling, key)
    t_blend = time.perf_counter()
    # each tile pixel takes the lattice pixel under its centre
    xs = b.left + (np.arange(size_x) + 0.5) * (b.right - b.left) / size_x
    ys = b.top - (np.arange(size_y) + 0.5) * (b.top - b.bottom) / size_y
    cols = np.clip(np.floor((xs - lat.x0) / lat.rx).astype(np.int64) - c0, 0, c1 - c0 - 1)
    rows = np.clip(np.floor((lat.y0 - ys) / lat.ry).astype(np.int64) - r0, 0, r1 - r0 - 1)
    tile = train_ids[rows][:, cols]
    valid = tile != IGNORE_INDEX
    png = ClassPalette(bundle.classes).png(bundle.to_class_ids(tile, valid), valid)
    _write_atomic(out, png)
    return {"status": "ok", "valid_pixels": int(valid.sum()), "lattice_pixels": [r1 - r0, c1 - c0],
            "seconds": {"model": round(t_blend - t_model, 3), "total": round(time.perf_counter() - t0, 3)}}


@app.task(name=RENDER_MODEL_TILE, base=_TileTask, bind=True, ignore_result=False, acks_late=False,
          soft_time_limit=TILE_TIME_LIMIT_S, time_limit=TILE_TIME_LIMIT_S + 30)
def render_model_tile(self, request: dict) -> dict:
    """Thin: the request's own errors come back as a status the API turns into a 4xx."""
    try:
        return render_tile(request)
    except GeoadaptError as e:
        return {"status": "error", "type": e.code, "message": e.message, "field": e.field}
    except Exception as e:  # a bug or an environment problem: the API answers 502 with the reason
        log.exception("tile %s/%s/%s failed", request.get("z"), request.get("x"), request.get("y"))
        return {"status": "failed", "message": f"{type(e).__name__}: {e}"}
