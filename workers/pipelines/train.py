"""Train / adapt / evaluate pipeline: a JobSpec in, a model bundle and metrics.json out.

Call flow of ``run_training`` (train jobs, and adapt jobs that train through the loop)::

    resolve config (name + overrides, fitted to the job's bands and classes)
    open domains: source (labelled), target (adapt; its labels are never read), validation
    statistics per domain -> samplers (source crops, target crops) -> SamplerBatches
    seed -> build the method (+ pretrained weights) -> ST-DASegNet with norm_eval 'per-domain': each domain's
        batch-norm statistics estimated on its crops -> ST-DASegNet with pseudo_prior 'label-shift': the target's
        class mix read from the start bundle, as a label-shift job reads it -> TrainLoop(checkpoints in
        <output>/checkpoints)
        -> progress / validation / cooperative stop through the callbacks; resumes from last.pth
        params.devices: N ranks (workers.distributed), each with batch_size / N windows of every batch from
        its own sampler streams; this process is rank 0 and starts the others right before the loop; they
        return after the loop, rank 0 goes on alone
    stopped? -> return (a later run with the same output resumes)
    best validated weights (if validated) -> label-free signals on target and source windows (adapt jobs)
        -> <output>/bundle, <output>/metrics.json
    adapt job (unless params.predict_targets is false) -> one class COG per target scene
        (workers.pipelines.predict) under <output>/predictions/

Adapt jobs of method semi also open the target's labels and draw labelled target windows beside the
unlabelled crops (models.sampling.sampler.LabelledWindowSampler). Adapt jobs of method feature-regression
and adabn have pipelines of their own (feature_regression.py, adabn.py; dispatch.py picks). Evaluate jobs load ``spec.bundle`` and score it on each labelled domain given.
"""
from __future__ import annotations

import json
import random
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from core.bundle_manifest import bundle_dir_of, check_same_classes
from core.errors import (BandCountMismatchError, BundleError, ConfigError, EmptyRegionError, NotALabelShiftError,
                         SpecError)
from core.files import write_json
from core.job_layout import BUNDLE, BUNDLE_WEIGHTS, CHECKPOINTS, HISTORY, METRICS, PRIOR_READING, SOURCE_ONLY
from core.jobspec import CONFIG_DEFAULTED_PARAMS, PRIOR_FROM_START, JobSpec, SceneSpec
from core.raster.domain import Domain
from models.adaptation import METHODS, build_method
from models.adaptation.st_dasegnet import PER_DOMAIN
from models.bundle import load_bundle, save_bundle
from models.class_weights import auto_fields, fill_auto_class_weights
from models.config import resolve_config, train_settings
from models.sampling.photometric import photometric_of
from models.sampling.rescale import rescale_of
from models.sampling.sampler import LabelledWindowSampler, WindowSampler
from models.evaluate import evaluate_domain, segmentor_predict_fn
from models.metrics import format_metrics
from models.normalization import SOURCE, TARGET, Normalization
from models.pretrained import load_pretrained, pretrained_path
from models.training.callbacks import CallbackList, HistoryFile
from models.training.checkpoint import find_resume, rng_kept
from models.training.loop import SamplerBatches, TrainLoop, load_best_weights
from workers.pipelines.job_parts import (finish_job, label_free_record, open_validation, provenance_record,
                                        validation_scorer)
from workers.distributed import Ranks
from workers.pipelines.label_shift import read_label_shift
from workers.pipelines.run_options import RunOptions

#: Params fields that a config's ``train`` block may supply when the job leaves them unset
TRAIN_KEYS = CONFIG_DEFAULTED_PARAMS


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def band_map_of(scene: SceneSpec, count: int) -> list[dict]:
    """Which input band feeds which model channel, as the first source scene defines it."""
    if scene.bands:
        return [{"index": i, "name": Path(p).stem, "file": Path(p).name} for i, p in enumerate(scene.bands)]
    name = Path(scene.image).name if scene.image else "image"
    return [{"index": i, "name": f"{name} band {i + 1}", "file": name, "band": i + 1} for i in range(count)]


def run_training(spec: JobSpec, opts: RunOptions) -> dict:
    """Run a train job, or an adapt job whose method trains through the loop (source-only,
    st-dasegnet); returns a summary (status, paths, metrics). workers.pipelines.dispatch picks it."""
    say = opts.log
    # first: a worker without the devices the job asks for fails it before any work
    ranks = Ranks.for_job(spec, opts.device, rank=opts.rank, init_method=opts.init_method)
    dev = ranks.device
    method_name = spec.training_method
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    out = Path(spec.output)
    out.mkdir(parents=True, exist_ok=True)
    classes = spec.classes
    names = [c.name for c in classes]
    stats_store = out / "stats"

    say("opening the source domain")
    domains: list[Domain] = []
    try:
        source = Domain.open(spec.source, classes, field="source")
        domains.append(source)
        target = None
        needs_target = METHODS[method_name].needs_target
        target_labels = METHODS[method_name].needs_target_labels
        if spec.target is not None and (needs_target or spec.type == "adapt"):
            say("opening the target domain")
            # the target's labels are never read for training (open it unlabelled), but by a method that
            # learns from the labels on part of it (semi)
            target = Domain.open(spec.target, classes, match_grid_of=source, match_gsd=spec.params.match_gsd,
                                 labels=target_labels, field="target")
            domains.append(target)
            if target.band_count != source.band_count:
                raise BandCountMismatchError(
                    f"the target has {target.band_count} bands, the source {source.band_count}", field="target")
        # rank 0 alone validates
        validation = open_validation(spec, classes, source, source.band_count, "the source") if ranks.is_main \
            else None
        if validation is not None:
            domains.append(validation)

        bands = source.band_count
        cfg = resolve_config(spec.model.config, method=method_name, overrides=spec.model.overrides,
                             in_channels=bands, num_classes=len(classes), checkpoint=spec.model.checkpoint,
                             band_roles=spec.model.band_roles)
        if auto_fields(cfg):
            say("counting the source classes for the 'auto' class weights")
            cfg = fill_auto_class_weights(cfg, source.class_counts)
        explicit = {k: getattr(spec.params, k) for k in TRAIN_KEYS if k in spec.params.model_fields_set}
        defaults = {k: getattr(spec.params, k) for k in TRAIN_KEYS}
        run = train_settings(cfg, explicit, defaults)
        seed = spec.params.seed
        share = ranks.share(run["batch_size"])  # this rank's windows of every batch
        rank_seed = ranks.seed(seed)  # the job's seed on rank 0

        say("computing band statistics")
        stats = {"source": source.stats(store=stats_store)}
        if target is not None:
            stats["target"] = target.stats(store=stats_store)
        # which statistics normalise which domain's windows, in training and in the bundle alike
        normalization = Normalization(stats, spec.params.normalization)

        say("indexing training windows")
        # the spec's augmentation (checked by resolve_config): photometric distortion of source crops and
        # target images alike, random resize of source crops only
        photometric = photometric_of(cfg)
        src_sampler = WindowSampler(source, run["crop"], normalization.for_domain(SOURCE), seed=rank_seed,
                                    labelled=True, rare_class_bias=0.5 if spec.params.rare_class_sampling else 0.0,
                                    photometric=photometric, rescale=rescale_of(cfg))
        tgt_sampler = None
        if needs_target:
            if target is None:
                raise SpecError(f"method {method_name} needs target scenes", field="target")
            tgt_sampler = WindowSampler(target, run["crop"], normalization.for_domain(TARGET), seed=rank_seed + 1,
                                        labelled=False, photometric=photometric)
        tl_sampler, adaptation = None, cfg.get("adaptation") or {}
        if target_labels:
            try:
                tl_sampler = LabelledWindowSampler(target, run["crop"], normalization.for_domain(TARGET),
                                                   seed=rank_seed + 2,
                                                   min_labelled=float(adaptation.get("min_labelled", 0.5)),
                                                   photometric=photometric)
            except EmptyRegionError as e:
                # crops over labels smaller than min_labelled allows are drawn anyway (the sampler's rule): here
                # no labelled pixel lies where a crop of the region can be read
                raise EmptyRegionError(f"the target's labels: {e.message}; label windows inside the target's "
                                       "region", field="target") from None
        batches = SamplerBatches(src_sampler, tgt_sampler, share,
                                 flip=bool((cfg.get("augment") or {}).get("flip", False)), seed=rank_seed, device=dev,
                                 target_labelled=tl_sampler, labelled_batch_size=adaptation.get("labelled_batch_size"))

        seed_everything(seed)
        method = build_method(cfg, total_iters=run["iterations"], method=method_name)
        start = pretrained_path(cfg, log=say)
        pretrained = load_pretrained(method, start) if start is not None else None
        if pretrained is not None and not cfg.get("checkpoint"):
            pretrained["weights"] = cfg["pretrained"]  # named weights: record the name, not just a cache path
        method.to(dev)
        if method_name == "st-dasegnet" and adaptation.get("norm_eval") == PER_DOMAIN:
            _estimate_domain_statistics(method, spec, run, source, target, normalization, dev, say)
        prior_reading = None  # (not read by the source-only baseline that shares the job's overrides)
        if method_name == "st-dasegnet" and adaptation.get("pseudo_prior") == PRIOR_FROM_START:
            prior_reading = _read_prior_from_start(method, spec, run, out, source, target, opts,
                                                   should_stop=CallbackList(opts.callbacks).should_stop
                                                   if ranks.is_main else (lambda: False))
            if prior_reading is None:
                return {"status": "stopped", "iteration": 0, "total": run["iterations"], "checkpoint": None}
        if not ranks.is_main:  # the same initial weights as rank 0 (above), then random numbers of its own
            seed_everything(rank_seed)

        validate = validation_scorer(validation, normalization, names)
        say(f"training {method_name} ({cfg['name']}, {run['iterations']} iterations, batch {run['batch_size']}, "
            f"crop {run['crop']}) on {ranks.describe()}")
        with ranks.group(spec, opts.resume, say) as collective:
            loop = TrainLoop(method, batches, total_iters=run["iterations"], workdir=out / CHECKPOINTS,
                             checkpoint_interval=spec.params.checkpoint_interval, validate=validate,
                             val_interval=spec.params.val_interval, collective=collective,
                             callbacks=[HistoryFile(out / HISTORY), *opts.callbacks] if ranks.is_main else [])
            result = loop.run(resume=opts.resume)
        if not ranks.is_main:  # rank 0 reports, writes the bundle and the results
            return {"status": "stopped" if result.stopped else "rank finished", "rank": ranks.rank,
                    "iteration": result.iterations_done}
        if result.stopped:
            return {"status": "stopped", "iteration": result.iterations_done, "total": result.total,
                    "checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None}

        best = load_best_weights(method, out / CHECKPOINTS) if validation is not None else None
        val_metrics = best["metrics"] if best else (result.validations[-1]["metrics"] if result.validations else None)
        provenance = provenance_record(
            spec, method=method_name, config=cfg["name"], seed=seed, run=run, best=best, started=started, t0=t0,
            device=dev, trained_by=result.code, pretrained=pretrained,
            matched_gsd=target.matched_gsd if target is not None else None,
            **({"devices": ranks.world_size} if ranks.world_size else {}),
            # which variant of the method ran (its options and the spec's values alike), beside the weights; source-only
            # has one option (a weight average)
            adaptation=(cfg["adaptation"] if method_name != "source-only" or cfg["adaptation"].get("average_weights")
                        else None))
        metrics = {
            "validation": val_metrics,
            "validation_stats": normalization.for_domain("validation").name if validation is not None else None,
            "best": result.best,
            "training": {"iterations": result.iterations_done, "final_losses": result.final_losses,
                         "late_losses": result.late_losses,
                         "elapsed_s": round(result.elapsed_s, 1), **method.training_record()},
        }
        if prior_reading is not None:
            metrics["training"]["label_shift"]["read_before_training"] = prior_reading
        if target_labels:  # how much of the target the model learnt from
            metrics["target_labelled_pixels"] = int(target.class_counts().sum())
        if spec.type == "adapt" and target is not None:
            say("computing the label-free signals on target and source windows")
            metrics["label_free"] = label_free_record(method, cfg, classes, target, source, normalization)
        cfg["inference"] = method.inference_config()
        seg = method.inference_segmentor().cpu().eval()
        bundle_dir = save_bundle(out / BUNDLE, seg, cfg, classes, stats, provenance,
                                 val_metrics or {}, inference=cfg["inference"], method=method_name,
                                 band_map=band_map_of(spec.source.scenes[0], bands),
                                 default_stats=normalization.default)
        if _wants_baseline(spec, method_name):
            baseline = _source_only_baseline(spec, out, opts)
            if baseline["status"] == "stopped":
                return baseline
            if validation is not None:
                metrics["source_only"] = baseline["metrics"]["validation"]
            if "label_free" in metrics and baseline["metrics"].get("label_free"):
                metrics["label_free"]["source_only"] = baseline["metrics"]["label_free"]
        return finish_job(spec, out, bundle_dir, metrics, provenance, result.iterations_done, opts.callbacks, say,
                          predict_targets=spec.predicts_targets)
    finally:
        for d in domains:
            d.close()


def _estimate_domain_statistics(method, spec: JobSpec, run: dict, source: Domain, target: Domain,
                                normalization: Normalization, dev: torch.device, say: Callable[[str], None]) -> None:
    """``norm_eval: per-domain``: each domain's batch-norm statistics estimated from the start model on
    ``params.batches`` batches of its own crops (models.domain_statistics), on random numbers of their own, so
    training draws what it would draw without them. A resumed job re-estimates, then its checkpoint's replace them."""
    def crops(domain: Domain, name: str, seed: int):
        sampler = WindowSampler(domain, run["crop"], normalization.for_domain(name), seed=seed, labelled=False)
        for _ in range(spec.params.batches):
            yield sampler.sample(run["batch_size"])["img"].to(dev)

    with rng_kept():
        say(f"estimating batch-norm statistics per domain on {spec.params.batches} batches of each")
        method.estimate_domain_statistics(crops(source, SOURCE, spec.params.seed + 3),
                                          crops(target, TARGET, spec.params.seed + 4))


def _read_prior_from_start(method, spec: JobSpec, run: dict, out: Path, source: Domain, target: Domain,
                           opts: RunOptions, *, should_stop) -> dict | None:
    """``adaptation.pseudo_prior: label-shift``: the target's class frequencies read before training from the model
    the job starts from (``model.checkpoint``, a bundle), exactly as a label-shift job on that bundle reads them
    (workers.pipelines.label_shift): the unchanged model in eval mode, each domain normalised as the bundle
    normalises it, at most batches x batch_size evaluation windows of each; calibration on the labelled source, EM
    on the target, and the check that the shift is one of class mix (else NotALabelShiftError, unless
    params.skip_shift_check). The students, whose DDM starts untrained, are not what is read. pi_t is fixed in the
    method as a given mix. A resumed job keeps what it read (the method's state and checkpoints/prior-reading.json).
    Returns the reading's record with the bundle read, or None when asked to stop (nothing written)."""
    path = out / CHECKPOINTS / PRIOR_READING
    if opts.resume and find_resume(out / CHECKPOINTS) is not None and path.exists():
        return json.loads(path.read_text())
    checkpoint = Path(spec.model.checkpoint)
    if checkpoint.name == BUNDLE_WEIGHTS and bundle_dir_of(checkpoint.parent) is not None:
        checkpoint = checkpoint.parent  # a bundle's weights file: the bundle holds the statistics to read with
    # the start model is built and read on random numbers of the reading's own: training then draws the same
    # stream as a job given the same mix (the chain of jobs this option replaces), whatever the reading drew
    with rng_kept():
        return _read_prior(method, spec, run, path, checkpoint, source, target, opts, should_stop=should_stop)


def _read_prior(method, spec: JobSpec, run: dict, path: Path, checkpoint: Path, source: Domain, target: Domain,
                opts: RunOptions, *, should_stop) -> dict | None:
    """The reading itself (see _read_prior_from_start); its record written to ``path``."""
    try:
        start = load_bundle(checkpoint, device=opts.device)
    except BundleError as e:
        raise ConfigError(f"adaptation.pseudo_prior 'label-shift' reads the target's class frequencies from the "
                          f"model bundle the job starts from; model.checkpoint is not one ({e.message})",
                          field="model.checkpoint") from None
    check_same_classes(spec.class_ids, start.class_ids)
    names = [c.name for c in spec.classes]
    opts.log(f"reading the target's class frequencies from the start model {checkpoint}")
    reading = read_label_shift(start.predict_logits, names, source, target,
                               (start.normalization.for_domain(SOURCE), start.normalization.for_domain(TARGET)),
                               limit=spec.params.batches * run["batch_size"], should_stop=should_stop)
    if reading is None:
        return None
    record = reading.record
    if not record["check"]["label_shift_holds"] and not spec.params.skip_shift_check:
        raise NotALabelShiftError(record["check"]["why"], field="target")
    shift = reading.shift
    method.fix_target_prior(shift.target_prior, source_prior=shift.source_prior, temperature=shift.temperature)
    opts.log(f"target class frequencies {record['target_prior']} (source {record['source_prior']}, total variation "
             f"{record['total_variation']})")
    record = {**record, "bundle": str(checkpoint)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    return record


def _wants_baseline(spec: JobSpec, method_name: str) -> bool:
    # with or without validation scenes: without them the label-free signals are the comparison
    return spec.type == "adapt" and method_name != "source-only" and spec.params.compare_source_only


def _source_only_baseline(spec: JobSpec, out: Path, opts: RunOptions) -> dict:
    """The same job as source-only, in ``<output>/source-only`` (its own checkpoints, so it resumes too).

    Same model, data, iterations, seed and normalisation: the scores differ only by the adaptation.
    """
    opts.log("training the source-only baseline to compare against")
    params = spec.params.model_copy(update={"predict_targets": False, "compare_source_only": False})
    # the adapting method's own options (adaptation.*) are not the source-only method's: it would refuse them
    overrides = {k: v for k, v in (spec.model.overrides or {}).items() if k.split(".")[0] != "adaptation"}
    model = spec.model.model_copy(update={"overrides": overrides})
    base = spec.model_copy(update={"method": "source-only", "params": params, "model": model,
                                   "output": out / SOURCE_ONLY})
    return run_training(base, opts)


def evaluate_job(spec: JobSpec, *, log: Callable[[str], None] | None = None) -> dict:
    """Score ``spec.bundle`` on every labelled domain of the job (target, source, validation)."""
    say = log or (lambda msg: None)
    bundle = load_bundle(spec.bundle)
    classes = bundle.classes
    out = Path(spec.output)
    results: dict[str, Any] = {}
    for name in ("target", "validation", "source"):
        dspec = getattr(spec, name)
        if dspec is None:
            continue
        with Domain.open(dspec, classes, field=name) as dom:  # labelled: the spec's rule for evaluate jobs
            if dom.band_count != bundle.band_count:
                raise BandCountMismatchError(
                    f"{name} scenes have {dom.band_count} bands, the model takes {bundle.band_count}", field=name)
            # the job's normalization over the bundle's; scenes without target statistics to use: their own
            normalizer = bundle.normalization.for_domain(name, normalization=spec.params.normalization,
                                                         own=lambda: dom.stats(store=out / "stats"))
            say(f"evaluating on the {name} scenes ({normalizer.name} statistics)")
            m = evaluate_domain(segmentor_predict_fn(bundle.segmentor, normalizer), dom, [c.name for c in classes])
            m["stats"] = normalizer.name
            results[name] = m
            say(f"{name}:\n{format_metrics(m)}")
    metrics_path = write_json(out / METRICS, {"evaluation": results, "bundle": str(bundle.path)})
    return {"status": "finished", "metrics_path": str(metrics_path), "metrics": results}

