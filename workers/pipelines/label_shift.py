"""Label-shift adapt job: a trained model's class frequencies moved onto the target's; no training.

A model trained where trees cover 23 % of the ground predicts trees as if they did everywhere. Where the
target's mix differs (p(y) changes, p(x|y) does not), the correction is a per-class factor on the model's
probabilities (models.label_shift): BCTS calibration on the labelled source, the class frequencies the
calibrated model encodes there (pi_s), EM for the target's (pi_t) on unlabelled target windows, then the
factor that gives the target windows the mean pi_t, added as log to the classifier's biases.

Call flow of ``run_label_shift`` (workers.pipelines.dispatch hands every label-shift job here)::

    load_bundle(spec.bundle): the model, its classes and statistics; classes must be the job's
    open the source scenes (labelled), the target scenes (unlabelled) and the validation scenes
    evaluation windows of each (256 px cores with context, at most batches x batch_size per domain, spread
        evenly), normalised as the bundle normalises that domain; the unchanged model in eval mode
        -> log-probabilities of up to PIXELS_PER_WINDOW evenly spaced pixels of each window (labelled ones on
        the source); progress per window, cancel between windows (a cancelled job writes nothing)
    LabelShiftEstimate.freeze(): T and b (BCTS), pi_s, pi_t (EM); the factor (matching the target pool)
    the check: BBSE on the same pixels must give class frequencies that could be real and agree with EM on
        at least half of the ground, else NotALabelShiftError (the target's inputs changed too; EM would read
        that as a class mix), unless params.skip_shift_check
    <output>/bundle: the same model with log(factor) added to its classifiers' biases (both students' for a
        dual segmentor), the same statistics and default; metrics.json: priors, factor, the model before and
        after on the validation scenes, label-free signals before and after; target predictions
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from core.errors import BandCountMismatchError, NotALabelShiftError, SpecError
from core.bundle_manifest import check_same_classes
from core.job_layout import BUNDLE
from core.jobspec import JobSpec
from core.raster.domain import Domain
from models.bundle import load_bundle, save_bundle
from models.evaluate import spread_context_windows
from models.label_free import domain_windows, label_free_signals
from models.label_shift import (LabelShiftEstimate, add_class_log_ratio, bbse_target_prior, check_class_biases,
                                outside_simplex, pixel_rows)
from models.normalization import SOURCE, TARGET, Normalizer
from models.training.callbacks import CallbackList, LoopResult, Progress
from workers.pipelines.job_parts import finish_job, open_validation, provenance_record, validation_scorer
from workers.pipelines.run_options import RunOptions

METHOD = "label-shift"
STAGE = "estimating class frequencies"
#: pixels of each window that enter the estimate (evenly spaced over its counted pixels)
PIXELS_PER_WINDOW = 4096
#: the check: mass of BBSE's class frequencies below 0 still read as sampling noise, and the most of the ground
#: (total variation) on which EM and BBSE may disagree
SIMPLEX_TOLERANCE, MAX_DISAGREEMENT = 0.05, 0.5
#: evaluation's windows: cores of this size with MARGIN pixels of context
TILE, MARGIN = 256, 32


#: (1, C, h, w) normalised input -> (1, K, h, w) logits of the unchanged model in eval mode
LogitsFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def _window_pixels(logits_of: LogitsFn, num_classes: int, window, normalizer: Normalizer, *, labelled: bool
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, K) log-probabilities of the window's counted pixels (inside its core, valid, and labelled when
    ``labelled``), with their (N,) train ids when ``labelled``; no rows when none counts."""
    item, win, core = window
    rw = item.read(win)
    counted = np.zeros_like(rw.valid)
    counted[core] = rw.valid[core]
    labels = None
    if labelled:
        labels = item.read_labels(win, rw.valid).astype(np.int64)
        counted &= labels < num_classes
    x = torch.from_numpy(normalizer(rw.data, rw.valid))[None]
    log_p = logits_of(x).float().log_softmax(dim=1).cpu()
    mask = torch.from_numpy(counted)
    rows = pixel_rows(log_p, mask[None])
    return rows, (torch.from_numpy(labels)[mask] if labelled else None)


@dataclass
class ShiftReading:
    """The class frequencies read on evaluation windows of both domains: the frozen estimate (pi_s, pi_t, T; its
    pools hold the pixels read), the factor that gives those target pixels the mean pi_t, what a job reports of
    them (priors, the factor, total variation, pixels, the check), and the windows read."""

    shift: LabelShiftEstimate
    ratio: torch.Tensor
    record: dict
    windows: int


def read_label_shift(logits_of: LogitsFn, names: list[str], source: Domain, target: Domain,
                     normalizers: tuple[Normalizer, Normalizer], *, limit: int,
                     should_stop: Callable[[], bool] = lambda: False,
                     on_window: Callable[[int, int], None] = lambda done, total: None) -> ShiftReading | None:
    """Calibration, pi_s and EM's pi_t from the model ``logits_of`` on at most ``limit`` evaluation windows (256 px
    cores with context, spread evenly) of the labelled ``source`` and of the ``target``, each normalised by its
    normaliser; then the check (:func:`_assumption_check`). ``on_window(done, total)`` before the first window and
    after each; None when ``should_stop`` asks between windows. Nothing labelled or valid to read is a SpecError
    naming the side."""
    plans = {"source": spread_context_windows(source, limit, tile=TILE, margin=MARGIN, labelled_only=True),
             "target": spread_context_windows(target, limit, tile=TILE, margin=MARGIN)}
    total = len(plans["source"]) + len(plans["target"])
    shift = LabelShiftEstimate(len(names), pool=max(total, 1) * PIXELS_PER_WINDOW, per_batch=PIXELS_PER_WINDOW)
    done, pixels = 0, {"source": 0, "target": 0}
    on_window(0, total)
    for (name, plan), normalizer in zip(plans.items(), normalizers):
        for window in plan:
            if should_stop():
                return None
            rows, ids = _window_pixels(logits_of, len(names), window, normalizer, labelled=name == "source")
            if name == "source":
                shift.observe_source(rows, ids)
            else:
                shift.observe_target(rows)
            pixels[name] += min(len(rows), PIXELS_PER_WINDOW)
            done += 1
            on_window(done, total)
    if not pixels["source"] or not pixels["target"]:
        missing = "labelled source" if not pixels["source"] else "valid target"
        raise SpecError(f"no {missing} pixels to estimate class frequencies on", field=missing.split()[-1])
    shift.freeze()
    ratio = shift.prediction_ratio()
    record = {**shift.record(ratio), "total_variation": round(float(shift.total_variation()), 4), "pixels": pixels}
    record["check"] = _assumption_check(shift, names)
    return ShiftReading(shift, ratio, record, total)


def _rounded(values) -> list[float]:
    return [round(float(v), 4) for v in values]


def _assumption_check(shift: LabelShiftEstimate, names: list[str]) -> dict:
    """Whether the shift reads as one of class mix alone, from a second estimate on the same pixels: black-box
    shift estimation (BBSE) uses the model's decisions where EM uses its probabilities. Where the target's
    inputs changed too (another sensor, season or atmosphere), the model's decisions can move in ways no class
    mix explains (BBSE leaves the simplex), or EM, trusting probabilities the change has bent, lands on a mix the
    decisions do not support (the two disagree about more than half of the ground). On Benchmark A's NC case EM
    put 99 % of the target in one class, through the source-only models and through the AdaBN ones."""
    source, labels = shift.source.contents()
    target, _ = shift.target.contents()
    bbse = bbse_target_prior(source.exp(), labels, target.exp())
    mass = outside_simplex(bbse)
    disagreement = 0.5 * float((shift.target_prior.cpu() - bbse.clamp(min=0)).abs().sum())
    check = {"bbse_target_prior": _rounded(bbse), "outside_simplex": round(mass, 4),
             "em_bbse_tv": round(disagreement, 4), "tolerance": SIMPLEX_TOLERANCE,
             "max_disagreement": MAX_DISAGREEMENT}
    reasons = []
    if mass > SIMPLEX_TOLERANCE:
        off = ", ".join(f"{n} {float(v):.2f}" for n, v in zip(names, bbse) if v < -0.005 or v > 1.005)
        reasons.append(f"black-box shift estimation puts {off} (class frequencies outside 0..1, {mass:.2f} below "
                       "0 in all): no class mix explains the model's decisions")
    if disagreement > MAX_DISAGREEMENT:
        reasons.append(f"EM and black-box shift estimation disagree about {disagreement:.0%} of the ground (EM: "
                       + ", ".join(f"{n} {float(v):.2f}" for n, v in zip(names, shift.target_prior)) + ")")
    check["label_shift_holds"] = not reasons
    if reasons:
        check["why"] = ("the target's inputs changed, not only its class mix: " + "; ".join(reasons) + ". Moving "
                        "the model's class frequencies would make its maps worse (adabn and st-dasegnet adapt to "
                        "changed inputs; params.skip_shift_check corrects anyway)")
    return check


def run_label_shift(spec: JobSpec, opts: RunOptions) -> dict:
    """Run a label-shift adapt job; returns run_training's summary shape (status, paths, metrics)."""
    say, dev = opts.log, opts.device
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    out = Path(spec.output)
    cbs = CallbackList(opts.callbacks)

    say(f"loading the model bundle {spec.bundle}")
    model = load_bundle(spec.bundle, device=dev)
    check_same_classes(spec.class_ids, model.class_ids)
    heads = check_class_biases(model.segmentor.prediction_heads(), option="a label-shift job")  # before any work
    classes, names = model.classes, [c.name for c in model.classes]
    limit = spec.params.batches * spec.params.batch_size
    run = {"windows_per_domain": limit, "pixels_per_window": PIXELS_PER_WINDOW, "tile": TILE}
    normalization = model.normalization
    source_normalizer, target_normalizer = normalization.for_domain(SOURCE), normalization.for_domain(TARGET)

    domains: list[Domain] = []
    try:
        say("opening the source and target domains")
        source = Domain.open(spec.source, classes, field="source")
        domains.append(source)
        target = Domain.open(spec.target, classes, labels=False, match_grid_of=source,
                             match_gsd=spec.params.match_gsd, field="target")
        domains.append(target)
        for name, dom in (("source", source), ("target", target)):
            if dom.band_count != model.band_count:
                raise BandCountMismatchError(f"the {name} scenes have {dom.band_count} bands, the model takes "
                                             f"{model.band_count}", field=name)
        validation = open_validation(spec, classes, source, model.band_count, "the model takes")
        if validation is not None:
            domains.append(validation)
        out.mkdir(parents=True, exist_ok=True)

        validate = validation_scorer(validation, normalization, names)
        before = validate(model.segmentor) if validate is not None else None
        class_ids = [c.id for c in classes]
        signals_before = label_free_signals(model.segmentor, domain_windows(target, target_normalizer), [],
                                            class_ids=class_ids)

        say(f"estimating class frequencies on evaluation windows of both domains on {dev}")
        t_windows, seen = time.perf_counter(), {"done": 0, "total": 0}

        def on_window(done: int, total: int) -> None:
            seen.update(done=done, total=total)
            if not done:
                cbs.on_start(0, total)
                cbs.on_progress(Progress(iteration=0, total=total, losses={}, lr={}, elapsed_s=0.0, eta_s=None,
                                         stage=STAGE))
                return
            elapsed = time.perf_counter() - t_windows
            cbs.on_progress(Progress(iteration=done, total=total, losses={}, lr={}, elapsed_s=elapsed,
                                     eta_s=elapsed / done * (total - done), sec_per_iter=elapsed / done, stage=STAGE))

        reading = read_label_shift(model.predict_logits, names, source, target,
                                   (source_normalizer, target_normalizer), limit=limit, should_stop=cbs.should_stop,
                                   on_window=on_window)
        if reading is None:  # nothing is written: the job takes seconds to run again
            cbs.on_end(LoopResult(iterations_done=seen["done"], total=seen["total"], stopped=True,
                                  last_checkpoint=None, best=None, elapsed_s=time.perf_counter() - t0))
            return {"status": "stopped", "iteration": seen["done"], "total": seen["total"], "checkpoint": None}
        record, done = reading.record, reading.windows
        if not record["check"]["label_shift_holds"] and not spec.params.skip_shift_check:
            raise NotALabelShiftError(record["check"]["why"], field="target")
        add_class_log_ratio(heads, reading.ratio, option="a label-shift job")
        result = LoopResult(iterations_done=done, total=done, stopped=False, last_checkpoint=None, best=None,
                            elapsed_s=time.perf_counter() - t0)
        cbs.on_end(result)
        say(f"target class frequencies {record['target_prior']} (source {record['source_prior']}, total "
            f"variation {record['total_variation']}); factor {record['prediction_ratio']}")

        after = validate(model.segmentor) if validate is not None else None
        signals = label_free_signals(model.segmentor, domain_windows(target, target_normalizer), [],
                                     class_ids=class_ids)
        provenance = provenance_record(
            spec, method=METHOD, config=model.config.get("name"), seed=spec.params.seed, run=run, best=None,
            started=started, t0=t0, device=dev, label_shift=record,
            source_model={"bundle": str(spec.bundle), "method": model.method,
                          "job_type": model.provenance.get("job_type"),
                          "iterations": model.provenance.get("iterations"),
                          "datasets": model.provenance.get("datasets")})
        provenance.update(normalization=normalization.default,
                          weights="the source model's; log(prediction_ratio) added to the classifiers' biases")
        before_key = "source_only" if model.method == "source-only" else "baseline"
        metrics = {
            "validation": after,
            before_key: before,
            "validation_stats": normalization.for_domain("validation").name if validation is not None else None,
            "best": None,
            "training": {"label_shift": record},
            "label_free": {**signals, before_key: signals_before},
        }
        bundle_dir = save_bundle(out / BUNDLE, model.segmentor.cpu().eval(), model.config, classes,
                                 normalization.stats, provenance, after or {}, inference=model.metadata["inference"],
                                 method=METHOD, band_map=model.band_map, default_stats=normalization.default)
        return finish_job(spec, out, bundle_dir, metrics, provenance, done, opts.callbacks, say,
                          predict_targets=spec.params.predict_targets)
    finally:
        for d in domains:
            d.close()
