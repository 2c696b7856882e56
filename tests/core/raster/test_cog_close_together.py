"""core.raster.cog.close_together: a prediction's class and probability COGs translated at once give the
same files as one after the other, and a failure in one still finishes (or cleans up) the other."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate

from core.raster.cog import class_cog_writer, close_together, probability_cog_writer
from core.raster.grid import Grid

CLASSES = [{"id": 0, "name": "water", "color": "#0000ff"}, {"id": 3, "name": "forest", "color": "#00aa00"},
           {"id": 7, "name": "urban", "color": "#aa0000"}]
GRID = Grid(CRS.from_epsg(32633), Affine(10, 0, 500000, 0, -10, 6000000), 1500, 1300)


def _writers(folder: Path):
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=(GRID.height, GRID.width)).transpose(2, 0, 1)
    classes = np.array([c["id"] for c in CLASSES], np.uint8)[probs.argmax(0)]
    everything = Window(0, 0, GRID.width, GRID.height)
    writer = class_cog_writer(folder / "map.tif", GRID, CLASSES, blocksize=256)
    writer.write(classes, everything)
    pwriter = probability_cog_writer(folder / "map_probabilities.tif", GRID, CLASSES, blocksize=256)
    pwriter.write(np.round(probs * 254).astype(np.uint8), everything)
    return writer, pwriter


def _every_level(path: Path) -> list[np.ndarray]:
    with rasterio.open(path) as ds:
        levels = [ds.read()] + [None] * len(ds.overviews(1))
    for i in range(1, len(levels)):
        with rasterio.open(path, overview_level=i - 1) as ov:
            levels[i] = ov.read()
    return levels


def test_closed_together_the_cogs_equal_those_closed_one_after_the_other(tmp_path):
    (tmp_path / "apart").mkdir()
    (tmp_path / "together").mkdir()
    for w in _writers(tmp_path / "apart"):
        w.close()
    close_together(_writers(tmp_path / "together"))
    for name in ("map.tif", "map_probabilities.tif"):
        apart, together = tmp_path / "apart" / name, tmp_path / "together" / name
        assert cog_validate(together)[0]
        a, b = _every_level(apart), _every_level(together)
        assert len(a) == len(b) >= 2  # overviews too
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    assert sorted(p.name for p in (tmp_path / "together").iterdir()) == sorted(
        p.name for p in (tmp_path / "apart").iterdir())  # no temporaries left


def test_one_failing_still_finishes_the_other_and_raises(tmp_path):
    writer, pwriter = _writers(tmp_path)
    pwriter._tmp.unlink()  # its translate finds no source: a failure inside GDAL
    with pytest.raises(Exception, match=r"part\.tif: No such file"):
        close_together([writer, None, pwriter])
    assert cog_validate(tmp_path / "map.tif")[0]
    assert not (tmp_path / "map_probabilities.tif").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif", "map.tif.aux.xml"]
