"""Band statistics: streaming over valid pixels equals a direct masked computation; JSON round trip."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from core.raster.scene import Scene
from core.raster.stats import BandStats, compute_stats, normalize


def _direct(nc_bands, cols=None):
    arrs = []
    for p in nc_bands:
        with rasterio.open(p) as ds:
            arrs.append(ds.read(1, masked=True).astype(np.float64))
    stack = np.ma.stack(arrs)
    valid = ~np.ma.getmaskarray(stack).any(axis=0)
    if cols is not None:
        sel = np.zeros_like(valid)
        sel[:, cols[0] : cols[1]] = True
        valid &= sel
    vals = np.ma.getdata(stack)[:, valid]
    return vals.mean(axis=1), vals.std(axis=1), vals.shape[1]


def test_stats_ignore_nodata_and_match_a_direct_masked_computation(nc_bands):
    mean, std, n = _direct(nc_bands)
    with Scene.open(nc_bands) as scene:
        st = compute_stats([scene], block=97)  # odd block size: many partial blocks
    np.testing.assert_allclose(st.mean, mean, rtol=1e-9)
    np.testing.assert_allclose(st.std, std, rtol=1e-9)
    assert st.count == n
    assert min(st.min) >= 0 and max(st.max) <= 255  # -99999 / -32768 never counted


def test_stats_over_a_region(nc_bands):
    mean, std, n = _direct(nc_bands, cols=(0, 293))
    with Scene.open(nc_bands) as scene:
        st = compute_stats([scene], [Window(0, 0, 293, scene.grid.height)], block=128)
    np.testing.assert_allclose(st.mean, mean, rtol=1e-9)
    assert st.count == n


def test_stats_json_round_trip_and_normalize(tmp_path, nc_bands):
    with Scene.open(nc_bands) as scene:
        st = compute_stats([scene])
        rw = scene.read()
    p = st.save(tmp_path / "stats.json")
    st2 = BandStats.load(p)
    assert st2 == st
    z = normalize(rw.data, st2, rw.valid)
    zz = z[:, rw.valid].astype(np.float64)
    np.testing.assert_allclose(zz.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(zz.std(axis=1), 1, atol=1e-4)
    assert (z[:, ~rw.valid] == 0).all()


def test_empty_region_raises(nc_bands):
    from core.errors import EmptyRegionError

    with Scene.open(nc_bands) as scene, pytest.raises(EmptyRegionError):
        compute_stats([scene], [Window(0, 0, 5, 5)])  # the corner is all nodata
