"""run_job with method feature-regression on the real NC data: teacher then student in one job, one
progress run, stop/resume in either phase, a given teacher bundle, a target in another CRS and GSD,
and the clear errors (no shared ground, band counts)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from core.data.nc import NC_CLASSES
from core.errors import BandCountMismatchError, NoOverlapError
from core.jobspec import load_job_spec
from models.bundle import load_bundle
from models.normalization import Normalization
from models.training.callbacks import History, StopAfter
from workers.pipelines.dispatch import run_job

from tests.core.raster.helpers import warp_copy


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spec(d, out, *, params=None, validation=False, target=None, **extra):
    body = {"type": "adapt", "method": "feature-regression", "classes": NC_CLASSES, "source": d["source"],
            "target": target or d["target"],
            "params": {"iterations": 3, "batch_size": 2, "crop": 32, "predict_targets": False, **(params or {})},
            "output": str(out)}
    if validation:
        body["validation"] = d["target_test"]
    body.update(extra)
    return load_job_spec(body)


@pytest.fixture(scope="module")
def finished_job(bench_domains, tmp_path_factory):
    out = tmp_path_factory.mktemp("fr")
    hist = History()
    res = run_job(_spec(bench_domains, out, validation=True, params={"val_interval": 3}), [hist])
    return out, res, hist


def test_job_trains_teacher_then_student_and_bundles_the_student(finished_job, check_label_free):
    out, res, hist = finished_job
    assert res["status"] == "finished"
    # one progress run over both phases: 3 teacher + 3 student iterations
    assert [p.iteration for p in hist.progress] == [1, 2, 3, 4, 5, 6]
    assert {p.total for p in hist.progress} == {6}
    assert "ce_src" in hist.progress[2].losses and "feat_l0" in hist.progress[3].losses
    teacher = load_bundle(out / "teacher")
    student = load_bundle(out)
    assert teacher.method == "source-only" and student.method == "feature-regression"
    assert set(student.normalization.stats) == {"source", "target"} and student.normalization.default == "target"
    assert student.provenance["teacher"]["method"] == "source-only"
    assert student.metadata["metrics"]["miou"] is not None  # validated on the target test region
    # the source-only baseline beside it: the teacher scored on the same validation scenes
    metrics = json.loads((out / "metrics.json").read_text())
    base, adapted = metrics["source_only"], metrics["validation"]
    assert set(base["per_class"]) == set(adapted["per_class"]) and 0 <= base["miou"] <= 1
    assert base["per_class"] != adapted["per_class"]  # another model's answers
    # label-free signals of the student (its agreement is with the teacher) and of the teacher alone
    ids = [c["id"] for c in NC_CLASSES]
    teacher_lf = metrics["label_free"].pop("source_only")
    check_label_free(metrics["label_free"], ids, agreement_of="teacher and student")
    check_label_free(teacher_lf, ids, agreement_of=None)
    assert metrics["label_free"]["agreement"] < 1  # the student's backbone moved
    t, s = teacher.segmentor.state_dict(), student.segmentor.state_dict()
    # the decoder is the teacher's, reused frozen; the backbone moved
    assert all(torch.equal(t[k], s[k]) for k in t if k.startswith("decode_head."))
    assert any(not torch.equal(t[k], s[k]) for k in t if k.startswith("backbone."))
    ids, probs = student.predict(np.full((6, 40, 40), 80.0, np.float32))
    assert probs.shape == (7, 40, 40) and set(np.unique(ids)) <= {c["id"] for c in NC_CLASSES}


def test_stop_in_each_phase_then_resume(bench_domains, tmp_path):
    # adaptation overrides reach the student and are kept away from the source-only teacher
    spec = _spec(bench_domains, tmp_path, model={"config": "segformer-tiny",
                                                 "overrides": {"adaptation.levels": [1, 3]}})
    first = run_job(spec, [StopAfter(2)])
    assert first["status"] == "stopped" and first["phase"] == "teacher" and first["iteration"] == 2
    second = run_job(spec, [StopAfter(4)])
    assert second["status"] == "stopped" and second["phase"] == "student" and second["iteration"] == 4
    hist = History()
    third = run_job(spec, [hist])
    assert third["status"] == "finished" and [p.iteration for p in hist.progress] == [5, 6]
    assert set(hist.progress[-1].losses) == {"loss", "feat_l1", "feat_l3"}
    assert load_bundle(tmp_path).method == "feature-regression"


def test_teacher_from_a_given_bundle_on_a_target_in_another_crs_and_gsd(finished_job, bench_domains, nc_bands,
                                                                        tmp_path):
    out, _, _ = finished_job
    # NC warped to lon/lat at ~36 x 44 m: another CRS, GSD and extent than the 28.5 m UTM source
    warped = warp_copy(nc_bands, tmp_path / "nc_4326.tif", "EPSG:4326", 0.0004)
    hist = History()
    res = run_job(_spec(bench_domains, tmp_path / "job", target={"scenes": [{"image": str(warped)}]},
                        bundle=str(out / "teacher"), params={"iterations": 4, "crop": 48},
                        model={"config": "segformer-tiny",
                               "overrides": {"adaptation.tolerance": {"type": "shift", "radius": 1}}}), [hist])
    assert res["status"] == "finished" and not (tmp_path / "job" / "teacher").exists()
    assert [p.iteration for p in hist.progress] == [1, 2, 3, 4]
    b = load_bundle(tmp_path / "job")
    assert b.provenance["teacher"]["bundle"] == str(out / "teacher")
    assert b.config["adaptation"]["tolerance"] == {"type": "shift", "radius": 1}


def test_pairs_align_across_crs_and_resolution(bench_domains, nc_bands, nc_classes, tmp_path):
    from core.jobspec import DomainSpec
    from core.raster.domain import Domain
    from models.adaptation.feature_regression import PairedBatches
    from models.sampling.sampler import PairedSampler

    warped = warp_copy(nc_bands, tmp_path / "nc_4326.tif", "EPSG:4326", 0.0004)
    s_spec = DomainSpec.model_validate(bench_domains["source"])
    t_spec = DomainSpec.model_validate({"scenes": [{"image": str(warped)}]})
    with Domain.open(s_spec, nc_classes) as src, Domain.open(t_spec, nc_classes) as tgt:
        norm = Normalization({"source": src.stats(), "target": tgt.stats()})
        b = PairedBatches(PairedSampler(src, tgt, 48, norm, seed=4), 6).next(0)
    x, y, v = b["source"]["img"].numpy(), b["target"]["img"].numpy(), b["source"]["valid"].numpy()
    assert v.mean() > 0.5 and np.array_equal(v, b["target"]["valid"].numpy())
    corr = [np.corrcoef(x[k, c][v[k]], y[k, c][v[k]])[0, 1] for k in range(6) for c in range(6)]
    assert np.mean(corr) > 0.85, np.mean(corr)
    # a one-pixel misregistration is already clearly worse: the match above is not a coincidence
    off = [np.corrcoef(x[k, c, :, 1:][v[k, :, 1:]], y[k, c, :, :-1][v[k, :, 1:]])[0, 1]
           for k in range(6) for c in range(6)]
    assert np.mean(off) < np.mean(corr) - 0.05


def test_no_shared_ground_is_a_clear_error(bench_domains, nc_bands, tmp_path):
    far = tmp_path / "far.tif"
    with rasterio.open(nc_bands[0]) as ds:
        prof, t = ds.profile, ds.transform
        data = np.stack([ds.read(1)] * 6)
    prof.update(count=6, transform=Affine(t.a, t.b, t.c + 500_000, t.d, t.e, t.f))  # 500 km east
    with rasterio.open(far, "w", **prof) as ds:
        ds.write(data)
    with pytest.raises(NoOverlapError, match="share no ground"):
        run_job(_spec(bench_domains, tmp_path / "job", target={"scenes": [{"image": str(far)}]}))
    assert not (tmp_path / "job" / "teacher").exists()  # refused before any training


def test_band_counts_that_do_not_match_are_clear_errors(finished_job, bench_domains, nc_bands, tmp_path):
    five = {"scenes": [{"bands": [str(p) for p in nc_bands[:5]]}]}
    with pytest.raises(BandCountMismatchError, match="5 bands"):
        run_job(_spec(bench_domains, tmp_path / "a", target=five))
    # a teacher bundle for 6 bands against 5-band scenes on both sides
    src5 = {"scenes": [{"bands": [str(p) for p in nc_bands[:5]],
                        "labels": bench_domains["source"]["scenes"][0]["labels"]}]}
    out, _, _ = finished_job
    with pytest.raises(BandCountMismatchError, match="teacher model takes 6"):
        run_job(_spec(bench_domains, tmp_path / "b", source=src5, target=five, bundle=str(out / "teacher")))


def test_the_teacher_leaves_to_the_config_what_the_job_leaves_to_it(bench_domains, tmp_path):
    """Phase 1's train job: iterations the adapt job did not set stay unset (its config's train block decides,
    as the job's phase plan assumes); those it set are the teacher's too."""
    from workers.pipelines.feature_regression import teacher_spec

    spec = _spec(bench_domains, tmp_path / "out")
    body = spec.to_jsonable()
    del body["params"]["iterations"]
    left = teacher_spec(load_job_spec(body))
    assert left.type == "train" and "iterations" not in left.params.model_fields_set
    assert {"batch_size", "crop"} <= left.params.model_fields_set
    assert teacher_spec(spec).params.iterations == 3 and "iterations" in teacher_spec(spec).params.model_fields_set
