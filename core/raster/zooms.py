"""The zoom level of a raster's native resolution in a tile matrix set: one rule for tilejson, info and live tiles.

rio-tiler's readers pick the zoom whose pixel size is *nearest* the raster's, which for NC's 28.5 m
pixels at 35.7 degrees N (35 m in Web Mercator) is z12's 38 m: a map stops there and never shows
the native pixels. The native zoom is the first whose pixels are at least as fine as the raster's
(z13's 19 m), morecantile's ``zoom_for_res(..., zoom_level_strategy="upper")``.
"""
from __future__ import annotations

from rasterio.warp import calculate_default_transform


def native_zoom(tms, resolution: float) -> int:
    """The coarsest zoom of ``tms`` whose pixel size is no larger than ``resolution`` (in the TMS's CRS units)."""
    return int(tms.zoom_for_res(resolution, zoom_level_strategy="upper"))


def raster_native_zoom(ds, tms) -> int:
    """``native_zoom`` of an open dataset, its pixel size measured after reprojection into the TMS's CRS."""
    if ds.crs == tms.rasterio_crs:
        a, e = ds.transform.a, ds.transform.e
    else:
        t, _, _ = calculate_default_transform(ds.crs, tms.rasterio_crs, ds.width, ds.height, *ds.bounds)
        a, e = t.a, t.e
    return native_zoom(tms, max(abs(a), abs(e)))
