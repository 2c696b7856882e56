"""Reprojection between grids: the source window that covers a grid, and in-memory array warping."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window

from core.errors import MissingCRSError
from core.raster.grid import Grid, window_intersection

# A stand-in projected CRS so GDAL can resample pixel grids that carry no georeferencing.
_PIXEL_CRS = CRS.from_epsg(3857)


def resampling_of(name: str | Resampling) -> Resampling:
    return name if isinstance(name, Resampling) else Resampling[name]


def require_crs(grid: Grid, what: str) -> None:
    if grid.crs is None:
        raise MissingCRSError(f"{what} has no CRS, but one is needed to place it on another grid")


def bounds_in(grid: Grid, crs) -> tuple[float, float, float, float]:
    """The grid's footprint as (left, bottom, right, top) in another CRS (densified edges)."""
    if grid.crs is None or crs is None or grid.crs == crs:
        return grid.bounds
    try:
        return transform_bounds(grid.crs, crs, *grid.bounds, densify_pts=21)
    except Exception:  # GDAL's CPLE_* errors (not public classes): e.g. an engineering (LOCAL_CS) CRS
        raise MissingCRSError(
            f"no transformation between {crs_label(grid.crs)} and {crs_label(crs)}: a CRS is unknown or local, "
            "so the rasters cannot be placed on one another"
        ) from None


def crs_name(crs) -> str | None:
    """The CRS as rasterio writes it (``EPSG:xxxx`` where PROJ finds an authority, else WKT); None for None.

    rasterio asks PROJ to identify the CRS on every ``to_string()``, which takes 60-80 ms for a CRS
    read from a file without an authority code (most GeoTIFFs); the answer is cached by WKT.
    """
    if crs is None:
        return None
    return _crs_name_of_wkt(CRS.from_user_input(crs).to_wkt())


@lru_cache(maxsize=256)
def _crs_name_of_wkt(wkt: str) -> str:
    return CRS.from_wkt(wkt).to_string()


def crs_label(crs) -> str:
    """A short name for messages: EPSG:xxxx, else 'a local or unknown CRS' (not a page of WKT)."""
    text = crs_name(crs) or ""
    return text if text and len(text) <= 40 else "a local or unknown CRS"


def covering_window(src: Grid, dst: Grid, pad: int = 2) -> Window | None:
    """The window of ``src`` (clipped to it) that covers ``dst``'s footprint, padded for resampling kernels.

    None when they share no ground.
    """
    left, bottom, right, top = bounds_in(dst, src.crs)
    if not all(math.isfinite(v) for v in (left, bottom, right, top)):
        return None
    # corners through the inverse transform (works for south-up pixel grids too, unlike from_bounds)
    inv = ~src.transform
    cols, rows = zip(*(inv @ (x, y) for x in (left, right) for y in (bottom, top)))
    c0, c1 = math.floor(min(cols)) - pad, math.ceil(max(cols)) + pad
    r0, r1 = math.floor(min(rows)) - pad, math.ceil(max(rows)) + pad
    return window_intersection(Window(c0, r0, c1 - c0, r1 - r0), src.full_window())


def reproject_array(
    data: np.ndarray,
    src: Grid,
    dst: Grid,
    *,
    resampling: str | Resampling = "nearest",
    src_nodata: float | None = None,
    dst_nodata: float | None = None,
    dtype=None,
) -> np.ndarray:
    """Warp ``data`` ((h, w) or (b, h, w), on ``src``) onto ``dst``; cells with no source get ``dst_nodata``.

    For float data use NaN as nodata: GDAL leaves nodata inputs out of the resampling kernels.
    """
    require_crs(src, "the source raster")
    require_crs(dst, "the target grid")
    squeeze = data.ndim == 2
    arr = data[None] if squeeze else data
    dtype = dtype or arr.dtype
    fill = dst_nodata if dst_nodata is not None else 0
    out = np.full((arr.shape[0], dst.height, dst.width), fill, dtype=dtype)
    reproject(
        source=arr,
        destination=out,
        src_transform=src.transform,
        src_crs=src.crs,
        dst_transform=dst.transform,
        dst_crs=dst.crs,
        src_nodata=src_nodata,
        dst_nodata=dst_nodata,
        resampling=resampling_of(resampling),
        num_threads=1,
    )
    return out[0] if squeeze else out


def pixel_grids(*grids: Grid) -> tuple[Grid, ...]:
    """When every grid lacks a CRS (tiles without georeferencing), give them one stand-in CRS so they
    can be resampled onto each other by their (pixel) transforms; otherwise return them unchanged."""
    if all(g.crs is None for g in grids):
        return tuple(Grid(_PIXEL_CRS, g.transform, g.width, g.height) for g in grids)
    return grids


def resample_to_grid(
    data: np.ndarray, src: Grid, dst: Grid, *, resampling: str | Resampling = "nearest", nodata: float | None = None
) -> np.ndarray:
    """Put an in-memory array from one grid onto another (e.g. a class map from the GSD-matched grid back
    onto the target's own grid). Non-georeferenced grids of the same shape pass through unchanged."""
    if src.same_as(dst):
        return data
    src, dst = pixel_grids(src, dst)
    return reproject_array(data, src, dst, resampling=resampling, src_nodata=nodata, dst_nodata=nodata)
