"""Benchmark B's parts: the mosaic of the real scene, and a naive baseline that computes the same classes as the
windowed predictor."""
from __future__ import annotations

import rasterio

from core.raster.scene import Scene
from core.raster.stats import compute_stats
from models.inference import predict_raster
from tests.helpers import small_conv_bundle


def test_naive_baseline_computes_the_same_classes_on_the_nc_mosaic(nc_data, nc_classes, tmp_path):
    from benchmarks.predict import BenchSettings, build_mosaic, naive_predict

    path = build_mosaic(640, tmp_path / "mosaic.tif", nc_data["b10"].parent)
    with rasterio.open(path) as ds:
        assert (ds.width, ds.height, ds.count, ds.nodata) == (640, 640, 6, -9999)
        m = ds.dataset_mask()
        assert 0.5 < (m > 0).mean() < 0.9  # the scene's nodata border is kept
    with Scene.open(path) as s:
        stats = compute_stats([s])
    bundle = small_conv_bundle(tmp_path / "job", nc_classes, stats)
    s = BenchSettings(size=640, window=128, overlap=16, batch_size=4)
    naive = naive_predict(bundle, path, tmp_path / "naive.tif", s)
    ours = predict_raster(bundle, path, tmp_path / "ours.tif", **s.predict_options())
    assert naive["windows"] == ours.windows and ours.predicted + ours.skipped == ours.windows
    with rasterio.open(tmp_path / "naive.tif") as a, rasterio.open(tmp_path / "ours.tif") as b:
        x, y = a.read(1), b.read(1)
    assert (x == y).mean() > 0.999  # the same computation, up to float summation order at near-ties
