"""Class maps that GIS tools read fully: category names, a raster attribute table, the colour table, nodata
and the band descriptions, as GDAL itself reports them (`gdalinfo -json`); the sidecar that carries the
names lives and dies with its COG."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate

from core.job_layout import is_intermediate, is_prediction
from core.raster.cog import ClassStyle, CogWriter, class_cog_writer, probability_cog_writer, remove_stale_temporaries
from core.raster.grid import Grid
from core.raster.pam import RAT_FIELDS, class_sidecar_xml, sidecar_path

# ids with gaps (0, 2-4 have no class), so category names must be indexed by value, not by position
CLASSES = [
    {"id": 1, "name": "developed", "color": "#d7301f"},
    {"id": 5, "name": "forest", "color": "#1b7837"},
    {"id": 6, "name": "water", "color": "#2166ac"},
]
RGB = {1: (215, 48, 31), 5: (27, 120, 55), 6: (33, 102, 172)}
GRID = Grid(CRS.from_epsg(32119), Affine(28.5, 0, 630534.0, 0, -28.5, 228114.0), 600, 500)

needs_gdalinfo = pytest.mark.skipif(shutil.which("gdalinfo") is None,
                                     reason="gdalinfo not installed (Debian: apt-get install gdal-bin; .ci/run does)")


def _class_cog(path: Path, classes=CLASSES) -> Path:
    ids = np.array([c["id"] for c in classes], np.uint8)
    rows, cols = np.mgrid[0 : GRID.height, 0 : GRID.width]
    data = ids[(rows // 50 + cols // 50) % len(ids)]
    data[:100, :100] = 255  # a nodata corner
    with class_cog_writer(path, GRID, classes, blocksize=256) as w:
        w.write(data, Window(0, 0, GRID.width, GRID.height))
    return path


def _gdalinfo(path: Path) -> dict:
    out = subprocess.run(["gdalinfo", "-json", str(path)], check=True, capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)


def test_the_sidecar_names_each_value_and_holds_a_thematic_attribute_table(tmp_path):
    cog = _class_cog(tmp_path / "classes.tif")
    assert sidecar_path(cog) == tmp_path / "classes.tif.aux.xml" and sidecar_path(cog).is_file()
    band = ET.parse(sidecar_path(cog)).getroot().find("PAMRasterBand")
    assert band.get("band") == "1"
    names = [c.text or "" for c in band.find("CategoryNames")]
    assert names == ["", "developed", "", "", "", "forest", "water"]
    rat = band.find("GDALRasterAttributeTable")
    assert rat.get("tableType") == "thematic"
    assert [f.findtext("Name") for f in rat.findall("FieldDefn")] == ["Value", "Class_Name", "Red", "Green", "Blue",
                                                                      "Alpha"]
    rows = [[f.text for f in r.findall("F")] for r in rat.findall("Row")]
    assert rows == [[str(i), name, *map(str, RGB[i]), "255"] for i, name in ((1, "developed"), (5, "forest"),
                                                                             (6, "water"))]
    # the COG itself is untouched by its sidecar: still valid, colour table, nodata, description
    ok, errors, _ = cog_validate(str(cog))
    assert ok, errors
    with rasterio.open(cog) as ds:
        assert ds.nodata == 255 and ds.descriptions == ("class",)
        cmap = ds.colormap(1)
        assert all(cmap[i] == (*RGB[i], 255) for i in RGB) and cmap[255][3] == 0


def test_names_that_need_escaping_survive_the_xml():
    xml = class_sidecar_xml([ClassStyle(0, 'roads & <paths> "x"', "#010203")])
    band = ET.fromstring(xml).find("PAMRasterBand")
    assert [c.text for c in band.find("CategoryNames")] == ['roads & <paths> "x"']


@needs_gdalinfo
def test_gdalinfo_lists_categories_attribute_table_colour_table_and_nodata(tmp_path):
    info = _gdalinfo(_class_cog(tmp_path / "classes.tif"))
    assert [Path(f).name for f in info["files"]] == ["classes.tif", "classes.tif.aux.xml"]  # read as one
    band = info["bands"][0]
    assert band["categories"] == ["", "developed", "", "", "", "forest", "water"]
    assert band["description"] == "class" and band["noDataValue"] == 255
    assert band["colorInterpretation"] == "Palette"
    entries = band["colorTable"]["entries"]
    assert all(entries[i] == [*RGB[i], 255] for i in RGB) and entries[255][3] == 0
    rat = band.get("rat") or info["rat"]  # GDAL before 3.7 prints band 1's table at the top level
    assert rat["tableType"] == "thematic"
    assert [(f["name"], f["type"], f["usage"]) for f in rat["fieldDefn"]] == [
        (name, kind, usage) for name, kind, usage in RAT_FIELDS]
    assert [r["f"] for r in rat["row"]] == [[i, name, *RGB[i], 255] for i, name in ((1, "developed"),
                                                                                  (5, "forest"), (6, "water"))]
    assert info["metadata"][""]["CLASS_NAMES"] == "developed,forest,water"  # the tags stay for our own readers


@needs_gdalinfo
def test_gdalinfo_names_probability_bands_by_class(tmp_path):
    out = tmp_path / "probs.tif"
    with probability_cog_writer(out, GRID, CLASSES, blocksize=256) as w:
        w.write(np.full((3, GRID.height, GRID.width), 100, np.uint8), Window(0, 0, GRID.width, GRID.height))
    info = _gdalinfo(out)
    assert [b["description"] for b in info["bands"]] == ["developed", "forest", "water"]
    assert all(b["noDataValue"] == 255 and b["scale"] == pytest.approx(1 / 254) for b in info["bands"])
    assert not sidecar_path(out).exists()


def test_a_failed_write_leaves_no_sidecar_and_an_older_pair_untouched(tmp_path):
    path = tmp_path / "classes.tif"
    with pytest.raises(RuntimeError):
        with class_cog_writer(path, GRID, CLASSES) as w:
            raise RuntimeError("the model failed")
    assert list(tmp_path.iterdir()) == []
    _class_cog(path)
    before = path.read_bytes(), sidecar_path(path).read_text()
    renamed = [{**c, "name": c["name"].upper()} for c in CLASSES]
    with pytest.raises(RuntimeError):
        with class_cog_writer(path, GRID, renamed) as w:
            w.write(np.ones((10, 10), np.uint8), Window(0, 0, 10, 10))
            raise RuntimeError("cancelled")
    assert (path.read_bytes(), sidecar_path(path).read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif", "classes.tif.aux.xml"]


def test_a_rewrite_replaces_the_sidecar_and_a_raster_without_classes_drops_a_stale_one(tmp_path):
    path = _class_cog(tmp_path / "classes.tif")
    _class_cog(path, [{**c, "name": c["name"].upper()} for c in CLASSES])
    assert "FOREST" in sidecar_path(path).read_text() and "forest" not in sidecar_path(path).read_text()
    # a plain raster at the same path: GDAL would otherwise read the old names as this file's
    with CogWriter(path, GRID, dtype="float32") as w:
        w.write(np.zeros((GRID.height, GRID.width), np.float32), Window(0, 0, GRID.width, GRID.height))
    assert not sidecar_path(path).exists()


def test_a_killed_writers_sidecar_temporary_is_removed(tmp_path):
    w = class_cog_writer(tmp_path / "c.tif", GRID, CLASSES)
    w._ds.close()
    (tmp_path / ".c.tif.0123456789ab.pam.xml").write_text("<PAMDataset/>")  # killed between its write and rename
    _class_cog(tmp_path / "kept.tif")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name.rsplit(".", 2)[-2] for p in removed) == ["pam", "part"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.tif", "kept.tif.aux.xml"]


def test_results_treat_the_sidecar_as_part_of_its_cog():
    rel = Path("predictions/target-0-scene.tif.aux.xml")
    # not a prediction of its own (no map, no tiles), yet downloadable with its COG
    assert not is_prediction(rel) and not is_intermediate(rel)
