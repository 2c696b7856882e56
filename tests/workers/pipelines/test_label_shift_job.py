"""run_job with method label-shift on the real NC data, where the shift is known: one scene, one sensor, the
source its training columns and the target its test columns, whose class mix differs (half of the test region
is 'developed', a sixth of the training region). The estimate moves towards the truth; the bundle is the same
model with its classifier's biases moved by log(factor); its mean probability on the target is the estimate;
cancel writes nothing; another class list is refused; the same job through `geoadapt run`."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from core.data.nc import NC_CLASSES
from core.errors import NotALabelShiftError, SpecError
from core.jobspec import DomainSpec, load_job_spec
from core.raster.domain import Domain
from models.bundle import load_bundle
from models.label_free import domain_windows
from models.training.callbacks import History, StopAfter
from workers.pipelines.dispatch import run_job

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tv(a, b) -> float:
    return 0.5 * float(np.abs(np.asarray(a) - np.asarray(b)).sum())


def _test_columns(d: dict) -> dict:
    """The source scene over the test columns: the same sensor and ground type, another class mix."""
    return {**d["source"], "region": d["target_test"]["region"]}


def _label_shift(d, bundle, out, **params) -> dict:
    return {"type": "adapt", "method": "label-shift", "classes": NC_CLASSES, "bundle": str(bundle),
            "source": d["source"], "target": _test_columns(d),
            "params": {"batches": 4, "batch_size": 8, "predict_targets": False, **params}, "output": str(out)}


@pytest.fixture(scope="module")
def source_model(bench_domains, tmp_path_factory):
    """A source-only model good enough to estimate with (300 iterations of 64 px crops: seconds)."""
    out = tmp_path_factory.mktemp("source-only")
    spec = load_job_spec({"type": "train", "classes": NC_CLASSES, "source": bench_domains["source"],
                          "model": {"config": "segformer-tiny"},
                          "params": {"iterations": 300, "batch_size": 4, "crop": 64}, "output": str(out)})
    assert run_job(spec)["status"] == "finished"
    return out


@pytest.fixture(scope="module")
def shifted(bench_domains, source_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("label-shift")
    hist = History()
    return out, run_job(load_job_spec(_label_shift(bench_domains, source_model, out)), [hist]), hist


def _class_mix(spec: dict, classes) -> np.ndarray:
    """The true class frequencies of a labelled domain, by train id."""
    n = len(classes)
    with Domain.open(DomainSpec.model_validate(spec), classes) as dom:
        ids = np.concatenate([item.read_labels(item.region).ravel() for item in dom.items])
    return np.bincount(ids[ids < n], minlength=n) / (ids < n).sum()


def test_the_estimate_moves_towards_the_targets_class_mix(shifted, bench_domains):
    out, res, hist = shifted
    assert res["status"] == "finished"
    record = res["metrics"]["training"]["label_shift"]
    truth = _class_mix(_test_columns(bench_domains), load_bundle(out).classes)
    assert truth[0] > 0.45  # the test columns: half developed
    assert sum(record["source_prior"]) == pytest.approx(1, abs=1e-3)
    assert sum(record["target_prior"]) == pytest.approx(1, abs=1e-3)
    assert record["source_prior"][0] < 0.3  # the model learnt the training columns' mix
    # EM on the unlabelled test columns: more than halfway from the source's mix to the truth
    assert _tv(record["target_prior"], truth) < 0.5 * _tv(record["source_prior"], truth)
    assert record["target_prior"][0] > record["source_prior"][0] + 0.2
    assert record["total_variation"] == pytest.approx(_tv(record["target_prior"], record["source_prior"]), abs=1e-3)
    assert record["pixels"]["source"] > 0 and record["pixels"]["target"] > 0
    # one sensor, one ground type: a shift of class mix alone, which the check lets through
    check = record["check"]
    assert check["label_shift_holds"] and check["outside_simplex"] <= check["tolerance"]
    assert check["em_bbse_tv"] <= check["max_disagreement"]
    assert sum(check["bbse_target_prior"]) == pytest.approx(1, abs=0.01)
    # progress per window, named for what happens (no training)
    assert [p.iteration for p in hist.progress] == list(range(len(hist.progress)))
    assert {p.stage for p in hist.progress} == {"estimating class frequencies"}


def test_the_bundle_is_the_model_with_its_class_biases_moved(shifted, source_model, bench_domains):
    out, res, _ = shifted
    record = res["metrics"]["training"]["label_shift"]
    before, after = load_bundle(source_model), load_bundle(out)
    assert after.method == "label-shift" and after.class_ids == before.class_ids
    assert after.normalization.default == before.normalization.default
    assert after.normalization.stats["source"].mean == before.normalization.stats["source"].mean

    old, new = before.segmentor.state_dict(), after.segmentor.state_dict()
    bias = "decode_head.conv_seg.bias"
    assert all(torch.equal(old[k], new[k]) for k in old if k != bias)  # every other weight and buffer kept
    ratio = torch.tensor(record["prediction_ratio"])
    assert ratio[0] == 1.0
    assert torch.allclose((new[bias] - old[bias]).exp(), ratio, rtol=0.02, atol=1e-4)  # the record is rounded

    # the delivered model predicts the target with the estimated mix: its mean probability there is pi_t
    spec = DomainSpec.model_validate(_test_columns(bench_domains))
    with Domain.open(spec, after.classes, labels=False) as dom:
        total, n = torch.zeros(len(ratio)), 0
        for x, counted in domain_windows(dom, after.normalization.for_domain("target")):
            prob = after.predict_logits(x[None]).softmax(dim=1)[0]
            total += prob[:, counted].sum(dim=1)
            n += int(counted.sum())
    assert np.abs((total / n).numpy() - np.asarray(record["target_prior"])).max() < 0.02

    prov = after.provenance
    assert prov["method"] == "label-shift" and prov["label_shift"] == record
    assert prov["source_model"]["bundle"] == str(source_model) and prov["source_model"]["method"] == "source-only"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["label_shift"] == record
    # without labels: the moved model's signals beside the unchanged model's, on the same target windows
    assert metrics["label_free"]["pixels"]["target"] == metrics["label_free"]["source_only"]["pixels"]["target"]
    assert metrics["label_free"]["class_distribution"]["target"] != \
        metrics["label_free"]["source_only"]["class_distribution"]["target"]


def test_a_target_whose_inputs_changed_is_refused_unless_asked(bench_domains, source_model, tmp_path):
    """Benchmark A's NC target is the same ground through another simulated sensor and atmosphere: its class mix is
    the source's, its inputs are not. EM reads that as a class mix; the check (BBSE) finds no class mix that
    explains it, and the job says so instead of writing a model that would be worse."""
    body = _label_shift(bench_domains, source_model, tmp_path / "job")
    body["target"] = bench_domains["target"]
    with pytest.raises(NotALabelShiftError) as excinfo:
        run_job(load_job_spec(body))
    assert excinfo.value.field == "target" and excinfo.value.code == "not_a_label_shift"
    assert "the target's inputs changed, not only its class mix" in str(excinfo.value)
    assert "skip_shift_check" in str(excinfo.value)
    assert not (tmp_path / "job" / "bundle").exists() and not (tmp_path / "job" / "metrics.json").exists()

    body["params"]["skip_shift_check"] = True
    res = run_job(load_job_spec(body))
    check = res["metrics"]["training"]["label_shift"]["check"]
    assert res["status"] == "finished" and not check["label_shift_holds"]
    assert check["outside_simplex"] > check["tolerance"] or check["em_bbse_tv"] > check["max_disagreement"]


def test_cancel_writes_nothing(bench_domains, source_model, tmp_path):
    res = run_job(load_job_spec(_label_shift(bench_domains, source_model, tmp_path / "job")), [StopAfter(2)])
    assert res["status"] == "stopped" and res["iteration"] == 2 and res["total"] > 2
    assert not (tmp_path / "job" / "bundle").exists() and not (tmp_path / "job" / "metrics.json").exists()


def test_other_classes_than_the_models_are_refused(bench_domains, source_model, tmp_path):
    body = _label_shift(bench_domains, source_model, tmp_path / "job")
    body["classes"] = NC_CLASSES[:-1]
    with pytest.raises(SpecError) as excinfo:
        run_job(load_job_spec(body))
    assert excinfo.value.field == "classes" and "differ from the model's" in str(excinfo.value)
    assert not (tmp_path / "job" / "bundle").exists()


def test_geoadapt_run_moves_the_model(bench_domains, source_model, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_label_shift(bench_domains, source_model, tmp_path / "out", batches=1)))
    ok = subprocess.run([sys.executable, "-m", "cli", "run", str(job), "--threads", "1"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert f"bundle: {tmp_path / 'out' / 'bundle'}" in ok.stdout
    assert load_bundle(tmp_path / "out").method == "label-shift"


def _st_dasegnet_reading(d, bundle, out, target, **params) -> dict:
    """An ST-DASegNet job started from ``bundle`` that reads the target's class mix from it before training."""
    return {"type": "adapt", "method": "st-dasegnet", "classes": NC_CLASSES, "source": d["source"], "target": target,
            "model": {"config": "segformer-tiny", "checkpoint": str(bundle),
                      "overrides": {"adaptation.pseudo_prior": "label-shift", "adaptation.norm_eval": True}},
            "params": {"iterations": 3, "batches": 4, "batch_size": 8, "crop": 64, "predict_targets": False,
                       "compare_source_only": False, **params}, "output": str(out)}


def test_st_dasegnet_reads_the_class_mix_from_its_start_as_a_label_shift_job_does(source_model, bench_domains,
                                                                                 tmp_path):
    """``pseudo_prior: label-shift`` makes the label-shift job and the ST-DASegNet job that used its estimate one job:
    the reading before training is the label-shift job's on the same bundle, to the digit (both on one thread here),
    and self-training matches its pseudo-labels to that pi_t."""
    shift_job = run_job(load_job_spec(_label_shift(bench_domains, source_model, tmp_path / "label-shift")))
    expected = shift_job["metrics"]["training"]["label_shift"]
    out = tmp_path / "st"
    res = run_job(load_job_spec(_st_dasegnet_reading(bench_domains, source_model, out, _test_columns(bench_domains))))
    assert res["status"] == "finished"
    record = res["metrics"]["training"]["label_shift"]
    read = record["read_before_training"]
    assert read["bundle"] == str(source_model)
    for key in ("source_prior", "target_prior", "temperature", "total_variation", "pixels", "check"):
        assert read[key] == expected[key], key
    assert record["target_prior"] == pytest.approx(expected["target_prior"], abs=1e-4)
    assert record["source_prior"] == pytest.approx(expected["source_prior"], abs=1e-4)
    assert record["prediction_ratio"] is not None  # the delivered model predicts with the read mix
    prov = load_bundle(out).provenance
    assert prov["adaptation"]["pseudo_prior"] == "label-shift" and prov["pretrained"]


def test_reading_the_class_mix_leaves_trainings_random_numbers_alone(source_model, bench_domains, tmp_path):
    """Building and reading the start model draws random numbers; training does not see them. Its first source
    losses (before pi_t plays any part) are those of the same job given the mix as a list: the chain of jobs the
    option replaces trains on the same random stream."""
    read, given = History(), History()
    target = _test_columns(bench_domains)
    res = run_job(load_job_spec(_st_dasegnet_reading(bench_domains, source_model, tmp_path / "read", target)), [read])
    prior = res["metrics"]["training"]["label_shift"]["read_before_training"]["target_prior"]
    spec = _st_dasegnet_reading(bench_domains, source_model, tmp_path / "given", target)
    spec["model"]["overrides"]["adaptation.pseudo_prior"] = prior
    assert run_job(load_job_spec(spec), [given])["status"] == "finished"
    for key in ("ce_src_s", "ce_src_t"):
        assert read.losses(key)[0] == given.losses(key)[0], key


def test_st_dasegnet_refuses_to_read_a_class_mix_where_the_inputs_changed(bench_domains, source_model, tmp_path):
    """The simulated-sensor target: the reading's check refuses before any training (nothing written that a
    later run would resume), unless asked to go on."""
    out = tmp_path / "refused"
    with pytest.raises(NotALabelShiftError) as excinfo:
        run_job(load_job_spec(_st_dasegnet_reading(bench_domains, source_model, out, bench_domains["target"])))
    assert excinfo.value.field == "target" and "skip_shift_check" in str(excinfo.value)
    assert not (out / "bundle").exists() and not list(out.rglob("*.pth"))
    # asked to go on; the source-only baseline beside it shares the job's overrides and reads nothing
    res = run_job(load_job_spec(_st_dasegnet_reading(bench_domains, source_model, tmp_path / "asked",
                                                     bench_domains["target"], skip_shift_check=True,
                                                     compare_source_only=True)))
    assert res["status"] == "finished"
    assert not res["metrics"]["training"]["label_shift"]["read_before_training"]["check"]["label_shift_holds"]
    assert res["metrics"]["label_free"]["source_only"]
