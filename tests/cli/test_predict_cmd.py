"""`geoadapt predict` on a saved bundle and a band stack: a COG with the input's valid mask, and a bad option refused."""
from __future__ import annotations

import json

import numpy as np
import rasterio
from typer.testing import CliRunner

from core.raster.scene import Scene
from core.raster.stats import compute_stats
from tests.helpers import small_conv_bundle


def test_cli_predicts_a_band_stack_into_a_cog(nc_bands, nc_classes, tmp_path):
    from cli import app

    with Scene.open(nc_bands) as s:
        stats = compute_stats([s])
        valid = s.read().valid
    small_conv_bundle(tmp_path / "job", nc_classes, stats)
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
