"""Pretrain jobs through run_job on real rasters: the weights and their record, a train job started from them,
exact resume after a stop, CroCo's pairs on the real NC scene and its shifted copy, and the errors a bad pair gives."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from core.errors import BandCountMismatchError, NoOverlapError
from core.jobspec import load_job_spec
from models.bundle import load_bundle
from models.training.callbacks import History, StopAfter
from tests.helpers import write_tiny_scene
from workers.pipelines.dispatch import run_job

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Two tiny 3-band scenes over the same ground (the second: another tone), with labels."""
    root = tmp_path_factory.mktemp("pretrain-scenes")
    img, lab = write_tiny_scene(root / "a", size=64)
    with rasterio.open(img) as ds:
        prof, data = ds.profile, ds.read()
    other = root / "b.tif"
    with rasterio.open(other, "w", **prof) as ds:
        ds.write(data * 0.7 + 20)
    return {"image": img, "labels": lab, "other": other}


def _pretrain(scenes, out, method="simclr", *, target=True, source=True, params=None, **extra) -> dict:
    body = {"type": "pretrain", "method": method, "output": str(out),
            "params": {"iterations": 4, "batch_size": 2, "crop": 32, "seed": 0, **(params or {})}}
    if source:
        body["source"] = {"scenes": [{"image": str(scenes["image"]), "labels": str(scenes["labels"])}]}
    if target:
        body["target"] = {"scenes": [{"image": str(scenes["other"])}]}
    body.update(extra)
    return body


def _weights(out) -> dict:
    return torch.load(out / "pretrained.pth", map_location="cpu", weights_only=True)["state_dict"]


def test_a_simclr_job_leaves_weights_and_a_record_and_a_train_job_starts_from_the_folder(scenes, tmp_path):
    hist = History()
    out = tmp_path / "pre"
    res = run_job(load_job_spec(_pretrain(scenes, out, model={"config": "segformer-tiny",
                                                              "overrides": {"pretraining.local": True}})), [hist])
    assert res["status"] == "finished" and res["pretrained"] == str(out / "pretrained.pth")
    assert len(hist.progress) == 4 and {"contrast", "local"} <= set(hist.progress[-1].losses)
    record = json.loads((out / "pretrained.json").read_text())
    assert record["method"] == "simclr" and record["job_type"] == "pretrain" and record["config"] == "segformer-tiny"
    assert record["trained"] == ["backbone", "decode_head"] and record["band_count"] == 3
    assert set(record["stats"]) == {"source", "target"} and record["iterations"] == 4
    assert record["pretraining"]["local"] is True and record["datasets"]["source"]["scenes"][0]["labels"] is None
    assert record["training"]["iterations"] == 4 and "contrast" in record["training"]["final_losses"]
    assert json.loads((out / "metrics.json").read_text())["training"]["iterations"] == 4
    assert len((out / "history.jsonl").read_text().splitlines()) >= 1
    state = _weights(out)
    assert any(k.startswith("decode_head.fusion_conv") for k in state)

    train = {"type": "train", "method": "source-only", "output": str(tmp_path / "ft"),
             "model": {"config": "segformer-tiny", "checkpoint": str(out)},
             "classes": [{"id": 1, "name": "a", "color": "#ff0000"}, {"id": 2, "name": "b", "color": "#00ff00"}],
             "source": {"scenes": [{"image": str(scenes["image"]), "labels": str(scenes["labels"])}]},
             "params": {"iterations": 1, "batch_size": 2, "crop": 32}}
    run_job(load_job_spec(train))
    started = load_bundle(tmp_path / "ft").provenance["pretrained"]
    assert started["path"] == str(out / "pretrained.pth") and started["skipped"] == []
    assert started["loaded"] == len(state) and started["missing"] == 2  # the new classifier's weight and bias
    assert started["pretraining"]["method"] == "simclr" and started["pretraining"]["iterations"] == 4


@pytest.mark.parametrize("method", ["simclr", "siameseim", "croco"])
def test_a_stopped_pretrain_job_resumes_exactly(scenes, tmp_path, method):
    straight = tmp_path / "straight"
    run_job(load_job_spec(_pretrain(scenes, straight, method)))
    stopped = tmp_path / "stopped"
    res = run_job(load_job_spec(_pretrain(scenes, stopped, method)), [StopAfter(2)])
    assert res["status"] == "stopped" and res["iteration"] == 2 and not (stopped / "pretrained.pth").exists()
    res = run_job(load_job_spec(_pretrain(scenes, stopped, method)))
    assert res["status"] == "finished"
    a, b = _weights(straight), _weights(stopped)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_siameseim_pretrains_on_the_target_alone(scenes, tmp_path):
    res = run_job(load_job_spec(_pretrain(scenes, tmp_path, "siameseim", source=False, params={"iterations": 2})))
    record = res["provenance"]
    assert set(record["stats"]) == {"target"} and record["trained"] == ["backbone", "decode_head"]
    assert record["band_map"][0]["file"] == "b.tif"


def test_croco_pairs_the_nc_scene_with_its_shifted_copy(bench_domains, tmp_path):
    body = {"type": "pretrain", "method": "croco", "source": bench_domains["source"], "target": bench_domains["target"],
            "params": {"iterations": 3, "batch_size": 2, "crop": 32, "seed": 1}, "output": str(tmp_path)}
    hist = History()
    res = run_job(load_job_spec(body), [hist])
    assert res["status"] == "finished" and res["provenance"]["trained"] == ["backbone"]
    assert res["provenance"]["band_count"] == 6
    assert all(np.isfinite(p.losses["reconstruction"]) and p.losses["reconstruction"] > 0 for p in hist.progress)
    assert not any(k.startswith("decode_head.") for k in _weights(tmp_path))


def test_croco_without_shared_ground_and_mismatched_bands_fail_naming_the_target(scenes, tmp_path):
    far = tmp_path / "far.tif"
    with rasterio.open(scenes["other"]) as ds:
        prof, data = ds.profile, ds.read()
    prof["transform"] = from_origin(700000.0, 4000000.0, 30.0, 30.0)
    with rasterio.open(far, "w", **prof) as ds:
        ds.write(data)
    body = _pretrain(scenes, tmp_path / "x", "croco")
    body["target"] = {"scenes": [{"image": str(far)}]}
    with pytest.raises(NoOverlapError) as e:
        run_job(load_job_spec(body))
    assert e.value.field == "target"
    six, _ = write_tiny_scene(tmp_path / "six", bands=6, size=64)
    body["target"] = {"scenes": [{"image": str(six)}]}
    with pytest.raises(BandCountMismatchError) as e:
        run_job(load_job_spec({**body, "method": "simclr"}))
    assert e.value.field == "target"
