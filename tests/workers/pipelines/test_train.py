"""run_job on the real NC scene: train, adapt, stop and resume, evaluate; loss falls with the tiny config."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.data.nc import NC_CLASSES
from core.jobspec import DomainSpec, load_job_spec
from core.raster.domain import Domain
from models.bundle import load_bundle
from models.training.callbacks import History, StopAfter
from workers.pipelines.dispatch import run_job


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spec(d, out, *, type="train", method="source-only", params=None, validation=True, **extra):
    body = {"type": type, "method": method, "classes": NC_CLASSES, "source": d["source"],
            "params": {"iterations": 4, "batch_size": 2, "crop": 32, **(params or {})}, "output": str(out)}
    if type == "adapt":
        body["target"] = d["target"]
    if validation:
        body["validation"] = d["target_test"]
    body.update(extra)
    return load_job_spec(body)


def test_tiny_config_loss_falls_on_real_data(bench_domains, tmp_path):
    hist = History()
    spec = _spec(bench_domains, tmp_path, params={"iterations": 40, "batch_size": 4, "crop": 64, "seed": 1},
                 validation=False)
    res = run_job(spec, [hist])
    losses = hist.losses()
    assert len(losses) == 40
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < first - 0.05, (first, last)
    assert res["status"] == "finished" and res["metrics"]["validation"] is None


def test_adapt_job_writes_bundle_and_metrics(bench_domains, tmp_path, check_label_free):
    spec = _spec(bench_domains, tmp_path, type="adapt", method="st-dasegnet",
                 params={"val_interval": 2, "compare_source_only": True})
    progress = History()
    res = run_job(spec, [progress])
    assert res["status"] == "finished"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    val = metrics["validation"]
    assert val["mean_over"] == "classes present in the ground truth"
    assert set(val["per_class"]) == {c["name"] for c in NC_CLASSES}
    assert metrics["validation_stats"] == "target" and metrics["best"]["iteration"] in (2, 4)
    # the ST-DASegNet run, then the source-only baseline's (each validated twice)
    assert len(progress.validations) == 4 and progress.progress[3].losses["adv_s"] > 0
    # 4 iterations: the late means cover the last one, and carry the adaptation diagnostics
    late = metrics["training"]["late_losses"]
    assert {"pseudo_q", "disc_bce"} <= set(late) and late == pytest.approx(progress.progress[3].losses)
    # the source-only baseline: the same job as source-only, scored on the same scenes
    base = load_bundle(tmp_path / "source-only")
    assert base.method == "source-only" and base.provenance["iterations"] == 4
    # which code trained it and wrote it: this checkout's, one run
    from core.code_version import code_version
    assert base.provenance["code"] == {"written_by": code_version(), "trained_by": [code_version()]}
    assert set(metrics["source_only"]["per_class"]) == set(val["per_class"])
    assert metrics["source_only"] == json.loads((tmp_path / "source-only" / "metrics.json").read_text())["validation"]
    # label-free signals of both models over the target's training region (every valid pixel: it has few windows)
    ids = [c["id"] for c in NC_CLASSES]
    adapted_lf, base_lf = metrics["label_free"], metrics["label_free"].pop("source_only")
    check_label_free(adapted_lf, ids, agreement_of="students")
    check_label_free(base_lf, ids, agreement_of=None)
    assert base_lf == json.loads((tmp_path / "source-only" / "metrics.json").read_text())["label_free"]
    assert base_lf["mean_max_prob"] != adapted_lf["mean_max_prob"]
    with Domain.open(DomainSpec.model_validate(bench_domains["target"]), None, labels=False) as target:
        assert adapted_lf["pixels"]["target"] == sum(int(it.read().valid.sum()) for it in target.items)

    b = load_bundle(tmp_path)  # the job output folder works as well as <output>/bundle
    assert b.method == "st-dasegnet" and b.band_count == 6 and set(b.normalization.stats) == {"source", "target"}
    assert b.normalization.default == "target" and b.band_map[0]["file"].startswith("lsat7_2000_10")
    assert b.provenance["method"] == "st-dasegnet" and b.provenance["iterations"] == 4
    # the variant that ran: the product default, the spec's values (docs/st-dasegnet.md)
    ran = b.provenance["adaptation"]
    assert ran["ema_horizon"] is None and ran["source_warmup"] == 0.0 and ran["pseudo_threshold"] == 0.975
    raw = np.full((6, 48, 48), 80.0, np.float32)
    ids, probs = b.predict(raw)
    assert set(np.unique(ids)) <= {c["id"] for c in NC_CLASSES} and probs.shape == (7, 48, 48)


def test_without_validation_scenes_the_source_only_comparison_is_label_free(bench_domains, tmp_path,
                                                                            check_label_free):
    spec = _spec(bench_domains, tmp_path, type="adapt", method="st-dasegnet", validation=False,
                 params={"iterations": 2, "compare_source_only": True, "predict_targets": False})
    metrics = run_job(spec)["metrics"]
    assert "source_only" not in metrics and metrics["validation"] is None  # no labels to score on
    base = metrics["label_free"]["source_only"]
    check_label_free(base, [c["id"] for c in NC_CLASSES], agreement_of=None)
    assert base == json.loads((tmp_path / "source-only" / "metrics.json").read_text())["label_free"]


def test_stop_then_resume_finishes_the_same_job(bench_domains, tmp_path):
    spec = _spec(bench_domains, tmp_path, validation=False, params={"iterations": 6})
    first = run_job(spec, [StopAfter(3)])
    assert first["status"] == "stopped" and first["iteration"] == 3
    assert not (tmp_path / "bundle").exists()
    hist = History()
    second = run_job(spec, [hist])
    assert second["status"] == "finished" and hist.progress[0].iteration == 4 and second["iterations"] == 6

    straight_dir = tmp_path / "straight"
    straight = run_job(_spec(bench_domains, straight_dir, validation=False, params={"iterations": 6}))
    a = load_bundle(tmp_path).segmentor.state_dict()
    b = load_bundle(straight_dir).segmentor.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight["metrics"]["training"]["final_losses"] == second["metrics"]["training"]["final_losses"]
    assert straight["metrics"]["training"]["late_losses"] == second["metrics"]["training"]["late_losses"]


def test_label_shift_options_record_their_estimate_and_resume_exactly(bench_domains, tmp_path):
    # warm-up 4 iterations (batch norm trains), then frozen; pi_t estimated over iteration 4 and fixed after it
    model = {"config": "segformer-tiny", "overrides": {
        "adaptation.pseudo_prior": "em", "adaptation.norm_eval": True, "adaptation.source_warmup": 0.5}}
    params = {"iterations": 8, "predict_targets": False}
    spec = _spec(bench_domains, tmp_path, type="adapt", method="st-dasegnet", validation=False, params=params,
                 model=model)
    first = run_job(spec, [StopAfter(6)])
    assert first["status"] == "stopped" and first["iteration"] == 6
    second = run_job(spec)
    straight = run_job(_spec(bench_domains, tmp_path / "straight", type="adapt", method="st-dasegnet",
                             validation=False, params=params, model=model))
    shift = straight["metrics"]["training"]["label_shift"]
    assert len(shift["target_prior"]) == len(NC_CLASSES) and sum(shift["target_prior"]) == pytest.approx(1, abs=1e-3)
    assert second["metrics"]["training"]["label_shift"] == shift  # the resumed job kept the estimate and pools
    a = load_bundle(tmp_path).segmentor.state_dict()
    b = load_bundle(tmp_path / "straight").segmentor.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_bundle(tmp_path).provenance["adaptation"]["pseudo_prior"] == "em"


def test_evaluate_job_scores_a_bundle(bench_domains, tmp_path):
    run_job(_spec(bench_domains, tmp_path / "train", validation=False, params={"iterations": 2}))
    spec = load_job_spec({"type": "evaluate", "classes": NC_CLASSES, "bundle": str(tmp_path / "train"),
                          "target": bench_domains["target_test"], "output": str(tmp_path / "eval")})
    res = run_job(spec)
    m = res["metrics"]["target"]
    assert m["stats"] == "own" and 0 <= m["oa"] <= 1 and m["pixels"] > 40000
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["evaluation"]["target"]["miou"] == m["miou"]


def test_per_domain_statistics_are_estimated_before_training_and_resume_exactly(bench_domains, tmp_path):
    # norm_eval 'per-domain': both domains' batch-norm statistics estimated from the start, frozen, kept in checkpoints
    model = {"config": "segformer-tiny", "overrides": {"adaptation.norm_eval": "per-domain"}}
    params = {"iterations": 4, "predict_targets": False, "batches": 2}
    spec = _spec(bench_domains, tmp_path, type="adapt", method="st-dasegnet", validation=False, params=params,
                 model=model)
    first = run_job(spec, [StopAfter(2)])
    assert first["status"] == "stopped"
    second = run_job(spec)
    straight = run_job(_spec(bench_domains, tmp_path / "straight", type="adapt", method="st-dasegnet",
                             validation=False, params=params, model=model))
    a = load_bundle(tmp_path).segmentor.state_dict()
    b = load_bundle(tmp_path / "straight").segmentor.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert second["metrics"]["training"]["final_losses"] == straight["metrics"]["training"]["final_losses"]
    # the delivered model normalises with the target's statistics: not the fresh layers' (0 and 1)
    means = [v for k, v in b.items() if k.endswith("running_mean")]
    assert means and all(v.abs().sum() > 0 for v in means)
    assert load_bundle(tmp_path).provenance["adaptation"]["norm_eval"] == "per-domain"


def test_per_domain_statistics_are_each_estimated_on_their_own_domain_s_crops(bench_domains, tmp_path):
    # what the job hands the estimate: source crops as the source is normalised, target crops as the target is
    from core.jobspec import DomainSpec
    from models.normalization import Normalization
    from models.sampling.sampler import WindowSampler
    from workers.pipelines.train import _estimate_domain_statistics

    spec = _spec(bench_domains, tmp_path, type="adapt", method="st-dasegnet", params={"batches": 2})
    seen = {}

    class Recorder:
        def estimate_domain_statistics(self, source_batches, target_batches):
            seen["source"], seen["target"] = list(source_batches), list(target_batches)

    with Domain.open(DomainSpec.model_validate(bench_domains["source"]), spec.classes) as source, \
            Domain.open(DomainSpec.model_validate(bench_domains["target"]), spec.classes, labels=False) as target:
        normalization = Normalization({"source": source.stats(), "target": target.stats()})
        state = torch.get_rng_state()
        _estimate_domain_statistics(Recorder(), spec, {"crop": 32, "batch_size": 2}, source, target, normalization,
                                    torch.device("cpu"), lambda _: None)
        assert torch.equal(torch.get_rng_state(), state)  # training's random numbers untouched
        for offset, (domain, name) in enumerate(((source, "source"), (target, "target"))):
            expected = WindowSampler(domain, 32, normalization.for_domain(name), seed=spec.params.seed + 3 + offset,
                                     labelled=False)
            assert len(seen[name]) == 2
            for batch in seen[name]:
                assert torch.equal(batch, torch.as_tensor(expected.sample(2)["img"]))


def test_a_weight_averaged_job_stops_resumes_and_records_its_average(bench_domains, tmp_path):
    # the last half of 6 iterations averaged; stopped inside it, the resumed job delivers the uninterrupted one's model
    model = {"config": "segformer-tiny", "overrides": {"adaptation.average_weights": 0.5}}
    spec = _spec(bench_domains, tmp_path, validation=False, params={"iterations": 6}, model=model)
    assert run_job(spec, [StopAfter(4)])["status"] == "stopped"
    second = run_job(spec)
    straight = run_job(_spec(bench_domains, tmp_path / "straight", validation=False, params={"iterations": 6},
                             model=model))
    assert second["metrics"]["training"]["weight_average"] == {"from_iteration": 3, "states": 3}
    assert straight["metrics"]["training"]["weight_average"] == {"from_iteration": 3, "states": 3}
    a = load_bundle(tmp_path).segmentor.state_dict()
    b = load_bundle(tmp_path / "straight").segmentor.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_bundle(tmp_path).provenance["adaptation"]["average_weights"] == 0.5
