"""COG writing (real GDAL COG driver, rio-cogeo validation) and the torch-free prediction-window parts: window plan,
blending weights, streaming blender, regions."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate

from core.errors import ConfigError, EmptyRegionError
from core.raster.cog import class_cog_writer, probability_cog_writer, read_class_tags, remove_stale_temporaries
from core.raster.grid import Grid
from core.raster.prediction_windows import (
    PredictOptions,
    StreamingBlender,
    WindowPlan,
    axis_starts,
    axis_weights,
    resolve_region,
)
from rasterio.crs import CRS

CLASSES = [
    {"id": 1, "name": "developed", "color": "#d7301f"},
    {"id": 5, "name": "forest", "color": "#1b7837"},
    {"id": 6, "name": "water", "color": "#2166ac"},
]
GRID = Grid(CRS.from_epsg(32119), Affine(28.5, 0, 630534.0, 0, -28.5, 228114.0), 1300, 1100)


def _classes_in_windows(writer, rng, nodata_rows=100):
    ids = np.array([1, 5, 6], np.uint8)
    for r in range(0, GRID.height, 300):
        for c in range(0, GRID.width, 400):
            h, w = min(300, GRID.height - r), min(400, GRID.width - c)
            a = ids[rng.integers(0, 3, (h, w))]
            if r == 0:
                a[:nodata_rows] = 255
            writer.write(a, Window(c, r, w, h))


def test_class_cog_is_a_valid_cog_with_overviews_colours_and_class_names(tmp_path):
    out = tmp_path / "classes.tif"
    with class_cog_writer(out, GRID, CLASSES, blocksize=256) as w:
        _classes_in_windows(w, np.random.default_rng(0))
    ok, errors, _ = cog_validate(str(out))
    assert ok, errors
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert (ds.crs, ds.transform, ds.width, ds.height) == (GRID.crs, GRID.transform, GRID.width, GRID.height)
        assert ds.block_shapes[0] == (256, 256)
        assert ds.overviews(1)[:2] == [2, 4]
        assert ds.nodata == 255 and ds.dtypes[0] == "uint8"
        assert ds.colormap(1)[5] == (0x1B, 0x78, 0x37, 255)
        assert ds.colormap(1)[255][3] == 0  # nodata transparent
        assert [c.name for c in read_class_tags(ds.tags())] == ["developed", "forest", "water"]
        assert json.loads(ds.tags()["CLASSES"])[2]["color"] == "#2166ac"
        data = ds.read(1)
        assert (data[:100] == 255).all() and set(np.unique(data[100:])) == {1, 5, 6}
        # mode resampling: overview values are classes, never averages of them
        assert set(np.unique(ds.read(1, out_shape=(275, 325)))) <= {1, 5, 6, 255}
    # temporaries removed; the class names' sidecar stays (tests/core/raster/test_cog_categories.py)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif", "classes.tif.aux.xml"]


def test_large_class_ids_use_uint16_and_a_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "c.tif"
    out.write_bytes(b"previous result")
    big = [{"id": 300, "name": "a", "color": "#000000"}, {"id": 7, "name": "b", "color": "#ffffff"}]
    with pytest.raises(RuntimeError):
        with class_cog_writer(out, GRID, big) as w:
            assert (w.dtype, w.nodata) == ("uint16", 65535)
            w.write(np.full((10, 10), 300, np.uint16), Window(0, 0, 10, 10))
            raise RuntimeError("model crashed")
    assert out.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["c.tif"]


def test_a_killed_writers_temporaries_are_removed_and_nothing_else(tmp_path):
    w = class_cog_writer(tmp_path / "c.tif", GRID, [{"id": 1, "name": "a", "color": "#000000"}])
    w.write(np.ones((10, 10), np.uint8), Window(0, 0, 10, 10))
    w._ds.close()  # what a SIGKILL leaves: the temporary file, never closed by the writer
    (tmp_path / "kept.tif").write_bytes(b"a result")
    (tmp_path / ".hidden-but-mine.tif").write_bytes(b"not a writer's")
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name.endswith(".part.tif") for p in removed] == [True]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden-but-mine.tif", "kept.tif"]


def test_probability_cog_bands_scale_and_average_overviews(tmp_path):
    out = tmp_path / "p.tif"
    small = Grid(GRID.crs, GRID.transform, 700, 600)
    with probability_cog_writer(out, small, CLASSES, blocksize=256) as w:
        w.write(np.full((3, 600, 700), 127, np.uint8), Window(0, 0, 700, 600))
    assert cog_validate(str(out))[0]
    with rasterio.open(out) as ds:
        assert ds.count == 3 and ds.descriptions == ("developed", "forest", "water")
        assert ds.scales[0] == pytest.approx(1 / 254) and ds.nodata == 255
        assert ds.overviews(1)


# window plan and weights ---------------------------------------------------------------------------
@pytest.mark.parametrize("length", [100, 512, 513, 1000, 1200, 4096, 8192])
def test_axis_starts_cover_with_at_least_the_overlap(length):
    s = axis_starts(length, 512, 64)
    size = min(512, length)
    assert s[0] == 0 and s[-1] + size == length
    assert all(b > a for a, b in zip(s, s[1:]))
    assert all(a + size - b >= 64 for a, b in zip(s, s[1:]))


@pytest.mark.parametrize("blend", ["hann", "none"])
def test_neighbouring_weights_sum_to_one(blend):
    s = axis_starts(1300, 256, 48)
    acc = np.zeros(1300)
    for i, st in enumerate(s):
        acc[st : st + 256] += axis_weights(s, 256, i, blend)
    assert np.allclose(acc, 1.0, atol=1e-6)
    w = axis_weights(s, 256, 1, "hann")
    assert w[0] < 0.01 and w[128] == 1.0 and w[-1] < 0.01  # tapered where shared, flat inside
    assert axis_weights(s, 256, 0, "hann")[0] == 1.0  # nothing else covers the raster's edge


@pytest.mark.parametrize("blend", ["hann", "average", "none"])
@pytest.mark.parametrize("shape,window,overlap", [((700, 1300), 256, 40), ((1000, 1000), 512, 64), ((90, 3000), 256, 100)])
def test_blender_emits_every_pixel_once_and_reproduces_consistent_windows(blend, shape, window, overlap):
    h, w = shape
    full = np.random.default_rng(1).random((3, h, w)).astype(np.float32)
    plan = WindowPlan(h, w, window, overlap, blend)
    blender = StreamingBlender(plan, 3)
    out = np.zeros_like(full)
    hits = np.zeros(shape, int)
    for pw in plan:
        win = pw.window
        sl = (slice(win.row_off, win.row_off + win.height), slice(win.col_off, win.col_off + win.width))
        for piece in blender.add(pw.index, full[:, sl[0], sl[1]]):
            pr = slice(piece.window.row_off, piece.window.row_off + piece.window.height)
            pc = slice(piece.window.col_off, piece.window.col_off + piece.window.width)
            out[:, pr, pc] = piece.probs
            hits[pr, pc] += 1
    assert blender.done and (hits == 1).all()
    np.testing.assert_allclose(out, full, atol=1e-6)


def test_blender_never_emits_what_only_skipped_windows_cover_and_holds_one_overlap_strip():
    plan = WindowPlan(2048, 1024, 256, 32, "hann")
    blender = StreamingBlender(plan, 4)
    emitted = np.zeros((2048, 1024), bool)
    for pw in plan:
        skip = pw.row == 0  # the first row of windows is all nodata
        probs = None if skip else np.full((4, 256, 256), 0.25, np.float32)
        for piece in blender.add(pw.index, probs):
            emitted[piece.window.row_off : piece.window.row_off + piece.window.height,
                    piece.window.col_off : piece.window.col_off + piece.window.width] = True
    top = plan.row_starts[1]  # rows only the skipped windows cover
    assert not emitted[:top].any() and emitted[top:].all()
    # what it holds is bounded by the strip shared by two rows of windows, not by the raster's height
    overlap = plan.row_starts[0] + 256 - plan.row_starts[1]
    strip = 4 * 4 * overlap * 1024 + 5 * overlap * 1024 + 4 * 5 * 256 * overlap * 2
    assert 0 < blender.peak_cells_bytes <= strip
    with pytest.raises(ValueError):
        StreamingBlender(plan, 4).add(3, None)  # out of order


def test_options_are_checked_with_field_names():
    with pytest.raises(ConfigError) as e:
        PredictOptions(overlap=400, window=512).validate()
    assert e.value.field == "overlap"
    with pytest.raises(ConfigError):
        PredictOptions(blend="gaussian").validate()


def test_regions_window_fractions_and_aoi():
    assert resolve_region(GRID, None)[0] == Window(0, 0, 1300, 1100)
    assert resolve_region(GRID, (1200, 1000, 500, 500))[0] == Window(1200, 1000, 100, 100)
    from core.jobspec import RegionSpec

    assert resolve_region(GRID, RegionSpec(columns=(0.5, 1.0)))[0] == Window(650, 0, 650, 1100)
    with pytest.raises(EmptyRegionError):
        resolve_region(GRID, Window(2000, 0, 10, 10))
    x0, y0 = GRID.transform @ (100, 200)
    x1, y1 = GRID.transform @ (300, 260)
    aoi = {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
           "crs": {"type": "name", "properties": {"name": "EPSG:32119"}}}
    win, geoms = resolve_region(GRID, aoi)
    assert win == Window(100, 200, 200, 60) and len(geoms) == 1
