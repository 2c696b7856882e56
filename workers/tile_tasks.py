"""Tile inference task (queue "tiles"): one map tile of a registered image through a model bundle.

    render_model_tile(request)                         request: built by service/api/routes/tiles.py
      bundle  <- LRU per process, keyed by (bundle path, version)         (loaded once, not per tile)
      reader  <- core.raster.reader.open_imagery (the process's one reader of the image's files)
      lattice <- one pixel grid per (image, TMS): the TMS CRS at the image's own resolution, origin at
                 the TMS's corner (core/raster/lattice.py)
      the tile's bounds -> the lattice pixels under it (the area)
        -> the pixels of every model window touching it (models.inference.context.context_span),
           read in fixed blocks -> normalise (bundle's statistics)
        -> predict_with_context: the one predictor's windows, hann weights and blending, on windows at
           fixed lattice positions (window cache per process) -> class probabilities of the area
      -> argmax -> nearest onto the tile's pixels -> ClassPalette.png (nodata transparent)
      -> written atomically at request["out"] (the API's disk cache) -> {"status": "ok", ...}

No seams: predict_with_context gives a lattice pixel the same class whichever tile asks (see its
module), so neighbouring tiles and zoom levels agree exactly where they meet. The PNG goes through
the shared disk, the small status through the Celery result backend.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from celery import Task

from core.errors import GeoadaptError, UnreadableRasterError
from core.files import atomic_writer
from core.lru import LRU
from core.raster import zooms
from core.raster.lattice import Lattice
from core.raster.reader import ImageReader, open_imagery, tile_matrix_set
from core.task_names import RENDER_MODEL_TILE
from core.tiles import ClassPalette
from workers.celery_app import app

log = logging.getLogger("geoadapt.tiles")

#: bundles kept per worker process
MAX_BUNDLES = 4
#: predicted windows kept per worker process, unless GEOADAPT_TILE_WINDOW_CACHE says otherwise
WINDOW_CACHE = 128
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


_bundles = LRU(MAX_BUNDLES)
_windows: LRU | None = None


def _window_cache() -> LRU:
    """The predicted windows of this process, sized when first used (not at import)."""
    global _windows
    if _windows is None:
        _windows = LRU(int(os.environ.get("GEOADAPT_TILE_WINDOW_CACHE", WINDOW_CACHE)))
    return _windows


def _open_images(images: tuple[str, ...]) -> ImageReader:
    try:
        return open_imagery(images)
    except OSError as e:  # gone since the request was made: the request's error, not the worker's
        raise UnreadableRasterError(f"image file not found: {Path(e.filename or images[0]).name}") from None


# ---- the tile --------------------------------------------------------------------------------------

def predict_area(bundle, reader: ImageReader, lattice: Lattice, window: int, area: tuple[int, int, int, int],
                 resampling: str = "nearest", cache_key: tuple = ()) -> np.ndarray:
    """Class ids (train ids; 255 = no data) of lattice pixels ``area`` = (c0, r0, c1, r1), blended from the
    windows around them. The same pixel gets the same class whatever area is asked for."""
    from core.jobspec import IGNORE_INDEX
    from models.inference.context import context_span, predict_with_context
    from models.inference.windowed import WindowModel

    data, valid = reader.lattice_pixels(lattice, *context_span(area, window), resampling)
    x = bundle.normalization.for_prediction()(data, valid)  # the bundle's own default statistics
    model = WindowModel(bundle, device=bundle.device)
    probs, has_class = predict_with_context(model, x, valid, area, window, bundle.num_classes,
                                            cache=_window_cache(), cache_key=(*cache_key, *lattice.key, window))
    ids = probs.argmax(axis=0).astype(np.uint8)
    ids[~has_class] = IGNORE_INDEX
    return ids


def render_tile(request: dict[str, Any]) -> dict[str, Any]:
    """Predict and render one tile (see the module docstring); the plain function behind the task."""
    import morecantile

    from core.jobspec import IGNORE_INDEX

    t0 = time.perf_counter()
    tms = tile_matrix_set(request["tms"])
    z, x, y = int(request["z"]), int(request["x"]), int(request["y"])
    out = Path(request["out"])
    window = int(request.get("window", 256))
    levels = int(request.get("zoom_out_levels", 1))
    resampling = request.get("resampling", "nearest")
    matrix = tms.matrix(z)
    size_x, size_y = int(matrix.tileWidth), int(matrix.tileHeight)

    images = tuple(request["images"])
    reader = _open_images(images)
    native = reader.native_res(tms.rasterio_crs)
    native_zoom = zooms.native_zoom(tms, min(native))
    if z < native_zoom - levels:
        return {"status": "out_of_range",
                "message": f"zoom {z} is too far out for live inference on this image (zoom {native_zoom - levels} "
                           f"or more); predict the image to a COG for a view of all of it"}
    lat = Lattice.for_tms(tms, native)
    b = tms.xy_bounds(morecantile.Tile(x, y, z))
    c0, r0, c1, r1 = lat.span(b.left, b.bottom, b.right, b.top)
    if not reader.lattice_pixels(lat, c0, r0, c1, r1, resampling)[1].any():
        with atomic_writer(out.with_suffix(".empty")):
            pass
        return {"status": "empty", "seconds": round(time.perf_counter() - t0, 3)}
    bundle = _bundles.get((request["bundle"], request.get("version")), lambda: _load_bundle(request["bundle"]))
    t_model = time.perf_counter()
    key = (request["bundle"], request.get("version"), images, resampling)
    train_ids = predict_area(bundle, reader, lat, window, (c0, r0, c1, r1), resampling, key)
    t_blend = time.perf_counter()
    # each tile pixel takes the lattice pixel under its centre
    xs = b.left + (np.arange(size_x) + 0.5) * (b.right - b.left) / size_x
    ys = b.top - (np.arange(size_y) + 0.5) * (b.top - b.bottom) / size_y
    cols = np.clip(np.floor((xs - lat.x0) / lat.rx).astype(np.int64) - c0, 0, c1 - c0 - 1)
    rows = np.clip(np.floor((lat.y0 - ys) / lat.ry).astype(np.int64) - r0, 0, r1 - r0 - 1)
    tile = train_ids[rows][:, cols]
    valid = tile != IGNORE_INDEX
    png = ClassPalette(bundle.classes).png(bundle.to_class_ids(tile, valid), valid)
    with atomic_writer(out) as fh:
        fh.write(png)
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
