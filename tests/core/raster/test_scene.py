"""Scene: stacked band files, per-band nodata, windows, reads onto other grids, bad files."""
from __future__ import annotations

import numpy as np
import rasterio
from rasterio.windows import Window

from core.raster.scene import Scene


def test_stacked_read_equals_per_file_reads(nc_bands):
    with Scene.open(nc_bands) as scene:
        assert scene.count == 6
        assert scene.dtypes == ["float32"] * 5 + ["int16"]
        rw = scene.read()
    for b, path in enumerate(nc_bands):
        with rasterio.open(path) as ds:
            a = ds.read(1, masked=True)
        # every pixel valid in the stack is valid in this band and holds the file's value
        assert not a.mask[rw.valid].any()
        np.testing.assert_array_equal(rw.data[b][rw.valid], a.data[rw.valid].astype(np.float32))


def test_nodata_border_is_masked_across_bands_of_different_dtypes(nc_bands):
    masks = []
    for path in nc_bands:
        with rasterio.open(path) as ds:
            masks.append(ds.read_masks(1) > 0)
    expected = np.logical_and.reduce(masks)
    with Scene.open(nc_bands) as scene:
        rw = scene.read()
    np.testing.assert_array_equal(rw.valid, expected)
    # band 7 (int16, nodata -32768) has a wider border than the float bands (nodata -99999)
    assert masks[5].sum() < masks[0].sum()
    assert 0.55 < rw.valid.mean() < 0.7
    assert not rw.valid[0].any() and not rw.valid[:, 0].any()  # the outer frame is nodata
    assert (rw.data[:, ~rw.valid] == 0).all()  # no -99999 / -32768 sentinels leak out
    assert rw.data[:, rw.valid].min() >= 0 and rw.data.max() <= 255


def test_window_partly_outside_reads_invalid_there(nc_bands):
    with Scene.open(nc_bands) as scene:
        inside = scene.read(Window(200, 150, 40, 40))
        edge = scene.read(Window(scene.grid.width - 20, 150, 40, 40))
    assert inside.data.shape == (6, 40, 40) and inside.valid.all()
    assert edge.data.shape == (6, 40, 40) and not edge.valid[:, 20:].any()
    assert inside.grid.transform == scene.grid.window(Window(200, 150, 40, 40)).transform


def test_read_onto_own_window_grid_is_a_plain_read(nc_bands):
    with Scene.open(nc_bands) as scene:
        w = Window(100, 120, 64, 48)
        a = scene.read(w)
        b = scene.read(onto=scene.grid.window(w))
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.valid, b.valid)


def test_read_onto_coarser_grid_averages_the_ground(nc_bands):
    with Scene.open(nc_bands) as scene:
        coarse = scene.grid.with_resolution(57.0)  # 2x the pixel size
        assert (coarse.width, coarse.height) == (244, 222) or abs(coarse.width - 244.5) <= 1
        lo = scene.read(onto=coarse, resampling="average")
        hi = scene.read()
    # a 2x2 block mean of the full-resolution read at an interior point
    r, c = 100, 120
    block = hi.data[:, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].reshape(6, -1).mean(axis=1)
    assert lo.valid[r, c]
    np.testing.assert_allclose(lo.data[:, r, c], block, rtol=1e-5)


def test_open_dataset_is_accepted_and_left_open(nc_bands):
    with rasterio.open(nc_bands[0]) as ds:
        scene = Scene.open(ds)
        assert scene.count == 1
        scene.close()
        assert not ds.closed


def test_alpha_band_is_a_mask_not_a_band(tmp_path):
    from rasterio.enums import ColorInterp

    data = np.arange(3 * 20 * 30, dtype=np.uint8).reshape(3, 20, 30)
    alpha = np.full((20, 30), 255, np.uint8)
    alpha[:, :10] = 0
    p = tmp_path / "rgba.tif"
    with rasterio.open(p, "w", driver="GTiff", width=30, height=20, count=4, dtype="uint8", photometric="RGB") as ds:
        ds.write(data, [1, 2, 3])
        ds.write(alpha, 4)
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    with Scene.open(p) as scene:
        assert scene.count == 3
        rw = scene.read()
    assert not rw.valid[:, :10].any() and rw.valid[:, 10:].all()
    np.testing.assert_array_equal(rw.data[:, :, 10:], data[:, :, 10:])


def test_internal_mask_is_honoured(tmp_path):
    data = np.full((1, 16, 16), 7, np.uint8)
    p = tmp_path / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(p, "w", driver="GTiff", width=16, height=16, count=1, dtype="uint8") as ds:
            ds.write(data)
            m = np.full((16, 16), 255, np.uint8)
            m[4:8, 4:8] = 0
            ds.write_mask(m)
    with Scene.open(p) as scene:
        rw = scene.read()
    assert rw.valid.sum() == 256 - 16 and not rw.valid[4:8, 4:8].any()


def test_nan_pixels_are_invalid(tmp_path):
    data = np.ones((2, 8, 8), np.float32)
    data[1, 2, 3] = np.nan
    p = tmp_path / "nan.tif"
    with rasterio.open(p, "w", driver="GTiff", width=8, height=8, count=2, dtype="float32") as ds:
        ds.write(data)
    with Scene.open(p) as scene:
        rw = scene.read()
    assert rw.valid.sum() == 63 and not rw.valid[2, 3] and rw.data[1, 2, 3] == 0


def test_stacked_band_on_another_grid_is_resampled_onto_the_first(tmp_path, nc_bands):
    """Like a 20 m Sentinel-2 band stacked with 10 m ones: here band 2 at twice NC's pixel size."""
    from rasterio.enums import Resampling

    with rasterio.open(nc_bands[1]) as src:
        t = src.transform
        half = src.read(1, out_shape=(src.height // 2, src.width // 2), resampling=Resampling.nearest)
        prof = src.profile | {"width": src.width // 2, "height": src.height // 2,
                              "transform": rasterio.Affine(t.a * 2, 0, t.c, 0, t.e * 2, t.f)}
    coarse = tmp_path / "b20_57m.tif"
    with rasterio.open(coarse, "w", **prof) as dst:
        dst.write(half, 1)
    with Scene.open([nc_bands[0], coarse]) as scene:
        assert scene.count == 2 and scene.grid.res == (28.5, 28.5)
        rw = scene.read(resampling="nearest")
    # nearest from the 57 m band: each fine pixel holds the value of the coarse pixel it lies in
    r, c = 201, 151
    assert rw.valid[r, c] and rw.data[1, r, c] == half[r // 2, c // 2]
    inner = rw.valid[: 2 * half.shape[0], : 2 * half.shape[1]]
    up = np.repeat(np.repeat(half, 2, axis=0), 2, axis=1).astype(np.float32)
    np.testing.assert_array_equal(rw.data[1][: up.shape[0], : up.shape[1]][inner], up[inner])
    assert abs(rw.valid.mean() - 0.846) < 0.02


def test_tiles_without_georeferencing_resample_by_pixel_size(tmp_path):
    """Non-georeferenced tiles (ISPRS/LoveDA style) can still be read at another pixel size."""
    from PIL import Image

    from core.raster.warp import resample_to_grid

    a = np.zeros((40, 60, 3), np.uint8)
    a[:, 30:] = 200
    a[:20, :, 1] = 100
    Image.fromarray(a).save(tmp_path / "tile.png")
    with Scene.open(tmp_path / "tile.png") as scene:
        assert scene.grid.crs is None
        half = scene.grid.with_resolution(2.0)
        rw = scene.read(onto=half, resampling="nearest")
    assert rw.data.shape == (3, 20, 30) and rw.valid.all()
    assert rw.data[0, 5, 10] == 0 and rw.data[0, 5, 20] == 200 and rw.data[1, 5, 5] == 100 and rw.data[1, 15, 5] == 0
    back = resample_to_grid(rw.data[0], half, scene.grid, resampling="nearest")
    np.testing.assert_array_equal(back, a[:, :, 0])
