"""Domain: regions (fractions, AOI), GSD matching onto the source GSD, stored statistics."""
from __future__ import annotations

import json

import numpy as np
import pytest
from rasterio.warp import transform_geom

from core.jobspec import IGNORE_INDEX, DomainSpec
from core.raster.domain import Domain
from core.raster.grid import gsd_ratio, should_match_gsd

from .helpers import warp_copy


def _spec(scenes, region=None):
    return DomainSpec.model_validate({"scenes": scenes, "region": region})


def test_column_region_and_reads_that_honour_it(nc_bands, nc_data, nc_classes):
    spec = _spec([{"bands": [str(p) for p in nc_bands], "labels": str(nc_data["strata"])}], {"columns": [0.0, 0.6]})
    with Domain.open(spec, nc_classes) as dom:
        it = dom.items[0]
        assert (it.region.col_off, it.region.width, it.region.height) == (0, 293, 443)
        from rasterio.windows import Window

        w = Window(260, 200, 64, 64)  # straddles the region's east edge
        rw = it.read(w)
        lab = it.read_labels(w, rw.valid)
        assert not rw.valid[:, 33:].any() and rw.valid[:, :33].all()
        assert (lab[:, 33:] == IGNORE_INDEX).all() and (lab[:, :33] != IGNORE_INDEX).all()


def test_aoi_region_in_wgs84(nc_bands, nc_classes):
    spec0 = _spec([{"bands": [str(p) for p in nc_bands]}])
    with Domain.open(spec0, nc_classes, labels=False) as dom:
        g = dom.items[0].grid
    t = g.transform
    ring = [list(t @ (c, r)) for c, r in ((100, 100), (200, 100), (200, 180), (100, 180), (100, 100))]
    aoi = transform_geom(g.crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    with Domain.open(_spec([{"bands": [str(p) for p in nc_bands]}], {"aoi": aoi}), nc_classes) as dom:
        it = dom.items[0]
        assert abs(it.region.col_off - 100) <= 1 and abs(it.region.width - 100) <= 2
        assert abs(int(it.region_mask.sum()) - 8000) < 300
        st = dom.stats()
    assert abs(st.count - 8000) < 300


def test_gsd_matching_resamples_the_target_onto_the_source_gsd(tmp_path, nc_bands, nc_classes):
    coarse = warp_copy(nc_bands, tmp_path / "nc_utm_57m.tif", "EPSG:32617", 57.0)
    src_spec = _spec([{"bands": [str(p) for p in nc_bands]}])
    tgt_spec = _spec([{"image": str(coarse)}], {"columns": [0.0, 0.6]})
    with Domain.open(src_spec, nc_classes) as src:
        assert gsd_ratio(src.items[0].grid, 57.0) == pytest.approx(2.0, rel=1e-3)
        assert should_match_gsd(28.5, 57.0) and not should_match_gsd(28.5, 31.0)
        assert not should_match_gsd(28.5, 57.0, option=False)
        with Domain.open(tgt_spec, nc_classes, match_grid_of=src) as tgt:
            it = tgt.items[0]
            assert it.resampled and tgt.matched_gsd == pytest.approx(28.5)
            assert it.grid.res[0] == pytest.approx(28.5, rel=1e-3)
            assert it.grid.width == pytest.approx(2 * it.scene.grid.width, abs=1)
            assert it.region.width == round(0.6 * it.grid.width)
            st_matched = tgt.stats()
            # outputs go back onto the target's own grid: a class map made on the working grid,
            # resampled with nearest, matches the one made directly on the native grid
            from core.raster.warp import resample_to_grid

            fine = it.scene.read(onto=it.grid)  # the whole scene at the working GSD
            cls_fine = np.where(fine.valid, (fine.data[3] > 70).astype(np.uint8), 255)
            back = resample_to_grid(cls_fine, it.grid, it.scene.grid, resampling="nearest", nodata=255)
            native = it.scene.read()
            cls_native = np.where(native.valid, (native.data[3] > 70).astype(np.uint8), 255)
            assert back.shape == cls_native.shape
            both = (back != 255) & (cls_native != 255)
            assert both.sum() > 0.9 * (cls_native != 255).sum()
            agree = (back[both] == cls_native[both]).mean()
            off_by_one = (back[:, 1:] == cls_native[:, :-1])[both[:, 1:]].mean()
            # bilinear up, threshold, nearest back: ~93% agree; one pixel off would give ~79%
            assert agree > 0.9 and agree > off_by_one + 0.1
        with Domain.open(tgt_spec, nc_classes, match_grid_of=src, match_gsd=False) as tgt:
            assert not tgt.items[0].resampled
            st_native = tgt.stats()
    # twice the pixels (area x4, minus edges), same ground: same band means
    assert st_matched.count > 3.5 * st_native.count
    np.testing.assert_allclose(st_matched.mean, st_native.mean, rtol=0.01)


def test_stats_are_stored_with_the_dataset_and_reused(tmp_path, nc_bands, nc_classes):
    spec = _spec([{"bands": [str(p) for p in nc_bands]}], {"columns": [0.0, 0.6]})
    with Domain.open(spec, nc_classes) as dom:
        st = dom.stats(store=tmp_path)
    files = list(tmp_path.glob("stats-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["count"] == st.count
    data = json.loads(files[0].read_text())
    data["mean"][0] = 12345.0  # proves the second call reads the stored file instead of recomputing
    files[0].write_text(json.dumps(data))
    with Domain.open(spec, nc_classes) as dom:
        assert dom.stats(store=tmp_path).mean[0] == 12345.0
    with Domain.open(_spec(spec.model_dump()["scenes"], {"columns": [0.6, 1.0]}), nc_classes) as dom:
        assert dom.stats(store=tmp_path).mean[0] != 12345.0  # another region, another key
