"""`geoadapt predict` on a saved bundle and a band stack, and Benchmark B's parts: the mosaic of the real
scene, and a naive baseline that computes the same classes as the tiled predictor."""
from __future__ import annotations

import json

import numpy as np
import rasterio
import torch
from typer.testing import CliRunner

from core.raster.scene import Scene
from core.raster.stats import compute_stats
from models.inference import predict_raster


def _conv_bundle(path, classes, stats):
    from models.bundle import load_bundle, save_bundle
    from models.segmentor import build_segmentor

    net = dict(
        type="Segmentor",
        backbone=dict(type="ResNetV1c", depth=18, in_channels=6, stem_channels=8, base_channels=8, num_stages=4,
                      out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1),
                      norm_cfg=dict(type="BN", requires_grad=True)),
        decode_head=dict(type="FCNHead", in_channels=64, in_index=3, channels=16, num_convs=1, concat_input=False,
                         num_classes=len(classes), norm_cfg=dict(type="BN", requires_grad=True),
                         align_corners=False, loss_decode=dict(type="CrossEntropyLoss")),
    )
    torch.manual_seed(0)
    save_bundle(path / "bundle", build_segmentor(net), {}, classes, {"source": stats}, inference=net)
    return load_bundle(path)


def test_cli_predicts_a_band_stack_into_a_cog(nc_bands, nc_classes, tmp_path):
    from cli import app

    with Scene.open(nc_bands) as s:
        stats = compute_stats([s])
        valid = s.read().valid
    _conv_bundle(tmp_path / "job", nc_classes, stats)
    out = tmp_path / "pred.tif"
    args = ["predict", str(tmp_path / "job"), *map(str, nc_bands), str(out), "--window", "128", "--overlap", "32",
            "--no-progress", "--json", "--probabilities"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["windows"] == 25 and report["stats"] == "source" and report["probabilities"].endswith("_probs.tif")
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert np.array_equal(ds.dataset_mask() > 0, valid)
    bad = CliRunner().invoke(app, ["predict", str(tmp_path / "job"), str(nc_bands[0]), str(out), "--blend", "x"])
    assert bad.exit_code != 0


def test_naive_baseline_computes_the_same_classes_on_the_nc_mosaic(nc_data, nc_classes, tmp_path):
    from benchmarks.predict import BenchSettings, build_mosaic, naive_predict

    path = build_mosaic(640, tmp_path / "mosaic.tif", nc_data["b10"].parent)
    with rasterio.open(path) as ds:
        assert (ds.width, ds.height, ds.count, ds.nodata) == (640, 640, 6, -9999)
        m = ds.dataset_mask()
        assert 0.5 < (m > 0).mean() < 0.9  # the scene's nodata border is kept
    with Scene.open(path) as s:
        stats = compute_stats([s])
    bundle = _conv_bundle(tmp_path / "job", nc_classes, stats)
    s = BenchSettings(size=640, window=128, overlap=16, batch_size=4)
    naive = naive_predict(bundle, path, tmp_path / "naive.tif", s)
    ours = predict_raster(bundle, path, tmp_path / "ours.tif", **s.predict_options())
    assert naive["windows"] == ours.windows and ours.predicted + ours.skipped == ours.windows
    with rasterio.open(tmp_path / "naive.tif") as a, rasterio.open(tmp_path / "ours.tif") as b:
        x, y = a.read(1), b.read(1)
    assert (x == y).mean() > 0.999  # the same computation, up to float summation order at near-ties
