"""Validation at registration: each bad input gives its typed error, naming the spec field."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import rasterio
from affine import Affine

from core.errors import (
    BandCountMismatchError,
    EmptyRegionError,
    LabelValuesError,
    MissingCRSError,
    NoOverlapError,
    RasterTooLargeError,
    UnreadableRasterError,
)
from core.jobspec import load_job_spec
from core.data.nc import NC_CLASSES
from core.raster.scene import Scene
from core.raster.validate import validate_job_inputs

from .helpers import copy_with


def _job(source_scenes, *, target_scenes=None, classes=None, region=None, method=None, type_="train", **params):
    d = {"type": type_, "classes": classes or NC_CLASSES, "output": "/tmp/unused",
         "source": {"scenes": source_scenes, "region": region}, "params": params}
    if target_scenes is not None:
        d["target"] = {"scenes": target_scenes}
    if method:
        d["method"] = method
    return load_job_spec(d)


def _nc(nc_bands, labels=None, bands=None):
    s = {"bands": [str(p) for p in (bands or nc_bands)]}
    if labels:
        s["labels"] = str(labels)
    return s


def test_good_inputs_give_a_report(nc_bands, nc_data):
    rep = validate_job_inputs(_job([_nc(nc_bands, nc_data["strata"])], region={"columns": [0, 0.6]}),
                              expected_bands=6)
    sc = rep["domains"]["source"]["scenes"][0]
    assert sc["bands"] == 6 and 0.6 < sc["valid_fraction"] < 0.65
    assert sc["labels"]["coverage"]["valid_labelled_fraction"] == 1.0
    assert sum(sc["labels"]["class_counts"].values()) == 135092


def test_truncated_file(tmp_path, nc_bands, nc_data):
    raw = nc_bands[2].read_bytes()  # NC files keep their directory at the end: the cut fails at open
    bad = tmp_path / "lsat7_2000_30.tif"
    bad.write_bytes(raw[: len(raw) * 2 // 3])
    bands = list(nc_bands)
    bands[2] = bad
    with pytest.raises(UnreadableRasterError, match="truncated") as e:
        validate_job_inputs(_job([_nc(nc_bands, nc_data["strata"], bands=bands)]))
    assert e.value.field == "source.scenes.0"


def test_truncated_file_that_opens_but_fails_on_a_block(tmp_path, nc_bands, nc_data):
    full = copy_with(nc_bands[2], tmp_path / "full.tif", tiled=True, blockxsize=128, blockysize=128)
    raw = full.read_bytes()  # GDAL writes the directory first: this cut opens, the last blocks are gone
    bad = tmp_path / "cut.tif"
    bad.write_bytes(raw[: len(raw) * 2 // 3])
    bands = list(nc_bands)
    bands[2] = bad
    Scene.open(bad).close()
    with pytest.raises(UnreadableRasterError, match="cannot read pixels of cut.tif") as e:
        validate_job_inputs(_job([_nc(nc_bands, nc_data["strata"], bands=bands)]))
    assert e.value.field == "source.scenes.0"


def test_file_that_is_not_an_image(tmp_path, nc_bands, nc_data):
    bad = tmp_path / "notes.tif"
    bad.write_text("these are field notes, not pixels\n" * 20)
    with pytest.raises(UnreadableRasterError, match="not an image"):
        validate_job_inputs(_job([_nc(nc_bands, nc_data["strata"], bands=[bad] + list(nc_bands[1:]))]))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_header_declaring_enormous_dimensions(tmp_path):
    """A 300-byte PNG that claims 200000 x 200000 pixels is refused from its header, before any read."""
    ihdr = struct.pack(">IIBBBBB", 200_000, 200_000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    png += _png_chunk(b"IEND", b"")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png)
    assert bomb.stat().st_size < 400
    with pytest.raises(RasterTooLargeError, match="200000 x 200000"):
        Scene.open(bomb)


def test_size_limit_is_configurable(nc_bands, nc_data):
    with pytest.raises(RasterTooLargeError, match="limit of 100,000"):
        validate_job_inputs(_job([_nc(nc_bands, nc_data["strata"])]), max_pixels=100_000)


def test_missing_crs_where_needed(tmp_path, nc_bands):
    from PIL import Image

    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "tile.png")
    (tmp_path / "labels.geojson").write_text(
        '{"type": "Polygon", "coordinates": [[[-78.7, 35.7], [-78.6, 35.7], [-78.6, 35.8], [-78.7, 35.7]]]}'
    )
    Image.fromarray(np.ones((20, 20), np.uint8)).save(tmp_path / "small_labels.png")
    with pytest.raises(MissingCRSError, match="no CRS"):
        validate_job_inputs(_job([{"image": str(tmp_path / "tile.png"), "labels": str(tmp_path / "labels.geojson"),
                                   "label_class": 1}]))
    with pytest.raises(MissingCRSError, match="cannot be aligned"):
        validate_job_inputs(_job([{"image": str(tmp_path / "tile.png"), "labels": str(tmp_path / "small_labels.png")}]))
    # feature regression must pair ground: a target without georeferencing cannot be paired
    with pytest.raises(MissingCRSError, match="feature regression"):
        validate_job_inputs(_adapt_fr(nc_bands, tmp_path / "tile.png"))


def _adapt_fr(nc_bands, target_image):
    """A feature-regression adapt job whose target is a 6-band non-georeferenced tile."""
    with rasterio.open(target_image.with_suffix(".tif"), "w", driver="GTiff", width=30, height=30, count=6,
                       dtype="uint8") as ds:
        ds.write(np.ones((6, 30, 30), np.uint8))
    return _job([_nc(nc_bands, nc_bands[0].parent / "strata.tif")],
                target_scenes=[{"image": str(target_image.with_suffix(".tif"))}],
                type_="adapt", method="feature-regression")


def test_band_count_mismatch_in_a_domain_across_domains_and_with_the_model(nc_bands, nc_data):
    five = _nc(nc_bands, nc_data["strata"], bands=nc_bands[:5])
    six = _nc(nc_bands, nc_data["strata"])
    with pytest.raises(BandCountMismatchError, match="5 bands") as e:
        validate_job_inputs(_job([six, five]))
    assert e.value.field == "source.scenes.1"
    with pytest.raises(BandCountMismatchError, match="model expects 4"):
        validate_job_inputs(_job([six]), expected_bands=4)
    with pytest.raises(BandCountMismatchError, match="target scenes have 5") as e:
        validate_job_inputs(_job([six], target_scenes=[_nc(nc_bands, bands=nc_bands[:5])]))
    assert e.value.field == "target"


def test_label_values_outside_the_class_list(nc_bands, nc_data):
    six_classes = [c for c in NC_CLASSES if c["id"] != 7]  # strata has sediment (7): not in this list
    with pytest.raises(LabelValuesError, match=r"194 pixels hold values \['7'\]") as e:
        validate_job_inputs(_job([_nc(nc_bands, nc_data["strata"])], classes=six_classes))
    assert e.value.field == "source.scenes.0"


def test_no_overlap_between_image_and_labels(tmp_path, nc_bands, nc_data):
    with rasterio.open(nc_data["strata"]) as ds:
        t = ds.transform
    far = copy_with(nc_data["strata"], tmp_path / "strata_far.tif", transform=Affine(t.a, 0, t.c + 50_000, 0, t.e, t.f))
    with pytest.raises(NoOverlapError, match="share no ground"):
        validate_job_inputs(_job([_nc(nc_bands, far)]))


def test_labels_that_cover_only_nodata(tmp_path, nc_bands, nc_data):
    from rasterio.windows import Window

    corner = copy_with(nc_data["strata"], tmp_path / "corner.tif", window=Window(0, 0, 8, 8))
    with pytest.raises(NoOverlapError, match="no valid pixel"):
        validate_job_inputs(_job([_nc(nc_bands, corner)]))


def test_region_without_valid_pixels(nc_bands, nc_data):
    with pytest.raises(EmptyRegionError, match="no valid pixel"):
        validate_job_inputs(_job([_nc(nc_bands, nc_data["strata"])], region={"columns": [0, 0.02]}))
    with pytest.raises(EmptyRegionError, match="does not overlap"):
        aoi = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}
        validate_job_inputs(_job([_nc(nc_bands, nc_data["strata"])], region={"aoi": aoi}))
