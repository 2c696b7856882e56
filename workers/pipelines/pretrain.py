"""Pretrain job: a backbone learned without labels from the imagery of the source and/or target domain.

Call flow of ``run_pretrain`` (workers.pipelines.dispatch hands every pretrain job here)::

    open source and/or target unlabelled (the spec dropped any labels); band counts agree;
        paired methods (croco): the two share ground
    statistics per domain -> each domain's windows normalised with its own (as an adapted model's are)
    resolve config: the model config + the method's pretraining block, fitted to the bands
    croco: PairedSampler(source, target) -> PairedBatches (the target read onto each source window's grid)
    else:  a WindowSampler per domain -> ImageryBatches (each batch split between the domains)
    seed -> build the method (+ model.checkpoint, or the config's named weights) -> TrainLoop(<output>/checkpoints)
        -> progress / cooperative stop through the callbacks; resumes from last.pth
    stopped? -> return (a later run with the same output resumes)
    <output>/pretrained.pth (backbone.* [+ decode_head.*] weights), pretrained.json (what made them),
        metrics.json (how training went)

A later train or adapt job starts from it with ``model: {config: <same config>, checkpoint: <output folder>}``.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from core.errors import BandCountMismatchError
from core.files import atomic_writer, write_json
from core.job_layout import CHECKPOINTS, HISTORY, METRICS, PRETRAINED, PRETRAINED_RECORD
from core.jobspec import JobSpec
from core.raster.domain import Domain
from models.adaptation.feature_regression import PairedBatches
from models.config import resolve_config, train_settings
from models.normalization import SOURCE, TARGET, Normalization, Normalizer
from models.pretrained import load_pretrained, pretrained_path
from models.pretraining import PRETRAINING, build_pretraining
from models.pretraining.batches import ImageryBatches
from models.sampling.sampler import PairedSampler, WindowSampler
from models.training.callbacks import HistoryFile
from models.training.loop import TrainLoop
from workers.pipelines.feature_regression import check_overlap
from workers.pipelines.job_parts import provenance_record
from workers.pipelines.run_options import RunOptions
from workers.pipelines.train import TRAIN_KEYS, band_map_of, seed_everything

#: version of pretrained.json
RECORD_FORMAT = 1


def run_pretrain(spec: JobSpec, opts: RunOptions) -> dict:
    """Run a pretrain job; returns a summary (status, the weights' path, metrics, provenance)."""
    say, dev = opts.log, opts.device
    method_name = spec.method
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    out = Path(spec.output)
    out.mkdir(parents=True, exist_ok=True)
    paired = PRETRAINING[method_name].paired

    domains: dict[str, Domain] = {}
    try:
        say("opening the imagery (unlabelled)")
        if spec.source is not None:
            domains[SOURCE] = Domain.open(spec.source, None, labels=False, field="source")
        if spec.target is not None:
            # on the source's grid when the GSDs differ, as an adapt job opens it
            domains[TARGET] = Domain.open(spec.target, None, match_grid_of=domains.get(SOURCE),
                                          match_gsd=spec.params.match_gsd, labels=False, field="target")
        first = next(iter(domains.values()))
        for name, dom in domains.items():
            if dom.band_count != first.band_count:
                raise BandCountMismatchError(f"the target has {dom.band_count} bands, the source "
                                             f"{first.band_count}", field=name)
        if paired:
            check_overlap(domains[SOURCE], domains[TARGET])
        bands = first.band_count

        cfg = resolve_config(spec.model.config, pretraining=method_name, overrides=spec.model.overrides,
                             in_channels=bands, checkpoint=spec.model.checkpoint, band_roles=spec.model.band_roles)
        explicit = {k: getattr(spec.params, k) for k in TRAIN_KEYS if k in spec.params.model_fields_set}
        defaults = {k: getattr(spec.params, k) for k in TRAIN_KEYS}
        run = train_settings(cfg, explicit, defaults)
        seed = spec.params.seed

        say("computing band statistics")
        stats = {name: dom.stats(store=out / "stats") for name, dom in domains.items()}
        # each domain's windows normalised with its own statistics (or, normalization: source, the source's)
        normalization = Normalization(stats, spec.params.normalization) if SOURCE in stats else None
        normalizers = {name: normalization.for_domain(name) if normalization else Normalizer(stats[name], name)
                       for name in domains}

        say("indexing windows")
        if paired:
            sampler = PairedSampler(domains[SOURCE], domains[TARGET], run["crop"], normalization, seed=seed)
            batches = PairedBatches(sampler, run["batch_size"], device=dev)
        else:
            samplers = [WindowSampler(dom, run["crop"], normalizers[name], seed=seed + i, labelled=False)
                        for i, (name, dom) in enumerate(domains.items())]
            batches = ImageryBatches(samplers, run["batch_size"], device=dev)

        seed_everything(seed)
        method = build_pretraining(cfg, total_iters=run["iterations"])
        start = pretrained_path(cfg, log=say)
        started_from = load_pretrained(method, start) if start is not None else None
        if started_from is not None and not cfg.get("checkpoint"):
            started_from["weights"] = cfg["pretrained"]
        method.to(dev)

        loop = TrainLoop(method, batches, total_iters=run["iterations"], workdir=out / CHECKPOINTS,
                         checkpoint_interval=spec.params.checkpoint_interval,
                         callbacks=[HistoryFile(out / HISTORY), *opts.callbacks])
        say(f"pretraining {method_name} ({cfg['name']}, {run['iterations']} iterations, batch {run['batch_size']}, "
            f"crop {run['crop']}, {' + '.join(domains)} imagery) on {dev}")
        result = loop.run(resume=opts.resume)
        if result.stopped:
            return {"status": "stopped", "iteration": result.iterations_done, "total": result.total,
                    "checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None}

        training = {"iterations": result.iterations_done, "final_losses": result.final_losses,
                    "late_losses": result.late_losses, "elapsed_s": round(result.elapsed_s, 1)}
        provenance = provenance_record(
            spec, method=method_name, config=cfg["name"], seed=seed, run=run, best=None, started=started, t0=t0,
            device=dev, trained_by=result.code, pretrained=started_from, pretraining=cfg["pretraining"])
        record = {
            "format": RECORD_FORMAT,
            **provenance,
            "trained": method.trained_parts(),
            "band_count": bands,
            "band_map": band_map_of((spec.source or spec.target).scenes[0], bands),
            "band_roles": cfg.get("band_roles"),
            "stats": {name: s.to_dict() for name, s in stats.items()},
            "training": training,
        }
        weights = out / PRETRAINED
        with atomic_writer(weights) as fh:  # written whole or not at all
            torch.save({"state_dict": method.pretrained_state(), "meta": {"method": method_name,
                                                                          "config": cfg["name"]}}, fh)
        write_json(out / PRETRAINED_RECORD, record)
        metrics = {"training": training}
        metrics_path = write_json(out / METRICS, metrics)
        say(f"pretrained weights written to {weights}")
        return {"status": "finished", "pretrained": str(weights), "metrics_path": str(metrics_path),
                "metrics": metrics, "iterations": result.iterations_done, "provenance": record}
    finally:
        for d in domains.values():
            d.close()
