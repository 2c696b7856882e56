"""Small raster writers for tests (edge cases real data cannot give)."""
from __future__ import annotations

import numpy as np
import rasterio


def copy_with(src_path, dst_path, *, window=None, transform=None, crs=None, data=None, **profile):
    """Copy a single-band raster, optionally a window of it, on a changed transform/CRS or with new data."""
    with rasterio.open(src_path) as src:
        prof = src.profile
        arr = src.read(1, window=window) if data is None else data
        if window is not None:
            prof.update(width=int(window.width), height=int(window.height), transform=src.window_transform(window))
    if transform is not None:
        prof["transform"] = transform
    if crs is not None:
        prof["crs"] = crs
    prof.update(width=arr.shape[-1], height=arr.shape[-2], **profile)
    with rasterio.open(dst_path, "w", **prof) as dst:
        dst.write(arr, 1)
    return dst_path


def warp_copy(src_paths, dst_path, dst_crs, res):
    """Stack single-band files and warp them into another CRS/resolution as one float32 GeoTIFF."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(src_paths[0]) as s0:
        transform, width, height = calculate_default_transform(
            s0.crs, dst_crs, s0.width, s0.height, *s0.bounds, resolution=res
        )
    out = np.full((len(src_paths), height, width), -99999, np.float32)
    for i, p in enumerate(src_paths):
        with rasterio.open(p) as src:
            band = src.read(1).astype(np.float32)
            band[src.read_masks(1) == 0] = np.nan
            dst = np.full((height, width), np.nan, np.float32)
            reproject(band, dst, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                      dst_crs=dst_crs, src_nodata=np.nan, dst_nodata=np.nan, resampling=Resampling.bilinear)
            out[i] = np.where(np.isnan(dst), -99999, dst)
    with rasterio.open(dst_path, "w", driver="GTiff", width=width, height=height, count=len(src_paths),
                       dtype="float32", crs=dst_crs, transform=transform, nodata=-99999) as ds:
        ds.write(out)
    return dst_path
