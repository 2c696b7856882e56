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


def test_benchmark_b_measures_the_onnxruntime_engine_with_the_same_settings(nc_data, nc_classes, tmp_path):
    from benchmarks.predict import BenchSettings, build_mosaic, measure_e2e, measure_model
    from models.onnx_export import write_bundle_onnx

    path = build_mosaic(384, tmp_path / "mosaic.tif", nc_data["b10"].parent)
    with Scene.open(path) as s:
        stats = compute_stats([s])
    small_conv_bundle(tmp_path / "job", nc_classes, stats)
    write_bundle_onnx(tmp_path / "job" / "bundle")
    runs = {}
    for engine in ("torch", "onnxruntime"):
        s = BenchSettings(size=384, window=128, overlap=16, batch_size=4, model_seconds=0.3, streams=1, threads=1,
                          engine=engine)
        model = measure_model(tmp_path / "job", path, s)
        assert model["window_mpx_s"] > 0 and model["single_stream_window_mpx_s"] > 0
        runs[engine] = measure_e2e(tmp_path / "job", path, s, tmp_path / f"{engine}.tif")
        assert runs[engine]["options"]["engine"] == engine
    assert runs["torch"]["windows"] == runs["onnxruntime"]["windows"]
    with rasterio.open(tmp_path / "torch.tif") as a, rasterio.open(tmp_path / "onnxruntime.tif") as b:
        assert (a.read(1) == b.read(1)).mean() > 0.999
