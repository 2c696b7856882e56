"""Labels: the real strata raster (another CRS), reprojection, palettes, RGB colours, vectors."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.warp import calculate_default_transform, reproject
from rasterio.enums import Resampling

from core.jobspec import IGNORE_INDEX
from core.raster.labels import Labels
from core.raster.scene import Scene


def _strata_counts(path):
    with rasterio.open(path) as ds:
        a = ds.read(1, masked=True)
    vals, counts = np.unique(a.compressed(), return_counts=True)
    return {int(v): int(n) for v, n in zip(vals, counts)}


def test_strata_in_epsg3358_read_onto_the_epsg32119_image_grid(nc_bands, nc_data, nc_classes):
    with rasterio.open(nc_data["strata"]) as ds:
        assert ds.crs.to_epsg() == 3358
    with Scene.open(nc_bands) as scene, Labels.open(nc_data["strata"], scene, nc_classes) as labels:
        assert scene.grid.crs.to_epsg() == 32119
        ids = labels.read()
    src = _strata_counts(nc_data["strata"])
    got = {c.id: int((ids == i).sum()) for i, c in enumerate(nc_classes)}
    # NAD83 vs NAD83(HARN) differ by well under a metre here (< 1/30 pixel): the grids coincide,
    # so every class keeps its exact pixel count (tolerance 0)
    assert got == src
    assert (ids == IGNORE_INDEX).sum() == 1  # strata's single nodata pixel


def test_labels_on_another_crs_and_resolution_are_reprojected_nearest(tmp_path, nc_bands, nc_data, nc_classes):
    """strata warped to UTM 17N at 30 m, then read back onto the image grid: class counts within 3%."""
    dst_crs = CRS.from_epsg(32617)
    with rasterio.open(nc_data["strata"]) as src:
        transform, width, height = calculate_default_transform(
            src.crs, dst_crs, src.width, src.height, *src.bounds, resolution=30.0
        )
        out = np.full((height, width), -99999, np.float32)
        reproject(rasterio.band(src, 1), out, dst_transform=transform, dst_crs=dst_crs,
                  dst_nodata=-99999, resampling=Resampling.nearest)
    p = tmp_path / "strata_utm.tif"
    with rasterio.open(p, "w", driver="GTiff", width=width, height=height, count=1, dtype="float32",
                       crs=dst_crs, transform=transform, nodata=-99999) as ds:
        ds.write(out, 1)
    with Scene.open(nc_bands) as scene, Labels.open(p, scene, nc_classes) as labels:
        ids = labels.read()
        cov = labels.coverage
    src = _strata_counts(nc_data["strata"])
    with rasterio.open(nc_data["strata"]) as ds:
        truth = ds.read(1)
    # documented tolerance: two nearest resamplings (28.5 m -> 30 m -> 28.5 m) move class edges by
    # at most a pixel, so each large class's count stays within 3% and >= 90% of pixels agree
    for i, c in enumerate(nc_classes):
        n = int((ids == i).sum())
        if src[c.id] > 1000:
            assert abs(n - src[c.id]) <= 0.03 * src[c.id], (c.name, n, src[c.id])
    agree = (ids.astype(np.float32) + 1 == truth).mean()
    assert agree > 0.9
    assert cov["valid_labelled_fraction"] > 0.99


def test_labels_window_matches_full_read(nc_bands, nc_data, nc_classes):
    from rasterio.windows import Window

    with Scene.open(nc_bands) as scene, Labels.open(nc_data["strata"], scene, nc_classes) as labels:
        full = labels.read()
        part = labels.read(Window(50, 60, 100, 80))
    np.testing.assert_array_equal(part, full[60:140, 50:150])


def test_partial_label_extent_is_intersected_and_the_loss_reported(tmp_path, nc_bands, nc_data, nc_classes):
    from rasterio.windows import Window

    with rasterio.open(nc_data["strata"]) as src:
        win = Window(0, 0, 244, 443)  # western half only
        prof = src.profile | {"width": 244, "height": 443, "transform": src.window_transform(win)}
        data = src.read(1, window=win)
    p = tmp_path / "strata_west.tif"
    with rasterio.open(p, "w", **prof) as ds:
        ds.write(data, 1)
    with Scene.open(nc_bands) as scene, Labels.open(p, scene, nc_classes) as labels:
        assert labels.footprint_fraction == pytest.approx(244 / 489, abs=1e-3)
        assert any("cover" in n for n in labels.notes)
        ids = labels.read()
        cov = labels.coverage
    assert (ids[:, 244:] == IGNORE_INDEX).all() and (ids[:, :244] != IGNORE_INDEX).mean() > 0.99
    assert 0.3 < cov["lost_fraction"] < 0.7


def _classes(*rgb):
    from core.jobspec import ClassSpec

    return [ClassSpec(id=10 * (i + 1), name=f"c{i}", color="#%02x%02x%02x" % c) for i, c in enumerate(rgb)]


def test_rgb_label_png_without_georeferencing_maps_colours_to_classes(tmp_path):
    from PIL import Image

    classes = _classes((255, 255, 255), (0, 0, 255), (0, 255, 0))  # ISPRS-like colours
    rgb = np.zeros((12, 16, 3), np.uint8)
    rgb[:, :] = (255, 255, 255)
    rgb[:6, :8] = (0, 0, 255)
    rgb[6:, 8:] = (0, 255, 0)
    rgb[0, 0] = (255, 0, 0)  # a colour that is no class
    Image.fromarray(rgb).save(tmp_path / "label.png")
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(tmp_path / "image.png")
    with Scene.open(tmp_path / "image.png") as scene, Labels.open(tmp_path / "label.png", scene, classes) as lab:
        assert lab.kind == "rgb" and scene.grid.crs is None
        ids = lab.read()
        from core.errors import LabelValuesError

        with pytest.raises(LabelValuesError, match="#ff0000"):
            lab.check_values()
    assert ids[0, 0] == IGNORE_INDEX
    assert (ids[1:6, :8] == 1).all() and (ids[6:, 8:] == 2).all() and ids[8, 2] == 0


def test_palette_png_maps_through_its_palette_colours(tmp_path):
    from PIL import Image

    classes = _classes((200, 0, 0), (0, 200, 0), (0, 0, 200))
    idx = np.zeros((10, 10), np.uint8)
    idx[:, 5:] = 3
    idx[5:, :] = 7
    im = Image.fromarray(idx, mode="P")
    pal = [0] * 768
    pal[0:3] = (0, 0, 200)      # index 0 -> class 2 (blue)
    pal[9:12] = (200, 0, 0)     # index 3 -> class 0 (red)
    pal[21:24] = (0, 200, 0)    # index 7 -> class 1 (green)
    im.putpalette(pal)
    im.save(tmp_path / "pal.png")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "img.png")
    with Scene.open(tmp_path / "img.png") as scene, Labels.open(tmp_path / "pal.png", scene, classes) as lab:
        assert lab.kind == "palette"
        ids = lab.read()
        lab.check_values()
    assert (ids[:5, :5] == 2).all() and (ids[:5, 5:] == 0).all() and (ids[5:] == 1).all()


def test_single_band_png_of_class_ids_loveda_style(tmp_path):
    from PIL import Image

    from core.jobspec import ClassSpec

    classes = [ClassSpec(id=i, name=f"c{i}", color="#%02x0000" % (i * 20)) for i in range(1, 8)]
    a = (np.arange(64).reshape(8, 8) % 7 + 1).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "mask.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img.png")
    with Scene.open(tmp_path / "img.png") as scene, Labels.open(tmp_path / "mask.png", scene, classes) as lab:
        assert lab.kind == "ids"
        np.testing.assert_array_equal(lab.read(), a - 1)


def _square(x0, y0, x1, y1):
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def test_geojson_polygons_in_wgs84_are_rasterised_on_the_image_grid(tmp_path, nc_bands, nc_classes):
    import json

    from rasterio.warp import transform_geom

    with Scene.open(nc_bands) as scene:
        g = scene.grid
        # two squares given in image coordinates, written in lon/lat
        t = g.transform
        sq_water = _square(*(t @ (100, 300)), *(t @ (150, 250)))
        sq_forest = _square(*(t @ (300, 200)), *(t @ (340, 100)))
        feats = [
            {"type": "Feature", "properties": {"cover": 6}, "geometry": transform_geom(g.crs, "EPSG:4326", sq_water)},
            {"type": "Feature", "properties": {"cover": 5}, "geometry": transform_geom(g.crs, "EPSG:4326", sq_forest)},
        ]
        p = tmp_path / "labels.geojson"
        p.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
        with Labels.open(p, scene, nc_classes, label_property="cover") as lab:
            ids = lab.read()
    water, forest = 5, 4  # train ids of classes 6 and 5
    assert abs(int((ids == water).sum()) - 50 * 50) <= 2 * 50 * 2
    assert abs(int((ids == forest).sum()) - 40 * 100) <= 2 * 140 * 2
    assert ids[275, 125] == water and ids[150, 320] == forest and ids[10, 10] == IGNORE_INDEX


def test_geopackage_polygons_with_one_class_for_all(tmp_path, nc_bands, nc_classes):
    pytest.importorskip("pyogrio")
    import pyogrio.raw
    import struct

    with Scene.open(nc_bands) as scene:
        t = scene.grid.transform
        x0, y0 = t @ (200, 200)
        x1, y1 = t @ (260, 140)
        ring = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
        wkb = struct.pack("<BII", 1, 3, 1) + struct.pack("<I", len(ring)) + b"".join(struct.pack("<dd", *p) for p in ring)
        p = tmp_path / "labels.gpkg"
        pyogrio.raw.write(p, geometry=np.array([wkb], dtype=object), field_data=[np.array(["x"])], fields=["note"],
                      geometry_type="Polygon", crs="EPSG:32119", driver="GPKG")
        with Labels.open(p, scene, nc_classes, label_class=2) as lab:
            ids = lab.read()
    assert abs(int((ids == 1).sum()) - 60 * 60) <= 4 * 60
    assert ids[170, 230] == 1 and ids[100, 100] == IGNORE_INDEX
