"""Shards of whole window rows (core.raster.prediction_shards) and a COG assembled from parts through a VRT
(core.raster.cog.CogWriter(parts=...)): every output row owned by exactly one shard, every window row that
reaches a shard's rows run by it, the count rule, and parts that become the same COG a single writer makes."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from core.raster.cog import class_cog_writer, probability_cog_writer
from core.raster.grid import Grid
from core.raster.prediction_shards import (
    PartWriter, part_path, remove_part_temporaries, seams, shard_count, split_plan,
)
from core.raster.prediction_windows import WindowPlan

CLASSES = [{"id": 0, "name": "water", "color": "#0000ff"}, {"id": 4, "name": "forest", "color": "#00aa00"}]


@pytest.mark.parametrize("height,window,overlap,n", [(1000, 128, 16, 4), (1000, 128, 64, 3), (300, 256, 32, 5),
                                                      (129, 64, 32, 2), (5000, 256, 32, 7), (16384, 256, 32, 4)])
def test_each_window_row_runs_once_and_each_row_is_a_shards_or_a_seams(height, window, overlap, n):
    plan = WindowPlan(height, 50, window, overlap)
    shards = split_plan(plan, n)
    assert len(shards) == min(n, plan.n_rows)
    assert [s.window_rows[0] for s in shards] + [plan.n_rows] == [0] + [s.window_rows[1] for s in shards]
    own = [s.window_rows[1] - s.window_rows[0] for s in shards]
    assert max(own) - min(own) <= 1  # as even as whole window rows allow

    def covering(row: int) -> set[int]:
        return {i for i, r in enumerate(plan.row_starts) if r <= row < r + plan.win_h}

    borders = seams(plan, shards)
    assert shards[0].rows[0] == 0 and shards[-1].rows[1] == height
    for seam, a, b in zip(borders, shards, shards[1:]):
        assert a.rows[1] == seam.rows[0] < seam.rows[1] == b.rows[0]
        for row in range(*seam.rows):  # reached by windows of both neighbours, of no other shard
            assert covering(row) & set(range(*a.window_rows)) and covering(row) & set(range(*b.window_rows))
            assert covering(row) <= set(range(*seam.window_rows)) <= set(range(a.window_rows[0], b.window_rows[1]))
    for s in shards:
        assert s.rows[0] < s.rows[1]
        assert all(covering(row) <= set(range(*s.window_rows)) for row in range(*s.rows))  # its windows' alone


def test_shards_whose_neighbours_windows_would_meet_over_them_are_merged():
    plan = WindowPlan(1000, 50, 128, 64)  # 15 window rows 62 px apart: a one-row shard has no row of its own
    shards = split_plan(plan, 15)
    assert 1 < len(shards) < 15 and all(s.rows[0] < s.rows[1] for s in shards)


def test_shard_count_follows_the_request_else_the_pixel_setting():
    assert shard_count(4, 10, 1000) == 4
    assert shard_count(1, 10**12, 1000) == 1  # asked for one piece
    assert shard_count(None, 1000, 1000) == 1  # not larger than the setting: one piece
    assert shard_count(None, 1001, 1000) == 2
    assert shard_count(None, 16384**2, 64 * 1024**2) == 4
    assert shard_count(None, 10**12, 0) == 1  # 0: only on request


def test_a_part_is_published_once_and_never_replaced(tmp_path):
    grid = Grid("EPSG:32617", Affine(10, 0, 500000, 0, -10, 4000000), 100, 60)
    path = part_path(tmp_path, 2)
    first = PartWriter(path, grid, (20, 40), count=1, dtype="uint8", nodata=255, blocksize=64)
    first.write(np.full((20, 100), 4, np.uint8), Window(0, 20, 100, 20))
    with pytest.raises(ValueError, match="outside"):
        first.write(np.zeros((5, 100), np.uint8), Window(0, 38, 100, 5))
    assert first.close() is True
    before = path.stat()
    second = PartWriter(path, grid, (20, 40), count=1, dtype="uint8", nodata=255, blocksize=64)
    second.write(np.zeros((20, 100), np.uint8), Window(0, 20, 100, 20))
    assert second.close() is False  # another run's part: this one is dropped
    after = path.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    with rasterio.open(path) as ds:
        assert (ds.height, ds.width) == (20, 100) and (ds.read(1) == 4).all()
        assert ds.transform.f == 4000000 - 20 * 10  # placed at its rows
    # a killed run's temporary file goes when the shard is claimed again
    stale = tmp_path / f".{path.name}.deadbeef0000.tmp.tif"
    stale.write_bytes(b"x")
    assert remove_part_temporaries(tmp_path, 2) == [stale] and path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_parts_assemble_into_the_cog_one_writer_makes(tmp_path):
    grid = Grid("EPSG:32617", Affine(10, 0, 500000, 0, -10, 4000000), 700, 530)
    rng = np.random.default_rng(0)
    classes = rng.choice(np.array([0, 4], np.uint8), size=(530, 700))
    classes[200:260, 100:400] = 255  # nodata
    probs = rng.integers(0, 255, size=(2, 530, 700), dtype=np.uint8)
    with class_cog_writer(tmp_path / "one.tif", grid, CLASSES, blocksize=128) as w:
        w.write(classes, Window(0, 0, 700, 530))
    with probability_cog_writer(tmp_path / "one_p.tif", grid, CLASSES, blocksize=128) as w:
        w.write(probs, Window(0, 0, 700, 530))
    bands = [(0, 170), (170, 171), (171, 530)]
    cparts, pparts = [], []
    for i, (a, b) in enumerate(bands):
        for kind, data, count, nodata, out in (("classes", classes, 1, 255, cparts),
                                               ("probabilities", probs, 2, 255, pparts)):
            pw = PartWriter(part_path(tmp_path / "parts", i, kind), grid, (a, b), count=count, dtype="uint8",
                            nodata=nodata, blocksize=128)
            pw.write(data[..., a:b, :], Window(0, a, 700, b - a))
            pw.close()
            out.append((part_path(tmp_path / "parts", i, kind), a))
    mosaic = class_cog_writer(tmp_path / "sh.tif", grid, CLASSES, blocksize=128, parts=cparts)
    with rasterio.open(mosaic._tmp) as vrt:  # read in the COG's blocks (the VRT default's small reads were slow)
        assert vrt.driver == "VRT" and vrt.block_shapes == [(128, 128)]
    mosaic.close()
    probability_cog_writer(tmp_path / "sh_p.tif", grid, CLASSES, blocksize=128, parts=pparts).close()
    for one, sh in (("one.tif", "sh.tif"), ("one_p.tif", "sh_p.tif")):
        with rasterio.open(tmp_path / one) as x, rasterio.open(tmp_path / sh) as y:
            assert x.profile == y.profile and x.tags() == y.tags() and x.scales == y.scales
            assert x.descriptions == y.descriptions and x.overviews(1) == y.overviews(1) == [2, 4, 8]
            assert np.array_equal(x.read(), y.read())
            assert np.array_equal(x.read(out_shape=(x.count, 133, 175)), y.read(out_shape=(x.count, 133, 175)))
    with rasterio.open(tmp_path / "sh.tif") as y:
        assert y.colormap(1)[4] == (0, 170, 0, 255) and y.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    assert (tmp_path / "sh.tif.aux.xml").read_text() == (tmp_path / "one.tif.aux.xml").read_text()
    assert not [p.name for p in tmp_path.glob(".*")]  # the VRT and other temporaries are gone
    with pytest.raises(ValueError, match="does not fit"):
        class_cog_writer(tmp_path / "bad.tif", grid, CLASSES, parts=[(cparts[0][0], 400)])
