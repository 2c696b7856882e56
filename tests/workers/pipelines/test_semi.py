"""Adapt jobs of method semi on the real NC scene and its shifted copy (Benchmark A's target), labelled in one
window only: through `python -m cli run` with a label raster that is nodata outside the window, through the
pipeline with the full strata raster limited by a GeoPackage of label windows, and bad label input refused
with a message naming the field."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import yaml

from core.data.nc import NC_CLASSES
from core.jobspec import IGNORE_INDEX, load_job_spec
from core.raster.labels import Labels
from core.raster.scene import Scene
from core.raster.vector_write import write_gpkg
from core.jobspec import ClassSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROW, COL, SIDE = 200, 120, 64


def _window_polygon(grid):
    t = grid.transform
    ring = [t @ (c, r) for c, r in ((COL, ROW), (COL + SIDE, ROW), (COL + SIDE, ROW + SIDE), (COL, ROW + SIDE),
                                   (COL, ROW))]
    return {"type": "Polygon", "coordinates": [[(float(x), float(y)) for x, y in ring]]}


@pytest.fixture(scope="module")
def partial_labels(bench_domains, nc_data, tmp_path_factory):
    """On the shifted target's grid: a label raster holding the strata in one 64 px window (0 = nodata
    elsewhere), and a GeoPackage of that window; with the count of labelled pixels."""
    folder = tmp_path_factory.mktemp("semi")
    target = bench_domains["target"]["scenes"][0]["image"]
    classes = [ClassSpec.model_validate(c) for c in NC_CLASSES]
    with Scene.open(target) as scene:
        with Labels.open(nc_data["strata"], scene, classes) as lab:
            ids = lab.read()
        grid = scene.grid
        valid = scene.read_valid(grid.full_window())
    inside = np.zeros(ids.shape, bool)
    inside[ROW:ROW + SIDE, COL:COL + SIDE] = True
    keep = inside & (ids != IGNORE_INDEX) & valid
    class_ids = np.array([c.id for c in classes] + [0] * (256 - len(classes)), np.uint8)
    raster = np.where(keep, class_ids[ids], 0).astype(np.uint8)
    path = folder / "labels_in_one_window.tif"
    with rasterio.open(path, "w", driver="GTiff", width=grid.width, height=grid.height, count=1, dtype="uint8",
                       crs=grid.crs, transform=grid.transform, nodata=0) as ds:
        ds.write(raster, 1)
    windows = folder / "windows.gpkg"
    write_gpkg(windows, [(_window_polygon(grid), {"rank": 1})], grid.crs, layer="windows")
    return {"raster": path, "windows": windows, "labelled": int(keep.sum())}


def _job(bench_domains, target_scene: dict, output, **params) -> dict:
    return {
        "type": "adapt", "method": "semi", "classes": NC_CLASSES, "output": str(output),
        "source": bench_domains["source"],
        "target": {"scenes": [target_scene], "region": bench_domains["target"]["region"]},
        "model": {"config": "segformer-tiny", "overrides": {"model.decode_head.channels": 32,
                                                           "adaptation.phase1": 0.5}},
        "params": {"iterations": 4, "batch_size": 2, "crop": 64, "seed": 0, "predict_targets": False, **params},
    }


def test_cli_run_with_a_label_raster_that_is_nodata_outside_the_window(bench_domains, partial_labels, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    scene = {"image": bench_domains["target"]["scenes"][0]["image"], "labels": str(partial_labels["raster"])}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(_job(bench_domains, scene, tmp_path / "out")))
    res = CliRunner().invoke(app, ["run", str(tmp_path / "job.yaml"), "--threads", "1"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["target_labelled_pixels"] == partial_labels["labelled"]
    late = metrics["training"]["late_losses"]
    assert {"ce_src", "ce_tgt", "ce_fine", "inpaint"} <= set(late) and late["inpaint"] > 0  # phase 2 ran
    manifest = json.loads((tmp_path / "out" / "bundle" / "bundle.json").read_text())
    assert manifest["method"] == "semi" and manifest["inference"]["type"] == "Segmentor"


def test_pipeline_with_label_windows_over_the_full_label_raster(bench_domains, partial_labels, nc_data, tmp_path):
    from models.bundle import load_bundle
    from workers.pipelines.dispatch import run_job

    scene = {"image": bench_domains["target"]["scenes"][0]["image"], "labels": str(nc_data["strata"]),
             "label_windows": str(partial_labels["windows"])}
    res = run_job(load_job_spec(_job(bench_domains, scene, tmp_path / "out")))
    assert res["status"] == "finished"
    # the strata limited to the window: the pixels labelled in the raster made for the other test
    assert abs(res["metrics"]["target_labelled_pixels"] - partial_labels["labelled"]) <= SIDE
    b = load_bundle(res["bundle"])
    assert b.method == "semi" and b.provenance["adaptation"]["type"] == "semi"
    # and starting from that bundle (model.checkpoint: a bundle folder) runs again
    job = _job(bench_domains, scene, tmp_path / "again")
    job["model"]["checkpoint"] = str(tmp_path / "out")
    again = run_job(load_job_spec(job))
    assert again["status"] == "finished" and again["provenance"]["pretrained"]["missing"] == 0


@pytest.mark.parametrize("problem", ["not-vector", "off-the-image", "no-labels"])
def test_bad_label_input_exits_2_naming_the_field(bench_domains, partial_labels, nc_data, tmp_path, problem):
    scene = {"image": bench_domains["target"]["scenes"][0]["image"], "labels": str(nc_data["strata"])}
    if problem == "not-vector":
        bad = tmp_path / "windows.gpkg"
        bad.write_text("these are not polygons")
        scene["label_windows"] = str(bad)
        words = ["target.scenes.0.label_windows", "neither GeoJSON nor a GeoPackage"]
    elif problem == "off-the-image":
        far = tmp_path / "far.gpkg"
        with Scene.open(scene["image"]) as s:
            t = s.grid.transform
            crs = s.grid.crs
        x0, y0 = t @ (5000, 5000)
        ring = [(x0, y0), (x0 + 900, y0), (x0 + 900, y0 - 900), (x0, y0 - 900), (x0, y0)]
        write_gpkg(far, [({"type": "Polygon", "coordinates": [ring]}, {"rank": 1})], crs, layer="w")
        scene["label_windows"] = str(far)
        words = ["target.scenes.0.label_windows", "share no ground"]
    else:
        del scene["labels"]
        words = ["target.scenes.0.labels", "needs labels on part of the target"]
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(_job(bench_domains, scene, tmp_path / "out")))
    r = subprocess.run([sys.executable, "-m", "cli", "run", str(tmp_path / "job.yaml"), "--threads", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert all(w in r.stderr for w in words), r.stderr
    assert not (tmp_path / "out" / "bundle").exists()
