"""AdaBN adapt job: a trained model's batch-norm statistics re-estimated on target windows; no training.

Call flow of ``run_adabn`` (workers.pipelines.dispatch hands every adabn job here)::

    load_bundle(spec.bundle): the model, its classes and the statistics it was trained with; no BatchNorm
        layer -> NoBatchNormError
    open the target scenes (unlabelled) and the validation scenes; band counts against the model
    WindowSampler(target, crop, the model's target-like statistics): windows drawn as the trainer draws target
        windows
    score the unchanged model on the validation scenes (the baseline)
    reestimate_batchnorm over params.batches batches: progress per batch, cancel between batches
        (a cancelled job writes nothing; running it again starts over, it takes seconds)
    <output>/bundle: the same weights with the new statistics; its target statistics (its default) are the ones
        the source bundle predicts target-like scenes with (a source-only model's: its source statistics; an
        adapted model's: its target statistics), so predicting the target normalises as the re-estimation did
    metrics.json (the model before and after on the validation scenes), target predictions
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import torch

from core.errors import BandCountMismatchError, NoBatchNormError
from core.bundle_manifest import check_same_classes
from core.job_layout import BUNDLE
from core.jobspec import JobSpec
from core.raster.domain import Domain
from models.batchnorm_statistics import batchnorm_layers, reestimate_batchnorm
from models.bundle import load_bundle, save_bundle
from models.sampling.sampler import WindowSampler
from models.label_free import domain_windows, label_free_signals
from models.normalization import SOURCE, TARGET, Normalization
from models.training.callbacks import CallbackList, LoopResult, Progress
from workers.pipelines.job_parts import finish_job, open_validation, provenance_record, validation_scorer
from workers.pipelines.run_options import RunOptions

METHOD = "adabn"
#: what the job's progress names its batches (no training happens)
STAGE = "re-estimating batch-norm statistics"


def _batches(sampler: WindowSampler, run: dict, device: torch.device, callbacks: CallbackList,
             state: dict) -> Iterator[torch.Tensor]:
    """``run['batches']`` target batches, reporting progress after each and stopping when asked."""
    total, t0 = run["batches"], time.perf_counter()
    callbacks.on_start(0, total)
    callbacks.on_progress(Progress(iteration=0, total=total, losses={}, lr={}, elapsed_s=0.0, eta_s=None, stage=STAGE))
    for i in range(total):
        if callbacks.should_stop():
            state["stopped"] = True
            return
        yield sampler.sample(run["batch_size"])["img"].to(device)
        state["done"] = i + 1
        elapsed = time.perf_counter() - t0
        callbacks.on_progress(Progress(iteration=i + 1, total=total, losses={}, lr={}, elapsed_s=elapsed,
                                       eta_s=elapsed / (i + 1) * (total - i - 1), sec_per_iter=elapsed / (i + 1),
                                       stage=STAGE))


def run_adabn(spec: JobSpec, opts: RunOptions) -> dict:
    """Run an adabn adapt job; returns run_training's summary shape (status, paths, metrics)."""
    say, dev = opts.log, opts.device
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    out = Path(spec.output)
    cbs = CallbackList(opts.callbacks)

    say(f"loading the source model bundle {spec.bundle}")
    source_model = load_bundle(spec.bundle)
    layers = len(batchnorm_layers(source_model.segmentor))
    if layers == 0:
        raise NoBatchNormError(f"{spec.bundle} ({source_model.config.get('name')})")
    check_same_classes(spec.class_ids, source_model.class_ids)
    classes, names = source_model.classes, [c.name for c in source_model.classes]
    run = {"batches": spec.params.batches, "batch_size": spec.params.batch_size, "crop": spec.params.crop}
    seed = spec.params.seed
    # the statistics the model normalises target-like scenes with (its default: a source-only model's are the
    # source's, an adapted model's the target's it was trained with): the re-estimation and every later
    # prediction on the target normalise with them, so the new statistics describe what the model will see
    trained = source_model.normalization
    stats = {SOURCE: trained.stats[SOURCE], TARGET: trained.stats[trained.default]}
    normalization = Normalization(stats, default=TARGET)
    target_normalizer = normalization.for_domain(TARGET)

    domains: list[Domain] = []
    try:
        say("opening the target domain")
        target = Domain.open(spec.target, classes, labels=False, field="target")
        domains.append(target)
        if target.band_count != source_model.band_count:
            raise BandCountMismatchError(f"the target scenes have {target.band_count} bands, the model takes "
                                         f"{source_model.band_count}", field="target")
        validation = open_validation(spec, classes, target, source_model.band_count, "the model takes")
        if validation is not None:
            domains.append(validation)
        out.mkdir(parents=True, exist_ok=True)

        say("indexing target windows")
        sampler = WindowSampler(target, run["crop"], target_normalizer, seed=seed, labelled=False)
        segmentor = source_model.segmentor.to(dev)
        validate = validation_scorer(validation, normalization, names)
        before = None
        if validate is not None:
            say("scoring the source model on the validation scenes")
            before = validate(segmentor.eval())

        class_ids = [c.id for c in classes]
        # what a user without target labels can compare: the unchanged model's signals, then the adapted one's
        signals_before = label_free_signals(segmentor.eval(), domain_windows(target, target_normalizer), [],
                                            class_ids=class_ids)
        say(f"re-estimating {layers} batch-norm layers' statistics on {run['batches']} target batches "
            f"(batch {run['batch_size']}, crop {run['crop']}) on {dev}")
        state = {"done": 0, "stopped": False}
        try:
            reestimate_batchnorm(segmentor, _batches(sampler, run, dev, cbs, state))
        except ValueError:  # no batch at all: asked to stop before the first one
            if not state["stopped"]:
                raise
        result = LoopResult(iterations_done=state["done"], total=run["batches"], stopped=state["stopped"],
                            last_checkpoint=None, best=None, elapsed_s=time.perf_counter() - t0)
        cbs.on_end(result)
        if state["stopped"]:
            return {"status": "stopped", "iteration": state["done"], "total": run["batches"], "checkpoint": None}

        after = validate(segmentor.eval()) if validate is not None else None
        signals = label_free_signals(segmentor.eval(), domain_windows(target, target_normalizer), [],
                                     class_ids=class_ids)
        datasets = source_model.provenance.get("datasets") or {}
        provenance = provenance_record(
            spec, method=METHOD, config=source_model.config.get("name"), seed=seed, run=run, best=None,
            started=started, t0=t0, device=dev, batchnorm_layers=layers,
            source_model={"bundle": str(spec.bundle), "method": source_model.method,
                          "job_type": source_model.provenance.get("job_type"),
                          "iterations": source_model.provenance.get("iterations")})
        provenance.update(normalization=trained.default,
                          weights="the source model's; batch-norm statistics re-estimated")
        provenance["datasets"]["source"] = datasets.get("source")  # what the source model was trained on
        # the unchanged model's scores and signals, under the name other adapt jobs give their source-only
        # baseline when that is what it is
        before_key = "source_only" if source_model.method == "source-only" else "baseline"
        metrics = {
            "validation": after,
            before_key: before,
            # by the source model's name for them
            "validation_stats": trained.default if validation is not None else None,
            "best": None,
            "adabn": {"batches": state["done"], "batch_size": run["batch_size"], "crop": run["crop"],
                      "batchnorm_layers": layers, "elapsed_s": round(result.elapsed_s, 1)},
            "label_free": {**signals, before_key: signals_before},
        }
        bundle_dir = save_bundle(out / BUNDLE, segmentor.cpu().eval(), source_model.config, classes,
                                 stats, provenance, after or {},
                                 inference=source_model.metadata["inference"], method=METHOD,
                                 band_map=source_model.band_map, default_stats="target")
        return finish_job(spec, out, bundle_dir, metrics, provenance, state["done"], opts.callbacks, say,
                          predict_targets=spec.params.predict_targets)
    finally:
        for d in domains:
            d.close()
