"""Class weights from the training labels ("auto"): the formula on constructed counts, every place a
config keeps weights filled, the checks that refuse bad values, and a job on the real NC scene
writing the numbers it computed into the bundle."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.errors import ConfigError
from core.jobspec import DomainSpec
from core.raster.domain import Domain
from models.adaptation import build_method
from models.class_weights import auto_fields, balanced_class_weights, fill_auto_class_weights
from models.config import resolve_config

WEIGHT_FIELDS = ["model.decode_head.loss_decode.class_weight", "adaptation.target_class_weight",
                 "adaptation.pseudo_class_weight"]


def test_weights_are_the_square_root_of_median_frequency_over_class_frequency():
    counts = [600, 100, 25, 0, 400]  # 1125 px in all; absent class 3
    w = balanced_class_weights(counts)
    f = np.array([600, 100, 25, 400]) / 1125
    med = np.median(f)
    np.testing.assert_allclose([w[0], w[1], w[2], w[4]], np.sqrt(med / f), atol=1e-4)
    assert w[3] == 1.0  # absent from the labels
    assert w[2] > w[1] > w[4] > w[0]  # rarer, heavier
    # a class 16x rarer than another weighs 4x as much
    assert balanced_class_weights([1600, 100])[1] == pytest.approx(4 * balanced_class_weights([1600, 100])[0], rel=1e-3)
    with pytest.raises(ConfigError, match="labelled pixels"):
        balanced_class_weights([0, 0, 0])


def test_auto_fills_every_field_that_asks_and_leaves_the_others():
    overrides = {"model.decode_head.loss_decode.class_weight": "auto", "adaptation.pseudo_class_weight": "auto"}
    cfg = resolve_config("segformer-tiny", method="st-dasegnet", overrides=overrides, in_channels=6, num_classes=3)
    assert auto_fields(cfg) == [WEIGHT_FIELDS[0], WEIGHT_FIELDS[2]]
    calls = []

    def counts():
        calls.append(1)
        return [300, 100, 0]

    filled = fill_auto_class_weights(cfg, counts)
    want = balanced_class_weights([300, 100, 0])
    assert filled["model"]["decode_head"]["loss_decode"]["class_weight"] == want
    assert filled["adaptation"]["pseudo_class_weight"] == want
    assert filled["adaptation"]["target_class_weight"] is None  # not asked: D_T uses the model's
    assert calls == [1] and auto_fields(filled) == []
    assert cfg["adaptation"]["pseudo_class_weight"] == "auto"  # the input is not changed
    assert fill_auto_class_weights(filled, None) is filled  # nothing to fill: no counting, no labels needed
    # with no labels and no weights to inherit, "auto" is an error naming the field
    with pytest.raises(ConfigError, match="needs labelled") as e:
        fill_auto_class_weights(cfg, None)
    assert e.value.field == f"model.overrides.{WEIGHT_FIELDS[0]}"
    inherited = fill_auto_class_weights(cfg, None, weights=[1.0, 2.0, 3.0])
    assert inherited["adaptation"]["pseudo_class_weight"] == [1.0, 2.0, 3.0]


def test_a_model_is_never_built_with_auto_left_in_and_bad_values_are_refused():
    cfg = resolve_config("segformer-tiny", overrides={"model.decode_head.loss_decode.class_weight": "auto"},
                         in_channels=6, num_classes=3)
    with pytest.raises(ConfigError, match="'auto'"):
        build_method(cfg, total_iters=10)
    for bad, match in (("balanced", "'auto' or null"), ([1.0, 2.0], "has 2 weights")):
        with pytest.raises(ConfigError, match=match) as e:
            resolve_config("segformer-tiny", overrides={"adaptation.pseudo_class_weight": bad}, method="st-dasegnet",
                           in_channels=6, num_classes=3)
        assert e.value.field == "model.overrides.adaptation.pseudo_class_weight"


def test_class_counts_of_the_real_nc_region(nc_bands, nc_data, nc_classes):
    spec = DomainSpec.model_validate(
        {"scenes": [{"bands": [str(p) for p in nc_bands], "labels": str(nc_data["strata"])}],
         "region": {"columns": [0.0, 0.6]}})
    with Domain.open(spec, nc_classes) as dom:
        counts = dom.class_counts()
        item = dom.items[0]
        rw = item.read()
        ids = item.read_labels(None, rw.valid)
    want = np.bincount(ids[ids != 255].ravel(), minlength=len(nc_classes))
    np.testing.assert_array_equal(counts, want)


def test_a_training_job_writes_the_weights_it_computed_into_its_bundle(tmp_path, nc_bands, nc_data, nc_classes,
                                                                      one_torch_thread):
    from core.jobspec import load_job_spec
    from workers.pipelines.dispatch import run_job

    source = {"scenes": [{"bands": [str(p) for p in nc_bands], "labels": str(nc_data["strata"])}],
              "region": {"columns": [0.0, 0.6]}}
    spec = load_job_spec({
        "type": "train", "method": "source-only", "classes": [c.model_dump() for c in nc_classes], "source": source,
        "model": {"config": "segformer-tiny", "overrides": {"model.decode_head.loss_decode.class_weight": "auto"}},
        "params": {"iterations": 2, "batch_size": 2, "crop": 32, "seed": 0, "predict_targets": False},
        "output": str(tmp_path / "job")})
    res = run_job(spec)
    cfg = json.loads((tmp_path / "job" / "bundle" / "config.json").read_text())
    with Domain.open(DomainSpec.model_validate(source), nc_classes) as dom:
        want = balanced_class_weights(dom.class_counts())
    assert res["status"] == "finished"
    assert cfg["model"]["decode_head"]["loss_decode"]["class_weight"] == want
