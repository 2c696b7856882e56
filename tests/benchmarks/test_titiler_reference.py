"""Benchmark C compares like with like: TiTiler (the `bench` extra) and our tile source render the same
class COG (a small one with a nodata corner, in UTM) to the same class colours, pixel for pixel but for
nearest-neighbour picks along class edges."""
from __future__ import annotations

import io

import morecantile
import numpy as np
import pytest
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.windows import Window

from core.raster.cog import class_cog_writer
from core.raster.grid import Grid
from service.tiles.sources import CogSource

pytest.importorskip("titiler.core", reason="TiTiler is in the bench extra: pip install '.[bench]'")

WM = morecantile.tms.get("WebMercatorQuad")
CLASSES = [{"id": 1, "name": "water", "color": "#1f78b4"}, {"id": 2, "name": "forest", "color": "#1b7837"},
           {"id": 3, "name": "urban", "color": "#e31a1c"}]


@pytest.fixture(scope="module")
def cog_with_nodata_corner(tmp_path_factory):
    """600 x 600 px of 30 m in UTM 17N: three classes in blocks, the top-left quarter nodata."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(1, 4, (20, 20)).astype(np.uint8)
    data = np.kron(coarse, np.ones((30, 30), np.uint8))
    data[:300, :300] = 255
    grid = Grid(CRS.from_epsg(32617), Affine(30, 0, 690000, 0, -30, 3960000), 600, 600)
    path = tmp_path_factory.mktemp("ref") / "classes.tif"
    with class_cog_writer(path, grid, CLASSES, blocksize=256) as w:
        w.write(data, Window(0, 0, 600, 600))
    return path


def _rgba(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


def test_titiler_and_our_tiles_show_the_same_classes(cog_with_nodata_corner):
    from fastapi.testclient import TestClient

    from benchmarks.titiler_reference import create_app

    src = CogSource(cog_with_nodata_corner, WM)
    colours = {tuple(int(c["color"][i:i + 2], 16) for i in (1, 3, 5)) for c in CLASSES}
    lon0, lat0, lon1, lat1 = src.geographic_bounds
    agree = total = 0
    with TestClient(create_app()) as ref:
        for t in WM.tiles(lon0, lat0, lon1, lat1, zooms=[src.maxzoom]):
            ours = _rgba(src.tile(t.x, t.y, t.z))
            r = ref.get(f"/cog/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png", params={"url": str(cog_with_nodata_corner)})
            assert r.status_code == 200, r.text
            theirs = _rgba(r.content)
            for img in (ours, theirs):
                assert {tuple(v) for v in np.unique(img[img[..., 3] == 255][:, :3], axis=0)} <= colours
            m = (ours[..., 3] > 0) | (theirs[..., 3] > 0)
            agree += int(np.all(ours[m] == theirs[m], axis=-1).sum())
            total += int(m.sum())
    assert total > 50_000
    assert agree / total >= 0.97, agree / total
