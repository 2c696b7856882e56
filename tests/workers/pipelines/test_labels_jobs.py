"""suggest and consensus jobs: their spec rules (one target scene; a bundle; two or more annotations, paths
resolved and checked), and the pipelines the worker dispatches them to, writing their files."""
from __future__ import annotations

import json

import numpy as np
import pyogrio
import pytest
import rasterio

from core.errors import SpecError
from core.jobspec import load_job_spec
from core.raster.scene import Scene
from core.raster.stats import compute_stats
from tests.helpers import small_conv_bundle, write_raster
from workers.pipelines.dispatch import run_job

CLASSES = [{"id": 1, "name": "a", "color": "#ff0000"}, {"id": 4, "name": "b", "color": "#00ff00"}]


def _consensus_inputs(tmp_path):
    truth = np.ones((40, 40), np.uint8)
    truth[:, 20:] = 4
    img = write_raster(tmp_path / "img.tif", (truth * 2.0 + np.random.default_rng(0).normal(0, 0.2, (3, 40, 40)))
                 .astype("float32"), -99999, "float32")
    a = write_raster(tmp_path / "a.tif", truth, 0, "uint8")
    b_arr = truth.copy()
    b_arr[:, 16:24] = 0
    b = write_raster(tmp_path / "b.tif", b_arr, 0, "uint8")
    return truth, img, [a, b]


def test_label_job_rules_name_the_field(tmp_path):
    truth, img, anns = _consensus_inputs(tmp_path)
    base = {"classes": CLASSES, "target": {"scenes": [{"image": str(img)}]}, "output": str(tmp_path / "out")}
    with pytest.raises(SpecError) as e:
        load_job_spec({**base, "type": "suggest"})
    assert e.value.field == "bundle"
    with pytest.raises(SpecError) as e:
        load_job_spec({**base, "type": "consensus"})
    assert e.value.field == "consensus"
    with pytest.raises(SpecError) as e:
        load_job_spec({**base, "type": "consensus", "consensus": {"annotations": [str(anns[0])]}})
    assert e.value.field.startswith("consensus.annotations")
    with pytest.raises(SpecError) as e:
        load_job_spec({**base, "type": "consensus", "consensus": {"annotations": [str(anns[0]), "nowhere.tif"]}})
    assert e.value.field.startswith("consensus.annotations") and "not found" in str(e.value)
    with pytest.raises(SpecError) as e:
        load_job_spec({**base, "type": "consensus", "consensus": {"annotations": [str(a) for a in anns]},
                       "target": {"scenes": [{"image": str(img)}, {"image": str(img)}]}})
    assert e.value.field == "target"
    with pytest.raises(SpecError) as e:
        load_job_spec({**base, "type": "suggest", "bundle": str(img), "suggest": {"window": 30}})
    assert e.value.field == "suggest.window"


def test_consensus_job_writes_labels_disagreement_and_scores(tmp_path):
    truth, img, anns = _consensus_inputs(tmp_path)
    spec = load_job_spec({"type": "consensus", "classes": CLASSES, "target": {"scenes": [{"image": "img.tif"}]},
                          "consensus": {"annotations": ["a.tif", "b.tif"]}, "output": "out"}, base_dir=tmp_path)
    stages = []

    class Watch:
        def on_stage(self, stage, done, total):
            stages.append(stage)

    r = run_job(spec, [Watch()])
    assert r["status"] == "finished" and set(r["annotators"]) == {"a", "b"}
    with rasterio.open(tmp_path / "out" / "consensus.tif") as ds:
        assert ds.read(1).tolist() == truth.tolist()
    assert (tmp_path / "out" / "consensus_disagreement.tif").exists()
    assert json.loads((tmp_path / "out" / "consensus_scores.json").read_text())["class_pixels"] == {"1": 800, "4": 800}
    assert "consensus: graph cuts" in stages


def test_suggest_job_writes_geopackage_geojson_and_summary(nc_bands, nc_classes, tmp_path):
    with Scene.open(nc_bands) as s:
        stats = compute_stats([s])
    small_conv_bundle(tmp_path / "model", nc_classes, stats)
    spec = load_job_spec({"type": "suggest", "bundle": str(tmp_path / "model"),
                          "classes": [c.model_dump() for c in nc_classes],
                          "target": {"scenes": [{"bands": [str(p) for p in nc_bands]}], "region": {"columns": [0.5, 1.0]}},
                          "suggest": {"count": 4, "window": 64}, "output": str(tmp_path / "out")})
    r = run_job(spec)
    assert r["status"] == "finished" and r["suggestions"] == 4 and r["window"] == 64
    assert pyogrio.read_info(tmp_path / "out" / "suggestions.gpkg")["features"] == 4
    fc = json.loads((tmp_path / "out" / "suggestions.geojson").read_text())
    assert [f["properties"]["rank"] for f in fc["features"]] == [1, 2, 3, 4]
    summary = json.loads((tmp_path / "out" / "suggestions.json").read_text())
    assert all(s["window"][0] >= 244 for s in summary["suggestions"])  # inside the region: columns 50-100 %
