"""The OGC API - Processes catalogue: one process per job type and method, described from the job spec.

A process id is `<type>-<method>` for the types that train (core.jobspec.METHODS_OF_TYPE says which
methods each takes) and the bare type for those that run a bundle's model as trained (predict,
evaluate). A process's inputs are the job spec's fields less `type` and `method`, which the process id
carries, and `output`, which the server sets; their schemas are the spec's own (pydantic), so the
description changes when the spec does. URLs are the API's to add (service/api/routes/ogc_processes.py).
"""
from __future__ import annotations

from functools import cache
from typing import Any, get_args

from core.jobspec import METHODS_OF_TYPE, JobSpec, JobType

#: spec fields that are not inputs: the process id names type and method, the server sets output
NOT_INPUTS = ("type", "method", "output")
#: the media type of a class or probability map (a cloud-optimised GeoTIFF)
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

_TITLES = {
    "train-source-only": ("Train a segmentor (source-only)",
                          "Train a plain segmentor on labelled source scenes; the model serves as a baseline, a "
                          "feature-regression teacher or an AdaBN starting point."),
    "adapt-st-dasegnet": ("Adapt with ST-DASegNet",
                          "Adapt a segmentor from labelled source scenes to unlabelled target scenes: dual "
                          "students, adversarial alignment, disentanglement and EMA self-training."),
    "adapt-feature-regression": ("Adapt with feature regression",
                                 "Adapt a segmentor to the target scenes by regressing its features onto those of a "
                                 "source-only teacher (trained first, or given as 'bundle')."),
    "adapt-adabn": ("Adapt with AdaBN",
                    "Re-estimate a trained model's batch-norm statistics on unlabelled target scenes; 'bundle' "
                    "names the model and stands for the source."),
    "adapt-label-shift": ("Adapt to the target's class frequencies (label shift)",
                          "Move a trained model ('bundle') onto the target's class mix: its probabilities calibrated "
                          "on the labelled source scenes, the target's class frequencies estimated by EM on the "
                          "unlabelled target scenes, the classifier's biases moved by their ratio; no training."),
    "adapt-semi": ("Adapt with a few target labels (semi-supervised correction)",
                   "Adapt a segmentor with the source labels and the labels on part of the target (a label raster, "
                   "or polygons, optionally limited by 'label_windows'): segmentation and inpainting decoders on "
                   "one encoder, per-class masking, gated feature fusion."),
    "pretrain-simclr": ("Pretrain a backbone with SimCLR",
                        "Learn a backbone from unlabelled source and/or target imagery by contrasting two augmented "
                        "views of each window (with pretraining.local, also regions of the decoder's map); train and "
                        "adapt jobs start from it (model.checkpoint: this job's id)."),
    "pretrain-siameseim": ("Pretrain a backbone with SiameseIM",
                           "Learn a backbone and decoder from unlabelled imagery: a masked view predicts the dense "
                           "representation of a second view (EMA target branch) at their relative positions."),
    "pretrain-croco": ("Pretrain a backbone with CroCo",
                       "Learn a backbone from co-registered source and target scenes over the same ground: masked "
                       "patches of one are reconstructed from its visible patches and the other, unmasked."),
    "predict": ("Predict class maps",
                "Run a trained model ('bundle': a path or a model id) over scenes: a class COG per scene and, "
                "unless turned off, its per-class probabilities."),
    "evaluate": ("Evaluate a model",
                 "Score a trained model ('bundle') against labelled scenes: metrics per class and overall."),
    "suggest": ("Suggest windows to label",
                "Rank non-overlapping windows of the target scene by the model's uncertainty ('bundle'), spread "
                "over its predicted class mixes: suggestions.gpkg, suggestions.geojson (WGS84), suggestions.json."),
    "consensus": ("Consensus labels",
                  "One label map of the target scene from several annotations ('consensus.annotations'): "
                  "annotator scores, missing annotations predicted, a graph-cut MRF; labels, disagreement, scores."),
}

#: the spec's fields whose schema says nothing of their role
_INPUT_DESCRIPTIONS = {
    "source": "source-domain scenes (labelled where the job trains on them), and the part of them to use",
    "target": "target-domain scenes (unlabelled, except for evaluate and semi jobs), and the part of them to use",
    "validation": "labelled scenes the model is scored on during and after training",
    "model": "the model config (see `geoadapt configs`) with optional overrides; a string names a config",
    "classes": "the classes: id as in the label rasters, name, colour (#rrggbb); a pretrain job needs none",
    "params": "run parameters (iterations, batch size, crop, seed, ...)",
    "suggest": "suggest jobs: how many windows, their size, the class-mix penalty",
    "consensus": "consensus jobs: the annotation files (two or more) and the MRF's weights",
}

#: every output a job may leave; a job's results hold those it did leave
OUTPUTS: dict[str, dict[str, Any]] = {
    "bundle": {"title": "model bundle",
               "description": "the trained model (its page: config, classes, metadata, metrics)",
               "schema": {"type": "string", "format": "uri", "contentMediaType": "application/json"}},
    "metrics": {"title": "metrics", "description": "the run's scores and label-free signals",
                "schema": {"type": "object"}},
    "report": {"title": "report", "description": "the job's report file",
               "schema": {"type": "string", "format": "uri"}},
    "classes": {"title": "class maps", "description": "one class COG per predicted scene",
                "schema": {"type": "array",
                           "items": {"type": "string", "format": "uri", "contentMediaType": COG_MEDIA_TYPE}}},
    "pretrained": {"title": "pretrained weights",
                   "description": "a pretrain job's backbone weights (pretrained.pth): model.checkpoint of a train "
                                  "or adapt job names them by this job's id",
                   "schema": {"type": "string", "format": "uri", "contentMediaType": "application/octet-stream"}},
    "probabilities": {"title": "probability maps",
                      "description": "per-class probabilities (uint8, p x 254) of each predicted scene",
                      "schema": {"type": "array",
                                 "items": {"type": "string", "format": "uri", "contentMediaType": COG_MEDIA_TYPE}}},
}
_OUTPUTS_OF_TYPE: dict[str, tuple[str, ...]] = {
    "train": ("bundle", "metrics", "report"),
    "adapt": ("bundle", "metrics", "report", "classes", "probabilities"),
    "predict": ("classes", "probabilities"),
    "evaluate": ("metrics", "report", "classes", "probabilities"),
    "suggest": (),
    "consensus": ("classes",),
    "pretrain": ("pretrained", "metrics"),
}


def process_id(job_type: str, method: str | None) -> str:
    """The process a job of this type and method is an execution of."""
    return f"{job_type}-{method}" if job_type in METHODS_OF_TYPE else job_type


@cache
def _catalogue() -> dict[str, tuple[str, str | None]]:
    """process id -> (job type, method or None), in the spec's order of types."""
    out: dict[str, tuple[str, str | None]] = {}
    for job_type in get_args(JobType):
        for method in METHODS_OF_TYPE.get(job_type, (None,)):
            out[process_id(job_type, method)] = (job_type, method)
    return out


def process_ids() -> list[str]:
    return list(_catalogue())


def job_kind(pid: str) -> tuple[str, str | None] | None:
    """(job type, method) of a process id; the method is None where the type takes none; None: no such process."""
    return _catalogue().get(pid)


def summary(pid: str, version: str) -> dict[str, Any]:
    """The process summary (id, title, description, version, job control) without links."""
    title, description = _TITLES.get(pid, (pid, ""))
    return {"id": pid, "title": title, "description": description, "version": version,
            "jobControlOptions": ["async-execute"], "outputTransmission": ["reference", "value"]}


def description(pid: str, version: str) -> dict[str, Any]:
    """The full process description: summary, inputs (from the job spec's schema) and outputs."""
    job_type, _ = _catalogue()[pid]
    return {**summary(pid, version), "inputs": _inputs(),
            "outputs": {name: OUTPUTS[name] for name in _OUTPUTS_OF_TYPE.get(job_type, tuple(OUTPUTS))}}


@cache
def _inputs() -> dict[str, dict[str, Any]]:
    schema = JobSpec.model_json_schema()
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    inputs = {}
    for name, prop in schema["properties"].items():
        if name in NOT_INPUTS:
            continue
        resolved = _inline(prop, defs)
        inputs[name] = {
            "title": prop.get("title") or name.capitalize(),
            "description": prop.get("description") or _INPUT_DESCRIPTIONS.get(name) or resolved.get("description", ""),
            "schema": resolved,
            "minOccurs": 1 if name in required else 0,
            "maxOccurs": 1,
        }
    return inputs


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """`node` with every `$ref` into `$defs` replaced by the definition: each input's schema stands alone
    (the spec's definitions nest, but never refer to themselves)."""
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return {**_inline(defs[ref.removeprefix("#/$defs/")], defs), **_inline(rest, defs)}
    return {k: _inline(v, defs) for k, v in node.items()}
