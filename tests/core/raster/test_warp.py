"""CRS names for records and messages."""
from __future__ import annotations

import rasterio
from rasterio.crs import CRS

from core.raster.warp import crs_label, crs_name


def test_crs_name_is_rasterio_s_string_for_a_file_crs_without_authority_and_for_codes(nc_bands):
    with rasterio.open(nc_bands[0]) as ds:
        file_crs = ds.crs
    fresh = CRS.from_wkt(file_crs.to_wkt())  # a new object each time: the cache is keyed by WKT, not identity
    assert crs_name(file_crs) == fresh.to_string() == crs_name(fresh)
    assert crs_name("EPSG:32617") == "EPSG:32617"
    assert crs_name(None) is None
    assert crs_label(None) == "a local or unknown CRS"
    local = CRS.from_wkt('LOCAL_CS["bench",UNIT["metre",1]]')
    assert crs_label(local) == "a local or unknown CRS"
