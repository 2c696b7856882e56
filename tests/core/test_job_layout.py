"""core.job_layout: which files of a job's output are results, predictions and probability twins."""
from __future__ import annotations

from pathlib import Path

import pytest

from core import job_layout as layout


def test_the_output_folder_sits_beside_the_spec_in_the_job_folder(tmp_path):
    assert layout.output_dir(tmp_path / "jobs" / "j1") == tmp_path / "jobs" / "j1" / "output"
    assert layout.output_dir(tmp_path).parent / layout.JOB_SPEC == tmp_path / "spec.json"


@pytest.mark.parametrize("rel, intermediate", [
    ("metrics.json", False),
    ("predictions/target-0-a.tif", False),
    ("teacher/bundle/bundle.json", False),  # a sub-job's results are results
    ("checkpoints/last.pth", True),
    ("source-only/checkpoints/best.pth", True),  # a sub-job's checkpoints are not
    ("work_dirs/run/log.txt", True),
    ("predictions/.target-0-a.tif.tmp", True),  # a COG being written
    (".cache/x", True),
])
def test_intermediate_state_and_hidden_files_are_not_results(rel, intermediate):
    assert layout.is_intermediate(Path(rel)) is intermediate


@pytest.mark.parametrize("rel, prediction", [
    ("predictions/target-0-a.tif", True),
    ("predictions/target-0-a_probs.tif", True),
    ("teacher/predictions/x.TIFF", True),
    ("scene.tif", True),
    ("bundle/weights.tif", False),  # whatever a bundle holds is the model, not a map
    ("predictions.json", False),
    ("predictions/target-0-a.png", False),
])
def test_predictions_are_cogs_outside_the_bundle(rel, prediction):
    assert layout.is_prediction(Path(rel)) is prediction


def test_a_class_cog_and_its_probability_twin():
    cls = Path("out/predictions/target-0-scene.tif")
    twin = layout.probability_path_for(cls)
    assert twin == Path("out/predictions/target-0-scene_probs.tif")
    assert layout.probability_path_for("a/b") == Path("a/b_probs.tif")  # no suffix: a GeoTIFF's
    assert layout.is_probabilities(twin) and not layout.is_probabilities(cls)


def test_checkpoints_are_intermediate_state_wherever_a_run_writes_them():
    assert layout.CHECKPOINTS in layout.INTERMEDIATE_DIRS
    for sub in (layout.TEACHER, layout.SOURCE_ONLY):
        assert layout.is_intermediate(Path(sub) / layout.CHECKPOINTS / "last.pth")
        assert not layout.is_intermediate(Path(sub) / layout.BUNDLE / "weights.pth")


@pytest.mark.parametrize("name, kind", [
    ("target-0-a.tif", "classes"),
    ("target-0-a_probs.tif", "probabilities"),
    ("consensus_disagreement.tif", "disagreement"),
    ("labels_DISAGREEMENT.TIF", "disagreement"),
    ("disagreement_of_students.tif", "classes"),  # only the twin's suffix marks one
])
def test_what_a_predicted_raster_holds_by_its_name(name, kind):
    assert layout.prediction_kind(Path("out") / name) == kind


def test_a_consensus_and_its_disagreement_twin():
    twin = layout.disagreement_path_for("out/consensus.tif")
    assert twin == Path("out/consensus_disagreement.tif") and layout.prediction_kind(twin) == "disagreement"
