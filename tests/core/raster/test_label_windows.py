"""Label windows: polygons that limit a scene's labels to the part that was labelled (a semi job's target).

Real GDAL files: the NC scene and its strata labels, GeoPackages written through core.raster.vector_write,
and a tiny scene without a CRS."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from rasterio.windows import Window

from core.errors import MissingCRSError, NoOverlapError, SpecError
from core.jobspec import IGNORE_INDEX, DomainSpec, load_job_spec
from core.raster.domain import Domain
from core.raster.labels import Labels
from core.raster.scene import Scene
from core.raster.vector_write import write_gpkg
from tests.helpers import train_spec, write_tiny_scene


def _box(transform, col, row, size) -> dict:
    ring = [transform @ (c, r) for c, r in ((col, row), (col + size, row), (col + size, row + size),
                                             (col, row + size), (col, row))]
    return {"type": "Polygon", "coordinates": [[(float(x), float(y)) for x, y in ring]]}


@pytest.fixture(scope="module")
def nc_windows(nc_bands, tmp_path_factory):
    """Two 40 px windows over valid NC ground, as a GeoPackage in the scene's CRS."""
    with Scene.open(nc_bands) as scene:
        t, crs = scene.grid.transform, scene.grid.crs
    path = tmp_path_factory.mktemp("win") / "windows.gpkg"
    write_gpkg(path, [(_box(t, 200, 200, 40), {"rank": 1}), (_box(t, 100, 260, 40), {"rank": 2})], crs, layer="windows")
    return path


def test_raster_labels_hold_only_inside_the_windows(nc_bands, nc_data, nc_classes, nc_windows):
    with Scene.open(nc_bands) as scene:
        with Labels.open(nc_data["strata"], scene, nc_classes) as everywhere:
            full = everywhere.read()
        with Labels.open(nc_data["strata"], scene, nc_classes, windows=nc_windows) as lab:
            ids = lab.read()
            part = lab.read(Window(190, 190, 60, 60))
            inside = lab.inside_windows(scene.grid)
    assert inside.sum() == 2 * 40 * 40
    assert (ids[~inside] == IGNORE_INDEX).all()
    assert np.array_equal(ids[inside], full[inside])  # inside: the raster's own labels, untouched
    assert (ids != IGNORE_INDEX).sum() > 0.9 * 2 * 40 * 40
    # a window read: only its overlap with the first label window (rows/cols 200-239) is labelled
    assert (part[:10] == IGNORE_INDEX).all() and (part[:, :10] == IGNORE_INDEX).all()
    assert (part[10:50, 10:50] != IGNORE_INDEX).mean() > 0.9 and (part[50:] == IGNORE_INDEX).all()


def test_windows_in_another_crs_are_reprojected(nc_bands, nc_data, nc_classes, tmp_path):
    from rasterio.warp import transform_geom

    with Scene.open(nc_bands) as scene:
        geom = transform_geom(scene.grid.crs, "EPSG:4326", _box(scene.grid.transform, 200, 200, 40))
        path = tmp_path / "w.geojson"
        path.write_text(json.dumps({"type": "FeatureCollection",
                                    "features": [{"type": "Feature", "geometry": geom, "properties": {}}]}))
        with Labels.open(nc_data["strata"], scene, nc_classes, windows=path) as lab:
            inside = lab.inside_windows(scene.grid)
    rows, cols = np.nonzero(inside)
    assert abs(int(inside.sum()) - 1600) < 120
    assert 198 <= rows.min() <= 202 and 198 <= cols.min() <= 202


def test_vector_labels_and_windows_intersect(nc_bands, nc_classes, tmp_path):
    with Scene.open(nc_bands) as scene:
        t, crs = scene.grid.transform, scene.grid.crs
        labels = tmp_path / "classes.gpkg"
        write_gpkg(labels, [(_box(t, 100, 100, 100), {"class_id": 5})], crs, layer="labels")
        windows = tmp_path / "w.gpkg"
        write_gpkg(windows, [(_box(t, 150, 150, 100), {"rank": 1})], crs, layer="windows")
        with Labels.open(labels, scene, nc_classes, windows=windows) as lab:
            ids = lab.read()
    forest = [c.id for c in nc_classes].index(5)
    assert int((ids == forest).sum()) == 50 * 50  # rows/cols 150-199: both polygons
    assert ids[120, 120] == IGNORE_INDEX and ids[220, 220] == IGNORE_INDEX


def test_scenes_without_a_crs_take_windows_in_their_grid_coordinates(tmp_path):
    from core.data.nc import nc_class_specs  # noqa: F401  (classes below are the tiny scene's)
    from core.jobspec import ClassSpec

    img, lab = write_tiny_scene(tmp_path, size=32, crs=None)
    classes = [ClassSpec(id=1, name="a", color="#ff0000"), ClassSpec(id=2, name="b", color="#00ff00")]
    with Scene.open(img) as scene:
        local = tmp_path / "local.gpkg"
        with warnings.catch_warnings(record=True) as caught:  # no CRS is what such a file should have: no alarm
            warnings.simplefilter("always")
            write_gpkg(local, [(_box(scene.grid.transform, 8, 4, 10), {"rank": 1})], None, layer="windows")
        assert not [str(w.message) for w in caught]
        with Labels.open(lab, scene, classes, windows=local) as labels:
            ids = labels.read()
        assert (ids != IGNORE_INDEX).sum() == 100 and (ids[4:14, 8:18] != IGNORE_INDEX).all()
        placed = tmp_path / "placed.gpkg"
        from rasterio.crs import CRS

        write_gpkg(placed, [(_box(scene.grid.transform, 8, 4, 10), {"rank": 1})], CRS.from_epsg(32617),
                   layer="windows")
        with pytest.raises(MissingCRSError, match="has no CRS"):
            Labels.open(lab, scene, classes, windows=placed)


def test_windows_off_the_image_are_refused_naming_the_field(nc_bands, nc_data, nc_classes, tmp_path):
    with Scene.open(nc_bands) as scene:
        t, crs = scene.grid.transform, scene.grid.crs
    far = tmp_path / "far.gpkg"
    write_gpkg(far, [(_box(t, 5000, 5000, 40), {"rank": 1})], crs, layer="windows")
    spec = DomainSpec.model_validate({"scenes": [{"bands": [str(p) for p in nc_bands], "labels": str(nc_data["strata"]),
                                                  "label_windows": str(far)}]})
    with pytest.raises(NoOverlapError) as e:
        Domain.open(spec, nc_classes, field="target")
    assert e.value.field == "target.scenes.0.label_windows" and "share no ground" in e.value.message


def test_a_domain_reads_its_scenes_label_windows(nc_bands, nc_data, nc_classes, nc_windows):
    spec = DomainSpec.model_validate({"scenes": [{"bands": [str(p) for p in nc_bands], "labels": str(nc_data["strata"]),
                                                  "label_windows": str(nc_windows)}]})
    with Domain.open(spec, nc_classes) as dom:
        counts = dom.class_counts(cell=16)
    assert 0.9 * 3200 < counts.sum() <= 3200


# -- the job spec --------------------------------------------------------------------------------------
def _semi_job(tmp_path, **target_scene):
    img, lab = write_tiny_scene(tmp_path / "scene", size=32)
    spec = train_spec(img, lab, type="adapt", method="semi", output=str(tmp_path / "out"))
    spec["target"] = {"scenes": [{"image": str(img), **target_scene}]}
    return spec, lab


def _problem(spec) -> dict:
    with pytest.raises(SpecError) as e:
        load_job_spec(spec)
    return {p["field"]: p["message"] for p in e.value.problems}


def test_a_semi_job_needs_labels_on_its_target(tmp_path):
    spec, lab = _semi_job(tmp_path)
    p = _problem(spec)
    assert "a semi adapt job needs labels on part of the target" in p["target.scenes.0.labels"], p
    spec["target"]["scenes"][0]["labels"] = str(lab)
    assert load_job_spec(spec).training_method == "semi"


def test_label_windows_need_labels_and_a_vector_file(tmp_path):
    spec, lab = _semi_job(tmp_path)
    windows = tmp_path / "w.gpkg"
    windows.write_bytes(b"")
    spec["target"]["scenes"][0]["label_windows"] = str(windows)
    p = _problem(spec)
    assert "give 'labels' too" in p["target.scenes.0.label_windows"], p
    spec["target"]["scenes"][0]["labels"] = str(lab)
    spec["target"]["scenes"][0]["label_windows"] = str(lab)  # a raster: not polygons
    p = _problem(spec)
    assert "GeoPackage (.gpkg) or GeoJSON" in p["target.scenes.0.label_windows"], p
    spec["target"]["scenes"][0]["label_windows"] = str(tmp_path / "missing.gpkg")
    p = _problem(spec)
    assert "file not found" in p["target.scenes.0.label_windows"], p
