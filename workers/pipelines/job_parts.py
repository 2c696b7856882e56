"""The parts every training pipeline (train.py, feature_regression.py, adabn.py) shares around its own loop:
labelled validation scenes and the function that scores on them, the label-free signals of an adapt
job's model, the bundle's provenance record, and the finish (metrics.json, the log lines, the summary,
the target maps of an adapt job)."""
from __future__ import annotations

import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from core.code_version import code_version
from core.errors import BandCountMismatchError
from core.files import write_json
from core.job_layout import METRICS
from core.jobspec import DomainSpec, JobSpec
from core.raster.domain import Domain
from models.evaluate import evaluate_domain, segmentor_predict_fn
from models.label_free import PSEUDO_THRESHOLD, domain_windows, label_free_signals
from models.metrics import format_metrics
from models.normalization import SOURCE, TARGET, Normalization


def open_validation(spec: JobSpec, classes, source: Domain, bands: int, expected_by: str) -> Domain | None:
    """The job's labelled validation scenes on the source's grid (None without them); their band count
    must be ``bands`` (``expected_by`` names who expects it, for the message)."""
    if spec.validation is None:
        return None
    validation = Domain.open(spec.validation, classes, match_grid_of=source, match_gsd=spec.params.match_gsd,
                             field="validation")
    if validation.band_count != bands:
        validation.close()
        raise BandCountMismatchError(
            f"validation scenes have {validation.band_count} bands, {expected_by} {bands}", field="validation")
    return validation


def validation_scorer(validation: Domain | None, normalization: Normalization, names: list[str]) -> Callable | None:
    """segmentor -> metrics on the validation scenes (normalised as ``normalization`` normalises validation
    scenes), or None without them."""
    if validation is None:
        return None
    normalizer = normalization.for_domain("validation")

    def validate(seg):
        return evaluate_domain(segmentor_predict_fn(seg, normalizer), validation, names)

    return validate


def label_free_record(model, cfg: dict, classes, target: Domain, source: Domain,
                      normalization: Normalization) -> dict:
    """models.label_free's signals of a trained model (a method or a segmentor) on windows of the target's
    training region and of the source's, each normalised as ``normalization`` (the bundle's) normalises
    its domain; no label is read. Coverage is reported at the method's own pseudo-label threshold
    (ST-DASegNet's 0.975 by default)."""
    threshold = float((cfg.get("adaptation") or {}).get("pseudo_threshold", PSEUDO_THRESHOLD))
    return label_free_signals(model, domain_windows(target, normalization.for_domain(TARGET)),
                              domain_windows(source, normalization.for_domain(SOURCE)),
                              class_ids=[c.id for c in classes], pseudo_threshold=threshold)


def domain_record(spec: DomainSpec | None) -> dict | None:
    return None if spec is None else json.loads(spec.model_dump_json())


def provenance_record(spec: JobSpec, *, method: str, config: str | None, seed: int, run: dict, best: dict | None,
                      started: datetime, t0: float, device: torch.device, trained_by: list[dict] | None = None,
                      **extra) -> dict:
    """What made a bundle: the job, method and settings, data, which weights, when, where, and which code (the
    code that wrote it; ``trained_by``: each training run's, a resumed job's first to last); ``extra`` holds the
    method's own entries (pretrained weights, teacher, matched GSD)."""
    return {
        "job_type": spec.type,
        "method": method,
        "config": config,
        "overrides": spec.model.overrides,
        **extra,
        "seed": seed,
        **run,
        "normalization": spec.params.normalization,
        "datasets": {"source": domain_record(spec.source), "target": domain_record(spec.target),
                     "validation": domain_record(spec.validation)},
        "weights": f"best validated (iteration {best['iteration']})" if best else "last iteration",
        "started": started.isoformat(),
        "finished": datetime.now(timezone.utc).isoformat(),
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "device": str(device),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "code": {"written_by": code_version(), **({"trained_by": trained_by} if trained_by is not None else {})},
    }


def finish_job(spec: JobSpec, out: Path, bundle_dir: Path, metrics: dict, provenance: dict, iterations: int,
               callbacks, say: Callable[[str], None], *, predict_targets: bool) -> dict:
    """metrics.json, the log lines and the summary; then, for an adapt job that asks for them, one class
    COG per target scene (workers.pipelines.predict) under <output>/predictions/."""
    metrics_path = write_json(out / METRICS, metrics)
    say(f"bundle written to {bundle_dir}")
    if metrics.get("validation"):
        say(format_metrics(metrics["validation"]))
    summary = {"status": "finished", "bundle": str(bundle_dir), "metrics_path": str(metrics_path),
               "metrics": metrics, "iterations": iterations, "provenance": provenance}
    if predict_targets:
        # the maps of the target are what the user came for: predict them with the new model
        from workers.pipelines.predict import predict_domains

        predicted = predict_domains(bundle_dir, [("target", spec.target)], out, callbacks, log=say,
                                    options={"probabilities": spec.params.predict_probabilities},
                                    shards=spec.params.shards)
        if predicted["status"] == "stopped":
            return {**summary, "status": "stopped", "predictions": predicted["predictions"]}
        summary["predictions"] = predicted["predictions"]
    return summary
