"""The one imagery reader: band files stacked through a VRT or read one by one, the same tiles and points
either way, one reader per file version, pooled handles, and lattice pixels that do not depend on the area."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from core.errors import UnreadableRasterError
from core.raster.lattice import Lattice
from core.raster.reader import ImageReader, open_imagery, tile_matrix_set

WM = tile_matrix_set("WebMercatorQuad")
UTM = CRS.from_epsg(32617)


def _band(path, values: np.ndarray, transform: Affine, nodata=None):
    h, w = values.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype=values.dtype.name,
                       crs=UTM, transform=transform, nodata=nodata) as ds:
        ds.write(values, 1)
    return path


@pytest.fixture()
def bands_one_grid(tmp_path):
    """Three 64 x 64 bands of 30 m on one grid; the int16 band marks its corner nodata (-32768)."""
    t = Affine(30, 0, 690000, 0, -30, 3960000)
    rng = np.random.default_rng(0)
    b1 = _band(tmp_path / "b1.tif", rng.uniform(0, 100, (64, 64)).astype(np.float32), t)
    b2 = _band(tmp_path / "b2.tif", rng.uniform(100, 200, (64, 64)).astype(np.float32), t)
    v3 = rng.integers(0, 1000, (64, 64)).astype(np.int16)
    v3[:8, :8] = -32768
    b3 = _band(tmp_path / "b3.tif", v3, t, nodata=-32768)
    return [b1, b2, b3]


@pytest.fixture()
def bands_two_grids(tmp_path):
    """A 30 m band and a 60 m band over the same ground: not stackable by a VRT."""
    b1 = _band(tmp_path / "fine.tif", np.full((64, 64), 7, np.uint8), Affine(30, 0, 690000, 0, -30, 3960000))
    b2 = _band(tmp_path / "coarse.tif", np.full((32, 32), 9, np.uint8), Affine(60, 0, 690000, 0, -60, 3960000))
    return [b1, b2]


def _centre_tile(reader: ImageReader, z: int):
    with reader.tiler(WM) as r:
        w, s, e, n = r.get_geographic_bounds(WM.rasterio_geographic_crs)
    return WM.tile((w + e) / 2, (s + n) / 2, z)


def test_band_files_on_one_grid_read_as_one_stack_like_each_file_alone(bands_one_grid):
    stack = ImageReader(bands_one_grid)
    assert stack.stacked and stack.count == 3 and stack.crs == "EPSG:32617"
    t = _centre_tile(stack, 14)
    img = stack.tile(t.x, t.y, t.z, WM, indexes=(3, 1))
    for i, path in ((0, bands_one_grid[2]), (1, bands_one_grid[0])):
        alone = ImageReader([path]).tile(t.x, t.y, t.z, WM).array
        # where both have data (masks differ: the stack's is rio-tiler's dataset-wide one)
        seen = ~np.ma.getmaskarray(img.array)[i] & ~np.ma.getmaskarray(alone)[0]
        assert seen.sum() > 1000
        assert np.array_equal(img.array.data[i][seen], alone.data[0][seen].astype(np.float32))
    # each band its own nodata: the int16 corner is missing from band 3's stretch, not counted as -32768
    low, _ = stack.percentiles((2, 98), 1024)[2]
    assert low >= 0


def test_band_files_on_other_grids_are_read_one_by_one(bands_two_grids):
    reader = ImageReader(bands_two_grids)
    assert not reader.stacked and reader.count == 2
    t = _centre_tile(reader, 14)
    img = reader.tile(t.x, t.y, t.z, WM)
    assert img.count == 2
    assert set(np.unique(img.array[0].compressed())) == {7} and set(np.unique(img.array[1].compressed())) == {9}
    with reader.tiler() as r:
        lon, lat = r.get_geographic_bounds(WM.rasterio_geographic_crs)[:2]
    pt = reader.point(lon + 0.001, lat + 0.001)
    assert [float(v) for v in pt.array.data] == [7.0, 9.0]


def test_one_reader_per_file_version(bands_one_grid):
    first = open_imagery(bands_one_grid)
    assert open_imagery(bands_one_grid) is first
    st = os.stat(bands_one_grid[0])
    os.utime(bands_one_grid[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten: a new version
    assert open_imagery(bands_one_grid) is not first
    os.remove(bands_one_grid[1])
    with pytest.raises(OSError):
        open_imagery(bands_one_grid)


def test_a_file_that_is_not_an_image_is_a_typed_error(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    with pytest.raises(UnreadableRasterError, match="bad.tif"):
        ImageReader([bad])


def test_handles_are_pooled_and_never_shared_between_threads(bands_one_grid):
    reader = ImageReader(bands_one_grid)
    with reader.tiler(WM) as a:
        pass
    with reader.tiler(WM) as b:
        assert b is a  # given back, then taken again
        seen = []
        worker = threading.Thread(target=lambda: seen.append(reader.tiler(WM).__enter__()))
        worker.start()
        worker.join()
        assert seen[0] is not b  # in use here: the other thread opened its own
    with reader.tiler(WM, warp=True) as w:
        assert w is not a and w.dataset.crs == WM.rasterio_crs  # warped onto the TMS CRS once
    reader.close()


def test_memo_makes_once_per_reader(bands_one_grid):
    reader = ImageReader(bands_one_grid)
    calls = []
    for _ in range(3):
        assert reader.memo("k", lambda: calls.append(1) or 42) == 42
    assert calls == [1]
    assert reader.percentiles((2, 98), 1024) is reader.percentiles((2, 98), 1024)


def test_lattice_pixels_do_not_depend_on_the_area_asked(bands_one_grid):
    reader = ImageReader(bands_one_grid)
    lat = Lattice.for_tms(WM, reader.native_res(WM.rasterio_crs))
    with reader.tiler(WM) as r:
        w, s, e, n = r.get_geographic_bounds(WM.rasterio_geographic_crs)
    xs, ys = WM.xy((w + e) / 2, (s + n) / 2)
    c0, r0, _, _ = lat.span(xs, ys, xs, ys)
    whole, valid = reader.lattice_pixels(lat, c0 - 20, r0 - 20, c0 + 20, r0 + 20)
    assert valid.all() and whole.shape == (3, 40, 40)
    part, pvalid = reader.lattice_pixels(lat, c0 - 5, r0, c0 + 20, r0 + 20)
    assert np.array_equal(part, whole[:, 20:, 15:]) and np.array_equal(pvalid, valid[20:, 15:])
