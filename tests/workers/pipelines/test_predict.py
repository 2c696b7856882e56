"""Predict pipeline on the real NC scene: adapt jobs map their target scenes, predict jobs map any
scene with a bundle, cancel leaves nothing half-written, wrong band counts are refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from core.data.nc import NC_CLASSES
from core.errors import BandCountMismatchError
from core.jobspec import load_job_spec
from models.training.callbacks import Callback
from workers.pipelines.predict import run_job as run_predict
from workers.pipelines.dispatch import run_job as run_train


class Stages(Callback):
    """Records the pipeline's stage reports; optionally asks it to stop."""

    def __init__(self, stop: bool = False):
        self.seen: list[tuple] = []
        self.stop = stop

    def on_stage(self, stage, done=None, total=None):
        self.seen.append((stage, done, total))

    def should_stop(self):
        return self.stop


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def adapted(bench_domains, tmp_path_factory):
    """A two-iteration ST-DASegNet adapt job on Benchmark A's domains, with its target predicted."""
    d = bench_domains
    shifted = Path(d["target"]["scenes"][0]["image"])  # Benchmark A's shifted copy of the scene
    out = tmp_path_factory.mktemp("adapt")
    spec = load_job_spec({
        "type": "adapt", "method": "st-dasegnet", "classes": NC_CLASSES, "source": d["source"],
        "target": {"scenes": [{"image": str(shifted)}]},
        "params": {"iterations": 2, "batch_size": 2, "crop": 32}, "output": str(out),
    })
    stages = Stages()
    result = run_train(spec, [stages])
    return {"out": out, "result": result, "stages": stages, "shifted": shifted, "domains": d}


def test_adapt_job_predicts_its_target_scene_to_a_cog(adapted):
    res, out = adapted["result"], adapted["out"]
    assert res["status"] == "finished" and len(res["predictions"]) == 1
    pred = out / "predictions" / "target-0-nc_shifted_seed0.tif"
    assert res["predictions"][0]["path"] == str(pred)
    listed = json.loads((out / "predictions.json").read_text())["predictions"]
    assert listed[0]["stats"] == "target" and listed[0]["predicted"] >= 1
    with rasterio.open(adapted["shifted"]) as src, rasterio.open(pred) as p:
        assert (p.crs, p.transform, p.width, p.height) == (src.crs, src.transform, src.width, src.height)
        assert p.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        valid_in = (src.read_masks() > 0).all(axis=0)  # a pixel is valid where every band is
        valid_out = p.dataset_mask() > 0
        assert np.array_equal(valid_in, valid_out)
        ids = np.unique(p.read(1, masked=True).compressed())
        assert set(ids.tolist()) <= {c["id"] for c in NC_CLASSES}
    # the loss curve the console plots: one line per iteration of this short job
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == [1, 2] and "loss" in history[-1]["losses"]
    # progress reached the end of the prediction stage
    done = [s for s in adapted["stages"].seen if s[1] is not None and s[1] == s[2]]
    assert done and done[-1][0].startswith("predicting target scene 1/1")


def test_predict_job_maps_source_scenes_with_source_statistics(adapted, nc_bands, tmp_path):
    d = adapted["domains"]
    spec = load_job_spec({
        "type": "predict", "classes": NC_CLASSES, "bundle": str(adapted["out"]),
        "source": {"scenes": [{"bands": [str(p) for p in nc_bands]}], "region": {"columns": [0.6, 1.0]}},
        "output": str(tmp_path),
    })
    res = run_predict(spec)
    assert res["status"] == "finished"
    (entry,) = res["predictions"]
    assert entry["role"] == "source" and entry["stats"] == "source"
    with rasterio.open(entry["path"]) as p, rasterio.open(nc_bands[0]) as src:
        assert p.width == src.width - int(0.6 * src.width) or abs(p.width - 0.4 * src.width) <= 1
        assert p.crs == src.crs
    assert d["source"]["region"]["columns"] == [0.0, 0.6]  # the job's own region was used, not the training one


def test_cancel_leaves_no_partial_prediction(adapted, tmp_path):
    spec = load_job_spec({
        "type": "predict", "classes": NC_CLASSES, "bundle": str(adapted["out"]),
        "target": {"scenes": [{"image": str(adapted["shifted"])}]}, "output": str(tmp_path),
    })
    res = run_predict(spec, [Stages(stop=True)])
    assert res["status"] == "stopped" and res["predictions"] == []
    assert not any((tmp_path / "predictions").glob("*.tif"))


def test_wrong_band_count_is_refused(adapted, tmp_path):
    three = tmp_path / "three.tif"
    with rasterio.open(adapted["shifted"]) as src:
        prof = src.profile | {"count": 3}
        data = src.read([1, 2, 3])
    with rasterio.open(three, "w", **prof) as dst:
        dst.write(data)
    spec = load_job_spec({
        "type": "predict", "classes": NC_CLASSES, "bundle": str(adapted["out"]),
        "target": {"scenes": [{"image": str(three)}]}, "output": str(tmp_path / "out"),
    })
    with pytest.raises(BandCountMismatchError, match="3 bands"):
        run_predict(spec)
