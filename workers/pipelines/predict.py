"""Predict pipeline: a bundle and scenes in, one class COG per scene out (predict jobs, and the
target scenes at the end of an adapt job).

Call flow of ``run_job`` (predict jobs)::

    load_bundle(spec.bundle)
    scenes: spec.target (target statistics) and/or spec.source (source statistics), each domain's region
    for each scene: predict_raster(bundle, scene, <output>/predictions/<role>-<i>-<name>.tif)
        -> progress through callbacks' on_stage("predicting <role> <i>", windows done, total)
        -> should_stop() between windows: PredictionCancelled leaves nothing half-written
      or, in a worker (a ShardPool among the callbacks) when params.shards > 1 or the scene is larger than
      GEOADAPT_SHARD_PIXELS: workers.pipelines.shards.predict_sharded (progress counts shards)
    <output>/predictions.json: what was written, with each run's figures
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from core.jobspec import DomainSpec, JobSpec, SceneSpec
from core.job_layout import PREDICTIONS, PREDICTIONS_INDEX
from models.bundle import load_bundle
from models.inference.windowed import PredictionCancelled, predict_raster
from models.normalization import prediction_choice
from core.files import write_json
from core.raster.cog import remove_stale_temporaries
from core.raster.prediction_shards import shard_count
from models.inference.shards import prediction_pixels
from workers.pipelines.shards import predict_sharded, shard_pool_of


def scene_output_name(role: str, index: int, scene: SceneSpec) -> str:
    """A stable, URL-safe file name for a scene's prediction: role, index and the image's name."""
    stem = Path(scene.image).stem if scene.image is not None else Path(scene.bands[0]).stem
    return f"{role}-{index}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', stem)}.tif"


def _stage(callbacks: Sequence[Any], stage: str, done: int | None = None, total: int | None = None) -> None:
    for c in callbacks:
        hook = getattr(c, "on_stage", None)
        if hook is not None:
            hook(stage, done, total)


def _should_stop(callbacks: Sequence[Any]) -> bool:
    return any(c.should_stop() for c in callbacks if hasattr(c, "should_stop"))


def predict_domains(
    bundle: Any,
    domains: Sequence[tuple[str, DomainSpec]],
    out_dir: Path,
    callbacks: Sequence[Any] | None = None,
    *,
    log: Callable[[str], None] | None = None,
    options: dict | None = None,
    shards: int | None = None,
    bundle_path: str | Path | None = None,
) -> dict:
    """Predict every scene of the given (role, domain) pairs into ``out_dir``/predictions.

    Target scenes are normalised with the bundle's target statistics when it has them (its
    default), source scenes with its source statistics. Returns {"status", "predictions": [...]}.
    ``shards``: the job's ``params.shards``; with a ShardPool among the callbacks (a worker's), a scene
    goes in shards across the workers when it asks for more than one, or is larger than the pool's
    ``shard_pixels``. ``bundle_path``: where other workers load the bundle from (default: ``bundle`` when
    it is a path, else its folder).
    """
    say = log or (lambda msg: None)
    callbacks = list(callbacks or [])
    pool = shard_pool_of(callbacks)
    if pool is not None:
        if isinstance(bundle, (str, os.PathLike)):
            bundle_path = bundle_path or bundle
            bundle = load_bundle(bundle)  # once for every scene (the shards' plans need it loaded)
        bundle_path = bundle_path or bundle.path
        options = {**pool.run_options(), **(options or {})}  # this worker's share of the cores
    pred_dir = Path(out_dir) / PREDICTIONS
    pred_dir.mkdir(parents=True, exist_ok=True)
    for p in remove_stale_temporaries(pred_dir):  # an earlier attempt of this job was killed mid-write
        say(f"removed {p.name}, left by an interrupted attempt")
    todo = [(role, i, scene, dom.region) for role, dom in domains for i, scene in enumerate(dom.scenes)]
    written = []
    for n, (role, i, scene, region) in enumerate(todo):
        output = pred_dir / scene_output_name(role, i, scene)
        stage = f"predicting {role} scene {i + 1}/{sum(1 for t in todo if t[0] == role)}"
        say(f"{stage} -> {output.name}")
        _stage(callbacks, stage, 0, None)
        n = 1 if pool is None else shard_count(shards, prediction_pixels(scene, region), pool.shard_pixels)
        try:
            if n > 1:
                say(f"{stage}: {n} shards, run by every free worker")
                figures = predict_sharded(
                    pool, bundle, bundle_path, scene, output, n,
                    options={"stats": prediction_choice(role), "region": region, **(options or {})},
                    progress=lambda done, total, s=f"{stage} (shards)": _stage(callbacks, s, done, total),
                    should_stop=lambda: _should_stop(callbacks), say=say,
                )
                written.append({"role": role, "scene": i, "path": str(output), **_figures(figures),
                                "shards": figures["shards"]})
                continue
            result = predict_raster(
                bundle, scene, output, stats=prediction_choice(role), region=region, **(options or {}),
                progress=lambda done, total, s=stage: _stage(callbacks, s, done, total),
                should_stop=lambda: _should_stop(callbacks),
            )
        except PredictionCancelled:
            return {"status": "stopped", "predictions": written}
        written.append({"role": role, "scene": i, "path": str(output), **_figures(result)})
    write_json(Path(out_dir) / PREDICTIONS_INDEX, {"predictions": written})
    return {"status": "finished", "predictions": written}


def _figures(result) -> dict:
    d = result if isinstance(result, dict) else result.to_dict()
    return {k: d[k] for k in ("windows", "predicted", "skipped", "pixels", "valid_pixels", "stats", "seconds")}


def run_job(
    spec: JobSpec,
    callbacks: Sequence[Any] | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run a predict job: ``spec.bundle`` over the job's target scenes (and source scenes, if given)."""
    say = log or (lambda msg: None)
    say(f"loading the model bundle {Path(spec.bundle).name}")
    bundle = load_bundle(spec.bundle)
    domains = [(role, d) for role, d in (("target", spec.target), ("source", spec.source)) if d is not None]
    result = predict_domains(bundle, domains, Path(spec.output), callbacks, log=say,
                             options={"probabilities": spec.params.predict_probabilities},
                             shards=spec.params.shards, bundle_path=spec.bundle)
    result["bundle"] = str(bundle.path)
    return result
