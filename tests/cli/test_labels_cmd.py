"""`geoadapt labels suggest|consensus`: a GeoPackage of ranked windows from a real bundle on the NC bands, a consensus
label COG with its disagreement map and scores, and exit 2 with a message naming the problem on bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyogrio
import rasterio
from typer.testing import CliRunner

from core.raster.scene import Scene
from core.raster.stats import compute_stats
from tests.helpers import small_conv_bundle, write_raster


def test_suggest_writes_ranked_non_overlapping_windows(nc_bands, nc_classes, tmp_path):
    from cli import app

    with Scene.open(nc_bands) as s:
        stats = compute_stats([s])
    small_conv_bundle(tmp_path / "job", nc_classes, stats)
    out = tmp_path / "s.gpkg"
    res = CliRunner().invoke(app, ["labels", "suggest", str(tmp_path / "job"), *map(str, nc_bands), "--count", "6",
                                   "--window", "64", "--out", str(out), "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["count"] == 6 and summary["window"] == 64 and not summary["two_networks"]
    info = pyogrio.read_info(out)
    assert info["features"] == 6
    wins = [s["window"] for s in summary["suggestions"]]
    for i, (c, r, w, h) in enumerate(wins):
        assert (w, h) == (64, 64) and c + w <= 489 and r + h <= 443
        for c2, r2, _, _ in wins[i + 1:]:
            assert abs(c - c2) >= 64 or abs(r - r2) >= 64
    assert [s["rank"] for s in summary["suggestions"]] == [1, 2, 3, 4, 5, 6]


def test_consensus_writes_labels_disagreement_and_scores(tmp_path):
    from cli import app

    rng = np.random.default_rng(0)
    truth = np.ones((48, 48), np.uint8)
    truth[:, 24:] = 4
    img = write_raster(tmp_path / "img.tif", (truth * 2.0 + rng.normal(0, 0.2, (3, 48, 48))).astype("float32"), -99999,
                 "float32")
    a = write_raster(tmp_path / "a.tif", truth, 0, "uint8")
    b_arr = truth.copy()
    b_arr[:8, :8] = 4  # one careless block
    b = write_raster(tmp_path / "b.tif", b_arr, 0, "uint8")
    c_arr = truth.copy()
    c_arr[:, 20:28] = 0  # not annotated along the boundary
    c = write_raster(tmp_path / "c.tif", c_arr, 0, "uint8")
    out = tmp_path / "cons.tif"
    res = CliRunner().invoke(app, ["labels", "consensus", str(a), str(b), str(c), "--image", str(img), "--out", str(out),
                                   "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    with rasterio.open(out) as ds:
        assert ds.read(1).tolist() == truth.tolist() and ds.nodata == 255
    with rasterio.open(tmp_path / "cons_disagreement.tif") as ds:
        d = ds.read(1)
        assert d[:8, :8].min() > 0 and d[20:, :].max() == 0
    assert set(report["annotators"]) == {"a", "b", "c"} and report["annotators"]["c"]["labelled_fraction"] < 1
    assert json.loads((tmp_path / "cons_scores.json").read_text())["ranking"] == report["ranking"]


def test_bad_labels_input_exits_2_naming_it(tmp_path):
    img = write_raster(tmp_path / "img.tif", np.zeros((3, 32, 32), "float32"), -99999, "float32")
    lab = write_raster(tmp_path / "lab.tif", np.ones((32, 32), np.uint8), 0, "uint8")
    cases = [
        (["labels", "suggest", str(tmp_path / "nowhere"), str(img), "--out", str(tmp_path / "s.shp")], "--out must end"),
        (["labels", "suggest", str(tmp_path / "nowhere"), str(img), "--out", str(tmp_path / "s.gpkg")], "no model bundle"),
        (["labels", "suggest", str(tmp_path / "nowhere"), str(img), "--count", "0", "--out", str(tmp_path / "s.gpkg")],
         "count"),
        (["labels", "consensus", str(lab), "--image", str(img), "--out", str(tmp_path / "c.tif")], "at least two"),
        (["labels", "consensus", str(lab), str(lab), "--image", str(img), "--out", str(tmp_path / "c.png")],
         "GeoTIFF"),
        (["labels", "consensus", str(lab), str(tmp_path / "missing.tif"), "--image", str(img),
          "--out", str(tmp_path / "c.tif")], "missing.tif"),
        (["labels", "consensus", str(lab), str(lab), "--image", str(img), "--classes", "a,b",
          "--out", str(tmp_path / "c.tif")], "--classes"),
    ]
    for args, needle in cases:
        proc = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert needle in proc.stderr, (args, proc.stderr)


def test_a_consensus_that_would_not_fit_in_memory_is_refused_before_reading(tmp_path):
    """60,000 x 60,000 px (sparse files: nothing written, a few KB each): the whole image would be held in memory,
    terabytes; exit 2 naming the size and what to do, before a pixel is read and with nothing written."""
    profile = dict(driver="GTiff", width=60_000, height=60_000, crs="EPSG:32617",
                   transform=rasterio.transform.from_origin(0, 60_000, 1, 1), tiled=True, compress="deflate")
    with rasterio.Env(SPARSE_OK=True):
        with rasterio.open(tmp_path / "img.tif", "w", count=3, dtype="uint8", nodata=0, **profile):
            pass
        for name in ("a.tif", "b.tif"):
            with rasterio.open(tmp_path / name, "w", count=1, dtype="uint8", nodata=0, **profile):
                pass
    out = tmp_path / "c.tif"
    proc = subprocess.run([sys.executable, "-m", "cli", "labels", "consensus", str(tmp_path / "a.tif"),
                           str(tmp_path / "b.tif"), "--image", str(tmp_path / "img.tif"), "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "60000 x 60000 px" in proc.stderr and "holds the whole image in memory" in proc.stderr, proc.stderr
    assert "Split the image" in proc.stderr
    assert not list(tmp_path.glob("c*"))
