"""Label jobs: suggest (windows worth labelling) and consensus (one label map from several annotators).

    suggest   load_bundle(spec.bundle) -> suggest_windows(bundle, the target scene, count, ...)
              <output>/suggestions.gpkg (image CRS), suggestions.geojson (WGS84, for the console's map),
              suggestions.json (ranks, windows, score components)
    consensus run_consensus(spec.consensus.annotations, the target scene, <output>/consensus.tif)
              <output>/consensus.tif, consensus_disagreement.tif, consensus_scores.json
Progress goes through the callbacks' on_stage as the predict pipeline's does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from core.files import write_json
from core.jobspec import JobSpec, SuggestParams
from core.raster.vector_write import write_geojson, write_gpkg
from models.inference.windowed import PredictionCancelled
from workers.pipelines.predict import _should_stop, _stage

SUGGESTIONS_GPKG = "suggestions.gpkg"
SUGGESTIONS_GEOJSON = "suggestions.geojson"
SUGGESTIONS_JSON = "suggestions.json"
CONSENSUS = "consensus.tif"


def run_suggest_job(spec: JobSpec, callbacks: Sequence[Any] | None = None, *,
                    log: Callable[[str], None] | None = None) -> dict:
    from models.bundle import load_bundle
    from models.label_suggestions import suggest_windows

    say = log or (lambda msg: None)
    callbacks = list(callbacks or [])
    opts = spec.suggest or SuggestParams()
    out = Path(spec.output)
    out.mkdir(parents=True, exist_ok=True)
    say(f"loading the model bundle {Path(spec.bundle).name}")
    bundle = load_bundle(spec.bundle)
    _stage(callbacks, "predicting the target scene", 0, None)
    try:
        res = suggest_windows(bundle, spec.target.scenes[0], opts.count, window=opts.window,
                              region=spec.target.region, diversity=opts.diversity, min_valid=opts.min_valid,
                              progress=lambda d, t: _stage(callbacks, "predicting the target scene", d, t),
                              should_stop=lambda: _should_stop(callbacks))
    except PredictionCancelled:
        return {"status": "stopped"}
    write_gpkg(out / SUGGESTIONS_GPKG, res.features(), res.crs, layer="suggestions")
    write_geojson(out / SUGGESTIONS_GEOJSON, res.to_geojson())
    write_json(out / SUGGESTIONS_JSON, res.summary())
    say(f"{len(res)} windows of {res.window} px suggested from {res.candidates} candidates")
    return {"status": "finished", "suggestions": len(res), "window": res.window,
            "files": [SUGGESTIONS_GPKG, SUGGESTIONS_GEOJSON, SUGGESTIONS_JSON], "bundle": str(bundle.path)}


def run_consensus_job(spec: JobSpec, callbacks: Sequence[Any] | None = None, *,
                      log: Callable[[str], None] | None = None) -> dict:
    from models.consensus.consensus import ConsensusOptions
    from models.consensus.run import run_consensus

    say = log or (lambda msg: None)
    callbacks = list(callbacks or [])
    c = spec.consensus
    out = Path(spec.output)
    out.mkdir(parents=True, exist_ok=True)
    steps = ["features", "self-consistency scores", "missing annotations", "image classifier", "graph cuts"]

    def on_step(name: str) -> None:
        say(name)
        _stage(callbacks, f"consensus: {name}", steps.index(name) if name in steps else None, len(steps))

    r = run_consensus(c.annotations, spec.target.scenes[0].paths, out / CONSENSUS, classes=spec.classes,
                      label_property=c.label_property, progress=on_step,
                      options=ConsensusOptions(smoothness=c.smoothness, image_weight=c.image_weight))
    return {"status": "finished", "labels": r.labels.name, "disagreement": r.disagreement.name,
            "scores": r.scores.name, "ranking": r.report["ranking"],
            "annotators": {n: {k: a[k] for k in ("score", "self_consistency", "agreement", "weight")}
                           for n, a in r.report["annotators"].items()}}
