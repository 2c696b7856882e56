"""The native zoom of a raster: the first zoom whose pixels are at least as fine as the raster's."""
from __future__ import annotations

import morecantile
import rasterio
from rio_tiler.io import Reader

from core.raster.zooms import native_zoom, raster_native_zoom

WM = morecantile.tms.get("WebMercatorQuad")


def test_nc_scene_28_5_m_pixels_are_zoom_13_not_the_nearest_zoom_12(nc_bands):
    with rasterio.open(nc_bands[0]) as ds:
        assert ds.res == (28.5, 28.5)
        assert raster_native_zoom(ds, WM) == 13
    with Reader(str(nc_bands[0]), tms=WM) as r:
        assert r.maxzoom == 12  # rio-tiler's nearest zoom: 38 m pixels, coarser than the scene's
        assert raster_native_zoom(r.dataset, WM) == 13


def test_native_zoom_edges():
    z13 = WM.matrix(13).cellSize
    assert native_zoom(WM, z13) == 13  # exactly a zoom's pixel size: that zoom
    assert native_zoom(WM, z13 * 1.01) == 13
    assert native_zoom(WM, z13 * 0.99) == 14
