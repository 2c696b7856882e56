"""The job spec: the example from the design loads; every kind of bad input names its field."""
import json

import pytest

from core.errors import SpecError
from core.jobspec import JobSpec, Params, load_job_spec

EXAMPLE = """
type: adapt
method: st-dasegnet
model: segformer-tiny
classes:
  - {id: 1, name: developed, color: "#E31A1C"}
  - {id: 2, name: water, color: "#1f78b4"}
source:
  scenes:
    - image: a/multiband.tif
      labels: a/labels.tif
  region: {columns: [0.0, 0.6]}
target:
  scenes: [{bands: [b/b1.tif, b/b2.tif]}]
validation:
  scenes: [{image: b/scene.tif, labels: b/labels.tif}]
  region: {columns: [0.6, 1.0]}
params: {iterations: 20, batch_size: 2, crop: 64, seed: 3}
output: out/dir
"""

FILES = ["a/multiband.tif", "a/labels.tif", "b/b1.tif", "b/b2.tif", "b/scene.tif", "b/labels.tif"]


@pytest.fixture
def spec_dir(tmp_path):
    for f in FILES:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"")
    (tmp_path / "job.yaml").write_text(EXAMPLE)
    return tmp_path


def _problems(excinfo):
    return {p["field"]: p["message"] for p in excinfo.value.problems}


def test_example_loads_with_paths_resolved_against_the_spec_file(spec_dir):
    spec = load_job_spec(spec_dir / "job.yaml")
    assert spec.type == "adapt" and spec.method == "st-dasegnet"
    assert spec.model.config == "segformer-tiny" and spec.model.overrides == {}
    assert spec.source.scenes[0].image == spec_dir / "a/multiband.tif"
    assert spec.target.scenes[0].paths == [spec_dir / "b/b1.tif", spec_dir / "b/b2.tif"]
    assert spec.classes[0].color == "#e31a1c" and spec.classes[0].rgb == (227, 26, 28)
    assert spec.source.region.columns == (0.0, 0.6)
    assert spec.params.iterations == 20 and spec.params.seed == 3
    assert spec.output == spec_dir / "out/dir"


def test_json_round_trip_is_the_same_spec(spec_dir):
    spec = load_job_spec(spec_dir / "job.yaml")
    again = load_job_spec(spec.to_jsonable(), base_dir=spec_dir)
    assert again == spec
    (spec_dir / "job.json").write_text(json.dumps(spec.to_jsonable()))
    assert load_job_spec(spec_dir / "job.json") == spec


def test_params_a_config_supplies_stay_unset_through_the_stored_spec(spec_dir):
    """What the service stores and its worker loads again: iterations, batch and crop the job left unset stay
    unset, so the model config's train block applies to it as to a spec run from a file."""
    data = EXAMPLE.replace("params: {iterations: 20, batch_size: 2, crop: 64, seed: 3}", "params: {crop: 64, seed: 3}")
    (spec_dir / "job.yaml").write_text(data)
    stored = load_job_spec(spec_dir / "job.yaml").to_jsonable()
    assert set(stored["params"]) >= {"crop", "seed", "normalization"} and "iterations" not in stored["params"]
    again = load_job_spec(stored, base_dir=spec_dir).params
    assert {"iterations", "batch_size"}.isdisjoint(again.model_fields_set) and "crop" in again.model_fields_set
    assert (again.iterations, again.batch_size, again.crop) == (Params().iterations, Params().batch_size, 64)


@pytest.mark.parametrize(
    "edit, field, words",
    [
        (lambda d: d.update(colour="red"), "colour", "unknown key"),
        (lambda d: d["params"].update(iters=5), "params.iters", "unknown key"),
        (lambda d: d["params"].update(iterations=0), "params.iterations", "greater than or equal to 1"),
        (lambda d: d["params"].update(crop="big"), "params.crop", "integer"),
        # strict types: numbers in strings, booleans as numbers and numbers as booleans are refused, not converted
        (lambda d: d["params"].update(iterations="30"), "params.iterations", "valid integer"),
        (lambda d: d["params"].update(iterations=True), "params.iterations", "valid integer"),
        (lambda d: d["params"].update(seed=3.0), "params.seed", "valid integer"),
        (lambda d: d["params"].update(predict_targets="yes"), "params.predict_targets", "valid boolean"),
        (lambda d: d["params"].update(rare_class_sampling=1), "params.rare_class_sampling", "valid boolean"),
        (lambda d: d["params"].update(shards=0), "params.shards", "greater than or equal to 1"),
        (lambda d: d["params"].update(shards=2.5), "params.shards", "valid integer"),
        (lambda d: d["params"].update(shards="4"), "params.shards", "valid integer"),
        (lambda d: d["classes"][0].update(id="1"), "classes.0.id", "valid integer"),
        (lambda d: d["source"].update(region={"columns": ["0", "0.5"]}), "source.region.columns.0", "valid number"),
        (lambda d: d.update(classes=[]), "classes", "at least 1 item"),
        (lambda d: d.update(method="magic"), "method", "st-dasegnet"),
        (lambda d: d.update(type="paint"), "type", "adapt"),
        (lambda d: d["classes"][0].update(color="red"), "classes.0.color", "#rrggbb"),
        (lambda d: d["classes"][1].update(id=1), "classes", "unique"),
        (lambda d: d["source"]["scenes"][0].update(labels="a/missing.tif"), "source.scenes.0.labels", "file not found"),
        (lambda d: d["source"].update(region={"columns": [0.7, 0.2]}), "source.region.columns", "fractions"),
        (lambda d: d["target"]["scenes"][0].update(image="b/scene.tif"), "target.scenes.0", "exactly one of"),
        # the rules of the job's type name the field they are about, not the spec as a whole
        (lambda d: d.pop("target"), "target", "needs 'target'"),
        (lambda d: d.update(method="source-only"), "method", "adaptation method"),
        (lambda d: d["source"]["scenes"][0].pop("labels"), "source.scenes.0.labels", "labels is required"),
    ],
)
def test_bad_input_names_the_field_and_the_problem(spec_dir, edit, field, words):
    import yaml

    data = yaml.safe_load(EXAMPLE)
    edit(data)
    with pytest.raises(SpecError) as excinfo:
        load_job_spec(data, base_dir=spec_dir)
    problems = _problems(excinfo)
    assert field in problems, problems
    assert words in problems[field], problems[field]
    assert field in str(excinfo.value)
    assert f"{field}: {field}:" not in str(excinfo.value)  # the field once, as the CLI prints it


def test_missing_file_can_be_left_unchecked_for_specs_built_elsewhere(spec_dir):
    import yaml

    data = yaml.safe_load(EXAMPLE)
    data["source"]["scenes"][0]["labels"] = "a/not-yet.tif"
    spec = load_job_spec(data, base_dir=spec_dir, check_files=False)
    assert spec.source.scenes[0].labels == spec_dir / "a/not-yet.tif"


def test_path_resolver_sees_every_client_path(spec_dir):
    import yaml

    seen = []

    def resolver(p):
        seen.append(p)
        if "etc" in p.parts:
            raise ValueError("outside the allowed roots")
        return p

    data = yaml.safe_load(EXAMPLE)
    load_job_spec(data, base_dir=spec_dir, path_resolver=resolver)
    assert spec_dir / "out/dir" in seen and spec_dir / "b/b2.tif" in seen
    data["output"] = "/etc"
    with pytest.raises(SpecError) as excinfo:
        load_job_spec(data, base_dir=spec_dir, path_resolver=resolver)
    assert "outside the allowed roots" in _problems(excinfo)["output"]


def test_unreadable_and_non_mapping_files_are_spec_errors(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        load_job_spec(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="mapping"):
        load_job_spec(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("type: [unclosed\n")
    with pytest.raises(SpecError, match="YAML"):
        load_job_spec(tmp_path / "bad.yaml")


def test_model_accepts_a_name_or_a_config_with_overrides(spec_dir):
    import yaml

    data = yaml.safe_load(EXAMPLE)
    data["model"] = {"config": "segformer-mit-b0", "overrides": {"model.decode_head.channels": 128}}
    spec = load_job_spec(data, base_dir=spec_dir)
    assert spec.model.overrides == {"model.decode_head.channels": 128}
    assert JobSpec.model_json_schema()["properties"]["type"]["enum"] == ["adapt", "train", "predict", "evaluate", "suggest",
                                                                     "consensus", "pretrain"]


def _adabn(spec_dir, **edits) -> dict:
    """The example as an adabn job: a bundle and target scenes, no source, no model."""
    import yaml

    (spec_dir / "model").mkdir(exist_ok=True)
    data = yaml.safe_load(EXAMPLE)
    data.update(method="adabn", bundle="model", params={"batches": 5, "batch_size": 2, "crop": 64})
    del data["source"], data["model"]
    data.update(edits)
    return data


def test_adabn_job_needs_a_bundle_and_target_scenes_and_survives_its_json(spec_dir):
    spec = load_job_spec(_adabn(spec_dir), base_dir=spec_dir)
    assert spec.method == "adabn" and spec.bundle == spec_dir / "model" and spec.source is None
    assert spec.params.batches == 5 and Params().batches == 100
    # the worker reads the stored JSON, which names every field (model included)
    assert load_job_spec(spec.to_jsonable(), base_dir=spec_dir) == spec


@pytest.mark.parametrize(
    "edit, field, words",
    [
        (lambda d: d.pop("bundle"), "bundle", "needs 'bundle'"),
        (lambda d: d.pop("target"), "target", "needs 'target'"),
        (lambda d: d.update(source={"scenes": [{"image": "a/multiband.tif", "labels": "a/labels.tif"}]}),
         "source", "takes no 'source'"),
        (lambda d: d.update(model="segformer_mit-b0"), "model", "takes its model from 'bundle'"),
        (lambda d: d["validation"]["scenes"][0].pop("labels"), "validation.scenes.0.labels", "labels is required"),
    ],
)
def test_adabn_job_refuses_what_it_cannot_use(spec_dir, edit, field, words):
    data = _adabn(spec_dir)
    edit(data)
    with pytest.raises(SpecError) as excinfo:
        load_job_spec(data, base_dir=spec_dir)
    assert words in _problems(excinfo)[field]


def test_adabn_batches_are_bounded(spec_dir):
    data = _adabn(spec_dir)
    data["params"]["batches"] = 0
    with pytest.raises(SpecError) as excinfo:
        load_job_spec(data, base_dir=spec_dir)
    assert "greater than or equal to 1" in _problems(excinfo)["params.batches"]


def _label_shift(spec_dir, **edits) -> dict:
    """The example as a label-shift job: a bundle, labelled source scenes, target scenes, no model."""
    import yaml

    (spec_dir / "model").mkdir(exist_ok=True)
    data = yaml.safe_load(EXAMPLE)
    data.update(method="label-shift", bundle="model", params={"batches": 5, "batch_size": 2})
    del data["model"]
    data.update(edits)
    return data


def test_label_shift_job_needs_a_bundle_labelled_source_and_target_and_survives_its_json(spec_dir):
    spec = load_job_spec(_label_shift(spec_dir), base_dir=spec_dir)
    assert spec.method == "label-shift" and spec.training_method == "label-shift"
    assert spec.bundle == spec_dir / "model" and spec.source is not None and spec.target is not None
    assert load_job_spec(spec.to_jsonable(), base_dir=spec_dir) == spec


@pytest.mark.parametrize(
    "edit, field, words",
    [
        (lambda d: d.pop("bundle"), "bundle", "a label-shift job needs 'bundle'"),
        (lambda d: d.pop("source"), "source", "needs 'source' scenes with labels"),
        (lambda d: d["source"]["scenes"][0].pop("labels"), "source.scenes.0.labels", "calibrated on the source labels"),
        (lambda d: d.pop("target"), "target", "needs 'target' scenes"),
        (lambda d: d.update(model="segformer_mit-b0"), "model", "takes its model from 'bundle'"),
        (lambda d: d["params"].update(devices=2), "params.devices", "run in one process"),
    ],
)
def test_label_shift_job_refuses_what_it_cannot_use(spec_dir, edit, field, words):
    data = _label_shift(spec_dir)
    edit(data)
    with pytest.raises(SpecError) as excinfo:
        load_job_spec(data, base_dir=spec_dir)
    assert words in _problems(excinfo)[field]


# ---- the rules of each job type: one place (JobSpec), so the API, the CLI and the worker agree ----------

LABELLED = {"scenes": [{"image": "a/multiband.tif", "labels": "a/labels.tif"}]}
UNLABELLED = {"scenes": [{"image": "b/scene.tif"}]}
CLASSES = [{"id": 1, "name": "developed", "color": "#e31a1c"}]


def _job(spec_dir, type, **fields) -> dict:
    """The least a job of `type` needs (method, scenes, bundle), with `fields` on top."""
    (spec_dir / "model").mkdir(exist_ok=True)
    needs = {
        "train": {"source": LABELLED},
        "adapt": {"method": "st-dasegnet", "source": LABELLED, "target": UNLABELLED},
        "predict": {"bundle": "model", "target": UNLABELLED},
        "evaluate": {"bundle": "model", "target": LABELLED},
    }[type]
    data = {"type": type, "classes": CLASSES, "output": "out", **needs, **fields}
    return {k: v for k, v in data.items() if v is not None}


def _refused(data: dict, spec_dir) -> dict:
    with pytest.raises(SpecError) as excinfo:
        load_job_spec(data, base_dir=spec_dir)
    problems = _problems(excinfo)
    assert len(problems) == 1, problems
    return problems


@pytest.mark.parametrize("method", ["source-only", "st-dasegnet", "feature-regression", "adabn"])
def test_a_train_job_takes_only_source_only(spec_dir, method):
    data = _job(spec_dir, "train", method=method)
    if method == "source-only":
        assert load_job_spec(data, base_dir=spec_dir).training_method == "source-only"
        assert load_job_spec(_job(spec_dir, "train"), base_dir=spec_dir).training_method == "source-only"
        return
    problems = _refused(data, spec_dir)
    assert f"use type 'adapt' for {method}" in problems["method"], problems


@pytest.mark.parametrize("method", ["st-dasegnet", "feature-regression", "adabn", "source-only"])
def test_an_adapt_job_takes_an_adaptation_method(spec_dir, method):
    data = _job(spec_dir, "adapt", method=method)
    if method == "adabn":
        data = _job(spec_dir, "adapt", method=method, source=None, bundle="model")
    if method == "source-only":
        problems = _refused(data, spec_dir)
        assert "st-dasegnet, feature-regression, adabn, label-shift or semi" in problems["method"], problems
        return
    assert load_job_spec(data, base_dir=spec_dir).training_method == method


@pytest.mark.parametrize("type", ["predict", "evaluate"])
@pytest.mark.parametrize("method", ["source-only", "st-dasegnet", "feature-regression", "adabn"])
def test_predict_and_evaluate_jobs_ignore_the_method(spec_dir, type, method):
    spec = load_job_spec(_job(spec_dir, type, method=method), base_dir=spec_dir)
    assert spec.method == method and spec.training_method is None and not spec.predicts_targets


@pytest.mark.parametrize(
    "type, edits, field, words",
    [
        ("train", {"source": None}, "source", "a train job needs 'source' scenes with labels"),
        ("adapt", {"source": None}, "source", "an adapt job needs 'source' scenes"),
        ("train", {"source": UNLABELLED}, "source.scenes.0.labels", "labels is required for a train job"),
        ("adapt", {"target": None}, "target", "an adapt job needs 'target' scenes"),
        ("predict", {"bundle": None}, "bundle", "a predict job needs 'bundle'"),
        ("evaluate", {"bundle": None}, "bundle", "an evaluate job needs 'bundle'"),
        ("predict", {"target": None}, "target", "needs scenes to run on"),
        ("evaluate", {"target": None}, "target", "needs scenes to run on"),
        ("evaluate", {"target": UNLABELLED}, "target.scenes.0.labels", "scores the model against them"),
        ("evaluate", {"target": None, "source": {"scenes": [LABELLED["scenes"][0], UNLABELLED["scenes"][0]]}},
         "source.scenes.1.labels", "labels is required for an evaluate job"),
        ("train", {"validation": UNLABELLED}, "validation.scenes.0.labels", "validation scenes are labelled"),
        ("predict", {"validation": UNLABELLED}, "validation.scenes.0.labels", "validation scenes are labelled"),
    ],
)
def test_each_type_names_the_field_it_is_missing(spec_dir, type, edits, field, words):
    problems = _refused(_job(spec_dir, type, **edits), spec_dir)
    assert words in problems.get(field, ""), problems


def test_what_each_type_needs_and_nothing_more_is_accepted(spec_dir):
    for type in ("train", "adapt", "predict", "evaluate"):
        load_job_spec(_job(spec_dir, type), base_dir=spec_dir)
    # predict jobs run on unlabelled scenes of any domain; a registered dataset may bring its labels
    load_job_spec(_job(spec_dir, "predict", target=None, source=UNLABELLED), base_dir=spec_dir)
    scene = {"scenes": [{"dataset": "ds-1"}]}
    load_job_spec(_job(spec_dir, "train", source=scene, validation=scene), base_dir=spec_dir, check_files=False)


def test_a_broken_rule_is_said_once_with_its_field(spec_dir):
    with pytest.raises(SpecError) as excinfo:
        load_job_spec(_job(spec_dir, "train", method="st-dasegnet"), base_dir=spec_dir)
    assert excinfo.value.field == "method"
    assert str(excinfo.value) == ("method: a train job trains a plain segmentor (source-only); "
                                  "use type 'adapt' for st-dasegnet")


def test_only_adapt_jobs_predict_their_targets_and_only_when_asked(spec_dir):
    adapt = load_job_spec(_job(spec_dir, "adapt"), base_dir=spec_dir)
    assert adapt.predicts_targets
    quiet = load_job_spec(_job(spec_dir, "adapt", params={"predict_targets": False}), base_dir=spec_dir)
    assert not quiet.predicts_targets
    assert not load_job_spec(_job(spec_dir, "train"), base_dir=spec_dir).predicts_targets


# ---- pretrain jobs: imagery only -------------------------------------------------------------------------------

def _pretrain(method="simclr", **fields) -> dict:
    data = {"type": "pretrain", "method": method, "source": LABELLED, "target": UNLABELLED, "output": "out", **fields}
    return {k: v for k, v in data.items() if v is not None}


@pytest.mark.parametrize("method", ["simclr", "siameseim", "croco"])
def test_a_pretrain_job_needs_no_classes_and_drops_labels(spec_dir, method):
    spec = load_job_spec(_pretrain(method), base_dir=spec_dir)
    assert spec.classes is None and spec.class_ids == [] and spec.training_method == method
    assert spec.source.scenes[0].labels is None and spec.source.scenes[0].image == spec_dir / "a/multiband.tif"
    assert not spec.predicts_targets
    # as the worker reads it back from the stored JSON
    again = load_job_spec(spec.to_jsonable(), base_dir=spec_dir)
    assert again.classes is None and again.method == method
    # classes may be given all the same (ignored)
    assert load_job_spec(_pretrain(method, classes=CLASSES), base_dir=spec_dir).class_ids == [1]


def test_simclr_and_siameseim_pretrain_on_either_domain_alone(spec_dir):
    for method in ("simclr", "siameseim"):
        assert load_job_spec(_pretrain(method, source=None), base_dir=spec_dir).source is None
        assert load_job_spec(_pretrain(method, target=None), base_dir=spec_dir).target is None


@pytest.mark.parametrize(
    "data, field, words",
    [
        (_pretrain(source=None, target=None), "source", "a pretrain job needs imagery"),
        (_pretrain("croco", target=None), "target", "croco pretrains on co-registered pairs"),
        (_pretrain("croco", source=None), "source", "needs 'source' and 'target' scenes"),
        (_pretrain(bundle="model"), "bundle", "give model.checkpoint"),
        (_pretrain(validation={"scenes": [{"image": "b/scene.tif", "labels": "b/labels.tif"}]}), "validation",
         "nothing to validate"),
        (_pretrain(method=None), "method", "a pretraining method: simclr, siameseim or croco"),
        (_pretrain("st-dasegnet"), "method", "simclr, siameseim or croco"),
        ({"type": "train", "classes": None, "source": LABELLED, "output": "out"}, "classes",
         "a train job needs 'classes'"),
    ],
)
def test_pretrain_rules_name_their_field(spec_dir, data, field, words):
    (spec_dir / "model").mkdir(exist_ok=True)
    problems = _refused(data, spec_dir)
    assert words in problems.get(field, ""), problems


def test_a_train_job_without_classes_is_refused_as_before(spec_dir):
    with pytest.raises(SpecError) as excinfo:
        load_job_spec({"type": "train", "source": LABELLED, "output": "out"}, base_dir=spec_dir)
    assert _problems(excinfo)["classes"] == "Field required"


def test_model_checkpoint_names_a_file_or_a_folder_that_holds_weights(spec_dir):
    empty = spec_dir / "empty"
    empty.mkdir()
    problems = _refused(_job(spec_dir, "train", model={"config": "segformer-tiny", "checkpoint": "empty"}), spec_dir)
    assert "holds no weights" in problems["model.checkpoint"], problems
    pre = spec_dir / "pre"
    pre.mkdir()
    (pre / "pretrained.pth").write_bytes(b"")
    spec = load_job_spec(_job(spec_dir, "train", model={"config": "segformer-tiny", "checkpoint": "pre"}),
                         base_dir=spec_dir)
    assert spec.model.checkpoint == pre
    (spec_dir / "bundle").mkdir()
    (spec_dir / "bundle" / "weights.pth").write_bytes(b"")
    load_job_spec(_job(spec_dir, "train", model={"config": "segformer-tiny", "checkpoint": "bundle"}), base_dir=spec_dir)


def test_a_class_mix_read_from_the_start_model_needs_a_start_model(spec_dir):
    import yaml

    data = yaml.safe_load(EXAMPLE)
    data["model"] = {"config": "segformer-tiny", "overrides": {"adaptation.pseudo_prior": "label-shift"}}
    problems = _refused(data, spec_dir)
    assert "model.checkpoint" in problems["model.overrides.adaptation.pseudo_prior"], problems
    (spec_dir / "start" / "bundle").mkdir(parents=True)
    (spec_dir / "start" / "bundle" / "weights.pth").write_bytes(b"")
    data["model"]["checkpoint"] = "start"
    assert load_job_spec(data, base_dir=spec_dir).model.overrides["adaptation.pseudo_prior"] == "label-shift"


@pytest.mark.parametrize("prior, words", [([0.5, 0.5, 0.0], "3 class frequencies for 2 classes"),
                                          ([0.5, -0.5], "non-negative numbers"), ([0, 0], "not all 0"),
                                          ([0.5, "x"], "non-negative numbers"), ([0.5, float("inf")], "non-negative")])
def test_a_given_target_class_mix_must_fit_the_classes(spec_dir, prior, words):
    import yaml

    data = yaml.safe_load(EXAMPLE)
    data["model"] = {"config": "segformer-tiny", "overrides": {"adaptation.pseudo_prior": prior}}
    problems = _refused(data, spec_dir)
    assert words in problems["model.overrides.adaptation.pseudo_prior"], problems
    data["model"]["overrides"]["adaptation.pseudo_prior"] = [3, 1]  # one per class: accepted as given
    assert load_job_spec(data, base_dir=spec_dir).model.overrides["adaptation.pseudo_prior"] == [3, 1]
