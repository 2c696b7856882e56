"""A job's results as the API lists them: every predicted COG with its kind, so that only class maps are offered
as tiles, points and catalogue scenes (a consensus job's disagreement map is a float raster beside its labels)."""
from __future__ import annotations

import numpy as np

from core.job_layout import OUTPUT
from core.jobspec import load_job_spec
from service import results as job_results
from service.stac_catalog import predicted_scenes
from tests.helpers import write_raster
from workers.pipelines.dispatch import run_job


def test_a_consensus_jobs_disagreement_map_is_listed_as_such_not_as_a_class_map(tmp_path):
    truth = np.ones((32, 32), np.uint8)
    truth[:, 16:] = 4
    noisy = truth * 2.0 + np.random.default_rng(0).normal(0, 0.2, (3, 32, 32))
    write_raster(tmp_path / "img.tif", noisy.astype("float32"), -99999, "float32")
    write_raster(tmp_path / "a.tif", truth, 0, "uint8")
    b = truth.copy()
    b[:, 12:20] = 0
    write_raster(tmp_path / "b.tif", b, 0, "uint8")
    job_dir = tmp_path / "job"
    spec = load_job_spec({"type": "consensus", "classes": [{"id": 1, "name": "a", "color": "#ff0000"},
                                                           {"id": 4, "name": "b", "color": "#00ff00"}],
                          "target": {"scenes": [{"image": "img.tif"}]},
                          "consensus": {"annotations": ["a.tif", "b.tif"]}, "output": str(job_dir / OUTPUT)},
                         base_dir=tmp_path)
    assert run_job(spec)["status"] == "finished"

    kinds = {p["path"]: p["kind"] for p in job_results.describe(job_dir)["predictions"]}
    assert kinds == {"consensus.tif": "classes", "consensus_disagreement.tif": "disagreement"}
    assert [s.classes.name for s in predicted_scenes(job_dir)] == ["consensus.tif"]
