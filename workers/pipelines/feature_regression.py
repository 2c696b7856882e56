"""Feature-regression adapt job: a source-trained teacher, then a student regressed onto it on paired windows.

Call flow of ``run_feature_regression`` (workers.pipelines.dispatch hands every feature-regression job here)::

    teacher: spec.bundle (band count checked against the scenes)
             or phase 1: a source-only train job of the same spec in <output>/teacher
             (its own checkpoints and bundle, so a stopped job resumes inside either phase)
    open source + target unlabelled (the target's labels are never read); band counts; overlap
    PairedSampler(source, target): the target read onto each source window's grid
    FeatureRegression(config of the teacher + the feature-regression block), student = teacher copy
    TrainLoop(<output>/checkpoints): progress / validation / cancel / resume
    label-free signals of the student (agreement: with the teacher) and of the source-only teacher
    <output>/bundle (the student: adapted backbone + reused decoder), metrics.json, target predictions

Progress of both phases is reported as one run of teacher + student iterations.
"""
from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from core.bundle_manifest import MANIFEST
from core.errors import BandCountMismatchError, BundleError, NoOverlapError, SpecError
from core.job_layout import BUNDLE, CHECKPOINTS, HISTORY, TEACHER
from core.jobspec import JobSpec
from core.raster.domain import Domain
from core.raster.warp import bounds_in
from models.adaptation import build_method
from models.adaptation.feature_regression import PairedBatches
from models.adaptation.source_only import class_weight_of
from models.bundle import Bundle, load_bundle, save_bundle
from models.class_weights import fill_auto_class_weights
from models.config import resolve_config, train_settings
from models.sampling.sampler import PairedSampler
from models.normalization import Normalization
from models.training.callbacks import Callback, CallbackList, HistoryFile
from models.training.loop import TrainLoop, load_best_weights
from workers.pipelines.job_parts import (finish_job, label_free_record, open_validation, provenance_record,
                                        validation_scorer)
from workers.pipelines.run_options import RunOptions
from workers.pipelines.train import TRAIN_KEYS, band_map_of, run_training, seed_everything

METHOD = "feature-regression"


class PhaseCallbacks(Callback):
    """Shows the callbacks one run of ``grand_total`` iterations: this phase starts at ``offset``.
    A phase that is not the last one does not report its end (the job goes on)."""

    def __init__(self, callbacks: Sequence[Callback] | None, offset: int, grand_total: int, last: bool):
        self.inner = CallbackList(callbacks)
        self.offset, self.grand_total, self.last = int(offset), int(grand_total), last

    def on_start(self, iteration, total):
        self.inner.on_start(iteration + self.offset, self.grand_total)

    def on_progress(self, progress):
        self.inner.on_progress(dataclasses.replace(progress, iteration=progress.iteration + self.offset,
                                                   total=self.grand_total))

    def on_validation(self, iteration, metrics, is_best):
        self.inner.on_validation(iteration + self.offset, metrics, is_best)

    def on_checkpoint(self, iteration, path, kind):
        self.inner.on_checkpoint(iteration + self.offset, path, kind)

    def should_stop(self):
        return self.inner.should_stop()

    def on_end(self, result):
        if self.last:
            self.inner.on_end(dataclasses.replace(result, iterations_done=result.iterations_done + self.offset,
                                                  total=self.grand_total))

    def on_stage(self, stage, done=None, total=None):
        for c in self.inner.callbacks:
            c.on_stage(stage, done, total)

    def __getattr__(self, name):  # other hooks a caller's callback has (e.g. a reporter's on_log)
        if name.startswith("__") or name == "inner":  # copy/pickle probe before __init__: no recursion
            raise AttributeError(name)
        for c in self.inner.callbacks:
            if hasattr(c, name):
                return getattr(c, name)
        raise AttributeError(name)


def check_overlap(source: Domain, target: Domain) -> None:
    """A clear error when no source scene shares ground with any target scene."""
    for s in source.items:
        for t in target.items:
            if s.grid.crs is None or t.scene.grid.crs is None:
                if s.grid.crs is None and t.scene.grid.crs is None and s.scene.grid.shape == t.scene.grid.shape:
                    return
                continue
            a, b = s.grid.bounds, bounds_in(t.scene.grid, s.grid.crs)
            if min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1]):
                return
    raise NoOverlapError("the source and target scenes share no ground: feature regression needs the same "
                         "ground seen in both domains", field="target")


def teacher_spec(spec: JobSpec) -> JobSpec:
    """Phase 1: the same job as a source-only train job in <output>/teacher (adaptation overrides dropped)."""
    overrides = {k: v for k, v in (spec.model.overrides or {}).items() if not str(k).startswith("adaptation")}
    body = spec.to_jsonable()  # params the job left to the config stay unset, as the job's phase plan counts them
    body.update(type="train", method="source-only", target=None, bundle=None,
                output=str(Path(spec.output) / TEACHER))
    body["model"]["overrides"] = overrides
    return JobSpec.model_validate(body)


def _check_teacher(bundle: Bundle, spec: JobSpec) -> None:
    inf = (bundle.config or {}).get("inference") or {}
    if inf.get("type", "Segmentor") != "Segmentor":
        raise BundleError(f"a feature-regression teacher must be a plain segmentor bundle (source-only); "
                          f"this one is {bundle.method!r} ({inf.get('type')})", field="bundle")
    if [c.id for c in bundle.classes] != [c.id for c in spec.classes]:
        raise SpecError(f"the job's classes {[c.id for c in spec.classes]} differ from the teacher bundle's "
                        f"{[c.id for c in bundle.classes]}", field="classes")


def run_feature_regression(spec: JobSpec, opts: RunOptions) -> dict:
    """Run a feature-regression adapt job; returns run_training's summary shape (status, paths, metrics)."""
    say, dev = opts.log, opts.device
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    out = Path(spec.output)
    out.mkdir(parents=True, exist_ok=True)
    explicit = {k: getattr(spec.params, k) for k in TRAIN_KEYS if k in spec.params.model_fields_set}
    defaults = {k: getattr(spec.params, k) for k in TRAIN_KEYS}

    # fail before any training: bands of the two domains, and shared ground
    with Domain.open(spec.source, spec.classes, labels=False, field="source") as s_dom, \
            Domain.open(spec.target, spec.classes, labels=False, field="target") as t_dom:
        if t_dom.band_count != s_dom.band_count:
            raise BandCountMismatchError(
                f"the target has {t_dom.band_count} bands, the source {s_dom.band_count}", field="target")
        check_overlap(s_dom, t_dom)

    teacher_iters = 0
    if spec.bundle is not None:
        say(f"loading the teacher bundle {spec.bundle}")
        teacher = load_bundle(spec.bundle)
        teacher_source = str(spec.bundle)
    else:
        tspec = teacher_spec(spec)
        tcfg = resolve_config(spec.model.config, overrides=tspec.model.overrides)
        teacher_iters = int(train_settings(tcfg, explicit, defaults)["iterations"])
        fcfg = resolve_config(spec.model.config, method=METHOD, overrides=spec.model.overrides)
        student_iters = int(train_settings(fcfg, explicit, defaults)["iterations"])
        grand = teacher_iters + student_iters
        tdir = Path(tspec.output)
        if not (tdir / BUNDLE / MANIFEST).exists():
            say("phase 1: training the teacher (source-only) on the source labels")
            res = run_training(tspec, opts.with_callbacks([PhaseCallbacks(opts.callbacks, 0, grand, last=False)]))
            if res["status"] != "finished":
                return {**res, "phase": "teacher", "total": grand}
        teacher = load_bundle(tdir)
        teacher_source = "trained in this job (teacher/bundle)"
    _check_teacher(teacher, spec)
    classes = teacher.classes
    names = [c.name for c in classes]

    domains: list[Domain] = []
    try:
        say("opening the source and target domains")
        source = Domain.open(spec.source, classes, labels=False, field="source")
        domains.append(source)
        target = Domain.open(spec.target, classes, labels=False, field="target")
        domains.append(target)
        for name, dom in (("source", source), ("target", target)):
            if dom.band_count != teacher.band_count:
                raise BandCountMismatchError(
                    f"the {name} scenes have {dom.band_count} bands, the teacher model takes {teacher.band_count}",
                    field=name)
        validation = open_validation(spec, classes, source, teacher.band_count, "the model takes")
        if validation is not None:
            domains.append(validation)

        bands = teacher.band_count
        base = {k: v for k, v in teacher.config.items() if k not in ("inference", "adaptation", "checkpoint")}
        cfg = resolve_config(base, method=METHOD, overrides=spec.model.overrides, in_channels=bands,
                             num_classes=len(classes))
        # the student learns no classes from labels: "auto" weights are the teacher's, as it computed them
        cfg = fill_auto_class_weights(cfg, weights=class_weight_of(teacher.config["model"]) or [1.0] * len(classes))
        run = train_settings(cfg, explicit, defaults)
        grand = teacher_iters + int(run["iterations"])
        seed = spec.params.seed

        say("computing band statistics")
        # the teacher saw source windows normalised with its own source statistics; the target's own are
        # computed only when the job normalises per domain (else its windows get the source's)
        source_stats = teacher.normalization.stats["source"]
        target_stats = (target.stats(store=out / "stats") if spec.params.normalization == "per-domain"
                        else source_stats)
        normalization = Normalization({"source": source_stats, "target": target_stats}, spec.params.normalization)
        say("indexing the ground shared by source and target")
        sampler = PairedSampler(source, target, run["crop"], normalization, seed=seed)
        batches = PairedBatches(sampler, run["batch_size"], device=dev)

        seed_everything(seed)
        method = build_method(cfg, total_iters=run["iterations"], method=METHOD)
        method.set_teacher(teacher.segmentor.state_dict())
        method.to(dev)

        validate = validation_scorer(validation, normalization, names)
        source_only = None
        if validate is not None:
            # the baseline the adaptation is judged against: the source-only teacher on the same
            # scenes with the same statistics, so the difference is what the regression did
            say("scoring the source-only teacher on the validation scenes")
            source_only = validate(teacher.segmentor.to(dev).eval())

        phase = PhaseCallbacks(opts.callbacks, teacher_iters, grand, last=True)
        loop = TrainLoop(method, batches, total_iters=run["iterations"], workdir=out / CHECKPOINTS,
                         checkpoint_interval=spec.params.checkpoint_interval, validate=validate,
                         val_interval=spec.params.val_interval,
                         callbacks=[HistoryFile(out / HISTORY), phase])
        say(f"phase 2: regressing target features onto the teacher's ({run['iterations']} iterations, "
            f"batch {run['batch_size']}, crop {run['crop']}) on {dev}")
        result = loop.run(resume=opts.resume)
        if result.stopped:
            return {"status": "stopped", "phase": "student", "iteration": teacher_iters + result.iterations_done,
                    "total": grand, "checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None}

        best = load_best_weights(method, out / CHECKPOINTS) if validation is not None else None
        val_metrics = best["metrics"] if best else (result.validations[-1]["metrics"] if result.validations else None)
        provenance = provenance_record(
            spec, method=METHOD, config=cfg.get("name"), seed=seed, run=run, best=best, started=started, t0=t0,
            device=dev, trained_by=result.code, teacher={"bundle": teacher_source, "method": teacher.method,
                                 "iterations": teacher.provenance.get("iterations")})
        metrics = {
            "validation": val_metrics,
            "source_only": source_only,
            "validation_stats": normalization.for_domain("validation").name if validation is not None else None,
            "best": result.best,
            "teacher": teacher.metrics or None,
            "training": {"iterations": result.iterations_done, "final_losses": result.final_losses,
                         "late_losses": result.late_losses,
                         "elapsed_s": round(result.elapsed_s, 1)},
        }
        say("computing the label-free signals on target and source windows")
        metrics["label_free"] = label_free_record(method, cfg, classes, target, source, normalization)
        # the teacher is at hand (no training): its signals are the source-only ones to compare with
        metrics["label_free"]["source_only"] = label_free_record(method.teacher, cfg, classes, target, source,
                                                                 normalization)
        cfg["inference"] = method.inference_config()
        seg = method.inference_segmentor().cpu().eval()
        bundle_dir = save_bundle(out / BUNDLE, seg, cfg, classes, normalization.stats, provenance, val_metrics or {},
                                 inference=cfg["inference"], method=METHOD,
                                 band_map=teacher.band_map or band_map_of(spec.source.scenes[0], bands),
                                 default_stats=normalization.default)
        return finish_job(spec, out, bundle_dir, metrics, provenance, result.iterations_done, opts.callbacks, say,
                          predict_targets=spec.params.predict_targets)
    finally:
        for d in domains:
            d.close()
