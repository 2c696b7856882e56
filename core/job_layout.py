"""Where a job's artefacts live: the names of its folder's files, asked by the service (which lists and
serves them) and by the workers (which write them), so both sides agree by construction.

    <data_dir>/jobs/<id>/              the job folder (service settings: job_dir)
      spec.json                        the spec as run
      inputs-report.json               what submit-time validation found
      output/                          the spec's ``output``: everything the pipelines write
        bundle/                        the model bundle (core.bundle_manifest: what it holds)
        metrics.json                   the run's scores
        history.jsonl                  training curves, one line per logged iteration (the console plots it)
        predictions/<role>-<i>-<image>.tif         a class COG per predicted scene
        predictions/<role>-<i>-<image>_probs.tif   its probability twin, when asked for
        predictions/.shards/<role>-<i>-<image>/    a sharded prediction's manifest and parts, until assembled
        predictions.json               what the predict step wrote, with its figures
        checkpoints/                   resume state (last.pth, best.pth; prior-reading.json: the class mix an
                                       ST-DASegNet job read before training); dropped once the job succeeds
        teacher/                       a feature-regression job's source-only teacher: an output folder
        source-only/                   an adapt job's source-only baseline: an output folder
        pretrained.pth                 a pretrain job's weights (backbone.*, decode_head.* keys): what
                                       model.checkpoint of a later job names (this file or the folder)
        pretrained.json                what made them: method, config, bands, data, iterations, losses
"""
from __future__ import annotations

from pathlib import Path

# ---- the job folder ----------------------------------------------------------------------------------
#: the spec as run, beside the output folder
JOB_SPEC = "spec.json"
#: the submit-time validation report
INPUTS_REPORT = "inputs-report.json"
#: the folder the pipelines write in (the spec's ``output``)
OUTPUT = "output"

# ---- an output folder (a job's, or a sub-job's) ------------------------------------------------------
BUNDLE = "bundle"
#: a bundle's weights file (core.bundle_manifest knows the rest of a bundle)
BUNDLE_WEIGHTS = "weights.pth"
METRICS = "metrics.json"
HISTORY = "history.jsonl"
PREDICTIONS = "predictions"
PREDICTIONS_INDEX = "predictions.json"
#: where a training run's loop writes its checkpoints (last.pth, best.pth)
CHECKPOINTS = "checkpoints"
#: in CHECKPOINTS: what an ST-DASegNet job with ``pseudo_prior: label-shift`` read before training (kept for resumes)
PRIOR_READING = "prior-reading.json"
#: a report a job may leave, in the order the results prefer them
REPORTS = ("report.json", "report.html", "report.md")
#: sub-jobs: output folders of their own inside a job's output
TEACHER = "teacher"
SOURCE_ONLY = "source-only"

#: a pretrain job's weights and their record
PRETRAINED = "pretrained.pth"
PRETRAINED_RECORD = "pretrained.json"

#: folders of intermediate state, not results: ours (checkpoints) and those other tools leave
INTERMEDIATE_DIRS = frozenset({CHECKPOINTS, "checkpoint", "ckpt", "work_dirs", "tmp", ".cache"})
#: file suffixes of predicted rasters (COGs)
COG_SUFFIXES = (".tif", ".tiff")


def output_dir(job_dir: Path) -> Path:
    """A job folder's output folder."""
    return job_dir / OUTPUT


def is_intermediate(relpath: Path) -> bool:
    """Whether a path relative to an output folder lies in intermediate state or is hidden (not a result)."""
    return any(part in INTERMEDIATE_DIRS or part.startswith(".") for part in relpath.parts)


def is_prediction(relpath: Path) -> bool:
    """Whether a path relative to an output folder is a predicted raster: a COG outside the bundle."""
    return relpath.parts[0] != BUNDLE and relpath.suffix.lower() in COG_SUFFIXES


#: beside a sharded prediction's COG: a folder per prediction with its manifest and its shards' parts
SHARDS = ".shards"


def shard_folder(class_path: str | Path) -> Path:
    """Where the shards of the prediction written to ``class_path`` keep their manifest and parts."""
    class_path = Path(class_path)
    return class_path.parent / SHARDS / class_path.stem


def probability_path_for(class_path: str | Path) -> Path:
    """Where a class COG's per-class probabilities go: ``<stem>_probs.tif`` beside it."""
    class_path = Path(class_path)
    return class_path.with_name(f"{class_path.stem}_probs{class_path.suffix or '.tif'}")


def is_probabilities(path: Path) -> bool:
    """Whether a predicted raster holds probabilities rather than classes (by its name, as results list it)."""
    return "prob" in path.name.lower()


#: a consensus label COG's twin: where its annotators disagree (float in [0, 1]; no class map)
DISAGREEMENT_SUFFIX = "_disagreement"


def disagreement_path_for(labels_path: str | Path) -> Path:
    """Where a consensus label COG's disagreement map goes: ``<stem>_disagreement.tif`` beside it."""
    labels_path = Path(labels_path)
    return labels_path.with_name(f"{labels_path.stem}{DISAGREEMENT_SUFFIX}{labels_path.suffix or '.tif'}")


def prediction_kind(path: Path) -> str:
    """What a predicted raster holds, by its name: ``probabilities``, ``disagreement`` or ``classes`` (the only
    kind that tiles, points and catalogues read as a class map)."""
    if is_probabilities(path):
        return "probabilities"
    if Path(path).stem.lower().endswith(DISAGREEMENT_SUFFIX):
        return "disagreement"
    return "classes"


def checkpoint_file_of(path: Path) -> Path | None:
    """The weights file that a job's ``model.checkpoint`` names: a file as it is; in a folder, a pretrain job's
    weights (its output folder), else a bundle's weights (a bundle folder, or an output folder holding one);
    None for a folder holding neither."""
    path = Path(path)
    if not path.is_dir():
        return path
    for candidate in (path / PRETRAINED, path / BUNDLE_WEIGHTS, path / BUNDLE / BUNDLE_WEIGHTS):
        if candidate.is_file():
            return candidate
    return None
