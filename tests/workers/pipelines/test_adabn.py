"""run_job with method adabn on the real NC data: a source-only bundle's batch-norm statistics re-estimated
on the shifted target, weights kept, the new bundle predicting the target; an adapted model re-estimated through
its target statistics; cancel; a model without BatchNorm refused; the same job through `geoadapt run`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml

from core.data.nc import NC_CLASSES
from core.errors import NoBatchNormError
from core.jobspec import DomainSpec, load_job_spec
from core.raster.domain import Domain
from models.batchnorm_statistics import batchnorm_layers, reestimate_batchnorm
from models.bundle import load_bundle
from models.sampling.sampler import WindowSampler
from models.training.callbacks import History, StopAfter
from workers.pipelines.dispatch import run_job

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: segformer-tiny with a GroupNorm decoder: its MiT backbone has LayerNorms only, so no BatchNorm anywhere
NO_BATCHNORM = {"model.decode_head.norm_cfg": {"type": "GN", "num_groups": 8}}


def _source_only(d, out, overrides=None) -> Path:
    spec = load_job_spec({"type": "train", "classes": NC_CLASSES, "source": d["source"],
                          "model": {"config": "segformer-tiny", "overrides": overrides or {}},
                          "params": {"iterations": 3, "batch_size": 2, "crop": 32}, "output": str(out)})
    assert run_job(spec)["status"] == "finished"
    return out


def _adabn(d, bundle, out, *, params=None, validation=False) -> dict:
    body = {"type": "adapt", "method": "adabn", "classes": NC_CLASSES, "bundle": str(bundle),
            "target": d["target"], "params": {"batches": 4, "batch_size": 2, "crop": 32, "predict_targets": False, **(params or {})},
            "output": str(out)}
    if validation:
        body["validation"] = d["target_test"]
    return body


@pytest.fixture(scope="module")
def source_model(bench_domains, tmp_path_factory):
    return _source_only(bench_domains, tmp_path_factory.mktemp("source-only"))


@pytest.fixture(scope="module")
def adapted(bench_domains, source_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("adabn")
    hist = History()
    body = _adabn(bench_domains, source_model, out, validation=True, params={"predict_targets": True})
    return out, run_job(load_job_spec(body), [hist]), hist


def _batchnorm_inputs_mean(segmentor, domain: Domain, normalizer, crop: int) -> list[torch.Tensor]:
    """Per layer, the channel means of what each BatchNorm layer receives on fresh target windows."""
    seen: dict[int, list[torch.Tensor]] = {}
    layers = batchnorm_layers(segmentor)
    hooks = [m.register_forward_pre_hook(lambda m, a, i=i: seen.setdefault(i, []).append(a[0].mean((0, 2, 3))))
             for i, m in enumerate(layers)]
    sampler = WindowSampler(domain, crop, normalizer, seed=99, labelled=False)
    with torch.no_grad():
        for _ in range(6):
            segmentor.eval()(sampler.sample(4)["img"])
    for h in hooks:
        h.remove()
    return [torch.stack(seen[i]).mean(0) for i in range(len(layers))]


def test_statistics_move_to_the_target_weights_stay_and_the_bundle_predicts(adapted, source_model, bench_domains):
    out, res, hist = adapted
    assert res["status"] == "finished"
    assert [p.iteration for p in hist.progress] == [0, 1, 2, 3, 4] and {p.total for p in hist.progress} == {4}
    assert {p.stage for p in hist.progress} == {"re-estimating batch-norm statistics"}  # no training happens
    before, after = load_bundle(source_model), load_bundle(out)
    assert after.method == "adabn" and after.normalization.default == "target"
    # predicting the target normalises as the re-estimation did: with the source model's statistics
    assert (after.normalization.stats["source"].mean == after.normalization.stats["target"].mean
            == before.normalization.stats["source"].mean)

    old, new = before.segmentor.state_dict(), after.segmentor.state_dict()
    running = [k for k in old if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(running) == 3 * 5  # segformer-tiny's five BatchNorm layers
    assert all(torch.equal(old[k], new[k]) for k in old if k not in running)  # every weight kept
    assert all(not torch.equal(old[k], new[k]) for k in running if k.endswith("running_mean"))

    # each layer's new mean is nearer to what target windows actually give it than the source mean was
    with Domain.open(DomainSpec.model_validate(bench_domains["target"]), before.classes, labels=False) as target:
        observed = _batchnorm_inputs_mean(before.segmentor, target, before.normalization.for_domain("source"), 32)
    for obs, b_layer, a_layer in zip(observed, batchnorm_layers(before.segmentor), batchnorm_layers(after.segmentor)):
        assert (a_layer.running_mean - obs).abs().mean() < (b_layer.running_mean - obs).abs().mean()

    prov = after.provenance
    assert prov["method"] == "adabn" and prov["batches"] == 4 and prov["crop"] == 32 and prov["batch_size"] == 2
    assert prov["source_model"]["bundle"] == str(source_model) and prov["source_model"]["method"] == "source-only"
    assert prov["normalization"] == "source" and prov["batchnorm_layers"] == 5
    assert prov["datasets"]["source"] == before.provenance["datasets"]["source"]
    from core.code_version import code_version
    assert prov["code"] == {"written_by": code_version()}  # no training loop: the code that wrote it

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["adabn"]["batches"] == 4 and metrics["validation_stats"] == "source"
    assert 0 <= metrics["source_only"]["miou"] <= 1 and 0 <= metrics["validation"]["miou"] <= 1
    assert metrics["validation"]["per_class"] != metrics["source_only"]["per_class"]  # another model's answers
    # without labels: the adapted model's signals beside the unchanged model's, on the same target windows
    after, before = metrics["label_free"], metrics["label_free"]["source_only"]
    assert after["pixels"]["target"] == before["pixels"]["target"] > 0
    assert 0 < after["mean_max_prob"] <= 1 and after["mean_max_prob"] != before["mean_max_prob"]

    (pred,) = res["predictions"]
    with rasterio.open(pred["path"]) as ds:
        classes = set(np.unique(ds.read(1))) - {ds.nodata}
        assert classes and classes <= {c["id"] for c in NC_CLASSES}
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert Path(pred["path"]).with_name(Path(pred["path"]).stem + "_probs.tif").exists()
    assert pred["stats"] == "target"


def test_an_adapted_model_is_re_estimated_on_the_target_as_it_predicts_it(bench_domains, tmp_path):
    """A model trained with target statistics (ST-DASegNet's per-domain normalisation) sees the target through
    them: AdaBN re-estimates on windows normalised that way, and its bundle keeps them for predicting."""
    d = bench_domains
    st = load_job_spec({"type": "adapt", "method": "st-dasegnet", "classes": NC_CLASSES, "source": d["source"],
                        "target": d["target"], "params": {"iterations": 2, "batch_size": 2, "crop": 32,
                                                          "predict_targets": False},
                        "output": str(tmp_path / "st")})
    assert run_job(st)["status"] == "finished"
    before = load_bundle(tmp_path / "st")
    target_stats = before.normalization.stats["target"]
    assert before.normalization.default == "target"
    assert not np.allclose(target_stats.mean, before.normalization.stats["source"].mean)  # the shift is there

    body = _adabn(d, tmp_path / "st", tmp_path / "adabn", params={"seed": 3})
    assert run_job(load_job_spec(body))["status"] == "finished"
    after = load_bundle(tmp_path / "adabn")
    assert after.normalization.default == "target"
    assert np.allclose(after.normalization.stats["target"].mean, target_stats.mean)
    assert np.allclose(after.normalization.stats["source"].mean, before.normalization.stats["source"].mean)
    assert after.provenance["normalization"] == "target"

    # the same windows (same seed) through the target statistics give the job's statistics exactly
    with Domain.open(DomainSpec.model_validate(d["target"]), before.classes, labels=False) as target:
        sampler = WindowSampler(target, 32, before.normalization.named("target"), seed=3, labelled=False)
        reestimate_batchnorm(before.segmentor, (sampler.sample(2)["img"] for _ in range(4)))
    pairs = list(zip(batchnorm_layers(before.segmentor), batchnorm_layers(after.segmentor)))
    assert pairs and all(torch.allclose(b.running_mean, a.running_mean, atol=1e-6)
                         and torch.allclose(b.running_var, a.running_var, atol=1e-6) for b, a in pairs)


def test_cancel_writes_nothing(bench_domains, source_model, tmp_path):
    res = run_job(load_job_spec(_adabn(bench_domains, source_model, tmp_path / "job", params={"batches": 50})),
                  [StopAfter(2)])
    assert res["status"] == "stopped" and res["iteration"] == 2 and res["total"] == 50
    assert not (tmp_path / "job" / "bundle").exists() and not (tmp_path / "job" / "metrics.json").exists()


def test_a_model_without_batchnorm_is_refused_with_the_reason(bench_domains, tmp_path):
    no_bn = _source_only(bench_domains, tmp_path / "gn", NO_BATCHNORM)
    with pytest.raises(NoBatchNormError) as excinfo:
        run_job(load_job_spec(_adabn(bench_domains, no_bn, tmp_path / "job")))
    assert excinfo.value.field == "bundle"
    assert "has no batch-norm layers; AdaBN re-estimates batch-norm statistics and would change nothing" \
        in str(excinfo.value)
    assert not (tmp_path / "job").exists()


def test_geoadapt_run_adapts_and_refuses_a_model_without_batchnorm(bench_domains, source_model, tmp_path):
    def run(bundle, name):
        job = tmp_path / f"{name}.yaml"
        job.write_text(yaml.safe_dump(_adabn(bench_domains, bundle, tmp_path / name)))
        return subprocess.run([sys.executable, "-m", "cli", "run", str(job), "--threads", "1"],
                              capture_output=True, text=True, timeout=300)

    ok = run(source_model, "adapted")
    assert ok.returncode == 0, ok.stderr
    assert f"bundle: {tmp_path / 'adapted' / 'bundle'}" in ok.stdout
    assert load_bundle(tmp_path / "adapted").method == "adabn"

    no_bn = _source_only(bench_domains, tmp_path / "gn", NO_BATCHNORM)
    refused = run(no_bn, "refused")
    assert refused.returncode == 2, refused.stderr
    assert "no_batchnorm" in refused.stderr and "has no batch-norm layers" in refused.stderr


def test_ctrl_c_in_geoadapt_run_stops_and_writes_nothing(bench_domains, source_model, tmp_path):
    import signal

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_adabn(bench_domains, source_model, tmp_path / "out", params={"batches": 100_000})))
    p = subprocess.Popen([sys.executable, "-m", "cli", "run", str(job), "--threads", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stderr:  # the pipeline's step messages, then the progress bar
            if "re-estimating" in line:
                break
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 3, out
    assert "nothing written (run the same command again to start over)" in out
    assert not (tmp_path / "out" / "bundle").exists()
