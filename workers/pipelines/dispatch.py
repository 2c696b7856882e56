"""Which pipeline runs a job: the one entry point for every job type and method.

    evaluate                      -> train.evaluate_job
    predict                       -> predict.run_job
    suggest, consensus            -> labels.run_suggest_job, labels.run_consensus_job
    adapt, method adabn           -> adabn.run_adabn (no training)
    adapt, method label-shift     -> label_shift.run_label_shift (no training)
    adapt, method feature-regression -> feature_regression.run_feature_regression (teacher, then student)
    pretrain                      -> pretrain.run_pretrain (a backbone from unlabelled imagery)
    train, or adapt by any other method -> train.run_training

It sits above the pipelines so none of them imports another to dispatch (feature regression trains
its teacher through train.run_training directly).
"""
from __future__ import annotations

from typing import Callable, Sequence

from core.jobspec import JobSpec
from models.training.callbacks import Callback
from workers.pipelines import labels, predict
from workers.pipelines.adabn import run_adabn
from workers.pipelines.feature_regression import run_feature_regression
from workers.pipelines.label_shift import run_label_shift
from workers.pipelines.pretrain import run_pretrain
from workers.pipelines.run_options import RunOptions
from workers.pipelines.train import evaluate_job, run_training


def run_job(
    spec: JobSpec,
    callbacks: Sequence[Callback] | None = None,
    *,
    resume: bool = True,
    device: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run any job of a validated spec (its type and method fit: core.jobspec); returns its summary (status,
    paths, metrics)."""
    if spec.type == "evaluate":
        return evaluate_job(spec, log=log)
    if spec.type == "predict":
        return predict.run_job(spec, callbacks, log=log)
    if spec.type == "suggest":
        return labels.run_suggest_job(spec, callbacks, log=log)
    if spec.type == "consensus":
        return labels.run_consensus_job(spec, callbacks, log=log)
    run = RunOptions.of(callbacks, resume=resume, device=device, log=log)
    if spec.type == "pretrain":
        return run_pretrain(spec, run)
    if spec.training_method == "adabn":
        return run_adabn(spec, run)
    if spec.training_method == "label-shift":
        return run_label_shift(spec, run)
    if spec.training_method == "feature-regression":
        return run_feature_regression(spec, run)
    return run_training(spec, run)
