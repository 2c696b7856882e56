"""`geoadapt export`: a bundle's network written as ONNX with its metadata; `predict --engine onnxruntime` then runs
the bundle's model.onnx; bad options are refused with exit 2."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import rasterio
from typer.testing import CliRunner

from core.bundle_manifest import ONNX
from core.raster.scene import Scene
from core.raster.stats import BandStats, compute_stats
from tests.helpers import small_conv_bundle


def test_export_writes_onnx_that_predict_runs_on_onnxruntime(nc_bands, nc_classes, tmp_path):
    from cli import app

    with Scene.open(nc_bands) as s:
        stats = compute_stats([s])
    small_conv_bundle(tmp_path / "job", nc_classes, stats)
    onnx_path = tmp_path / "job" / "bundle" / ONNX  # where a job's worker writes it, and predict looks
    res = CliRunner().invoke(app, ["export", str(tmp_path / "job"), "--format", "onnx", "--out", str(onnx_path),
                                   "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["metadata"]["model_type"] == "Segmentor" and onnx_path.stat().st_size > 1000
    assert report["metadata"]["class_names"]["5"] == nc_classes[5].name

    outs = {}
    for engine in ("torch", "onnxruntime"):
        outs[engine] = tmp_path / f"{engine}.tif"
        args = ["predict", str(tmp_path / "job"), *map(str, nc_bands), str(outs[engine]), "--window", "128",
                "--no-progress", "--json", "--engine", engine]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["options"]["engine"] == engine
    with rasterio.open(outs["torch"]) as a, rasterio.open(outs["onnxruntime"]) as b:
        assert (a.read(1) == b.read(1)).mean() >= 0.999


def test_bad_export_and_engine_options_exit_2(nc_classes, tmp_path):
    stats = BandStats(mean=[0.0] * 6, std=[1.0] * 6, count=1)
    small_conv_bundle(tmp_path / "job", nc_classes, stats)
    for args, says in ((["export", str(tmp_path / "job"), "--format", "tflite", "--out", str(tmp_path / "m")], "format"),
                       (["export", str(tmp_path / "job"), "--static-size", "100", "--out", str(tmp_path / "m")],
                        "multiple of 32"),
                       (["predict", str(tmp_path / "job"), str(tmp_path / "x.tif"), str(tmp_path / "o.tif"),
                         "--engine", "onnxruntime", "--precision", "bf16"], "fp32 only")):
        proc = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True)
        assert proc.returncode == 2 and says in proc.stderr, (args, proc.stderr[-500:])
    assert not (tmp_path / "m").exists()
