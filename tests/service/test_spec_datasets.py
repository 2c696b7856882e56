"""`dataset: ID` in a job spec: a registered dataset named as a scene, resolved into its files for the
submitting token; an unknown id or another token's is a 422 naming the field, and nothing is stored."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from core.errors import SpecError
from core.jobspec import load_job_spec
from service.app import create_app
from service.store import tokens
from service.store.db import session_scope
from service.store.tables import Job

from tests.helpers import train_spec


@pytest.fixture
def api(settings, tiny_scene):
    app = create_app(settings)
    with TestClient(app) as c, session_scope(app.state.sessions) as s:
        a = {"Authorization": f"Bearer {tokens.create_token(s, name='a')[1]}"}
        b = {"Authorization": f"Bearer {tokens.create_token(s, name='b')[1]}"}
        s.commit()
        img, lab = tiny_scene
        r = c.post("/v1/datasets", headers=a, json={"name": "tiny", "image": str(img), "labels": str(lab)})
        assert r.status_code == 201, r.text
        theirs = c.post("/v1/datasets", headers=b, json={"name": "theirs", "image": str(img)}).json()["id"]
        yield {"client": c, "app": app, "a": a, "b": b, "ds": r.json()["id"], "theirs": theirs, "img": img, "lab": lab}


def _jobs(app) -> int:
    with app.state.sessions() as s:
        return s.scalar(select(func.count()).select_from(Job))


def _adapt(source: dict, target: dict) -> dict:
    spec = train_spec("x", "y", type="adapt", method="st-dasegnet")
    spec["source"] = {"scenes": [source]}
    spec["target"] = {"scenes": [target]}
    return spec


def test_a_spec_names_a_registered_dataset_wherever_it_takes_an_image(api):
    c, img, lab = api["client"], str(api["img"]), str(api["lab"])
    r = c.post("/v1/jobs", headers=api["a"], json=_adapt({"dataset": api["ds"]}, {"dataset": api["ds"]}))
    assert r.status_code == 201, r.text
    spec = r.json()["spec"]
    # source: the dataset's image and its labels; target: its image only (target scenes are unlabelled)
    assert spec["source"]["scenes"][0]["image"] == img and spec["source"]["scenes"][0]["labels"] == lab
    assert spec["target"]["scenes"][0]["image"] == img and spec["target"]["scenes"][0]["labels"] is None
    # labels the scene names win over the dataset's; validation scenes take the dataset's
    body = _adapt({"dataset": api["ds"], "labels": lab}, {"image": img})
    body["validation"] = {"scenes": [{"dataset": api["ds"]}]}
    r = c.post("/v1/jobs", headers=api["a"], json=body)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["validation"]["scenes"][0] == {**r.json()["spec"]["validation"]["scenes"][0],
                                                           "image": img, "labels": lab}


def test_geoadapt_submit_sends_the_dataset_through(api, tmp_path):
    """`geoadapt submit` loads the spec here without files (check_files=False) and sends its JSON form."""
    f = tmp_path / "job.yaml"
    f.write_text(f"type: train\nclasses: [{{id: 1, name: a, color: '#ff0000'}}, {{id: 2, name: b, color: '#00ff00'}}]\n"
                 f"source: {{scenes: [{{dataset: {api['ds']}}}]}}\nparams: {{iterations: 2, crop: 16}}\noutput: .\n")
    body = load_job_spec(f, check_files=False).to_jsonable()
    body.pop("output")
    r = api["client"].post("/v1/jobs", headers=api["a"], json=body)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["source"]["scenes"][0]["image"] == str(api["img"])


@pytest.mark.parametrize("scene, message", [
    ({"dataset": "00000000-0000-0000-0000-000000000000"}, "no registered dataset"),
    ({"dataset": "not-an-id"}, "no registered dataset"),
    ({"dataset": "THEIRS"}, "no registered dataset"),  # another token's: the same answer as nobody's
    ({"dataset": "OURS", "image": "IMG"}, "not both"),
    ({"dataset": 12}, "a string"),
])
def test_unknown_or_foreign_datasets_are_422_naming_the_field_and_store_nothing(api, scene, message):
    c = api["client"]
    scene = {k: {"THEIRS": api["theirs"], "OURS": api["ds"], "IMG": str(api["img"])}.get(v, v)
             for k, v in scene.items()}
    before = _jobs(api["app"])
    r = c.post("/v1/jobs", headers=api["a"], json=_adapt({"image": str(api["img"]), "labels": str(api["lab"])}, scene))
    assert r.status_code == 422, r.text
    problem = r.json()["detail"][0]
    assert problem["field"] == "target.scenes.0.dataset" and message in problem["message"]
    assert _jobs(api["app"]) == before


def test_a_local_run_refuses_a_dataset_it_cannot_resolve(tmp_path):
    spec = train_spec("x", "y", output=str(tmp_path / "out"))
    spec["source"] = {"scenes": [{"dataset": "3f1c", "labels": str(tmp_path)}]}
    with pytest.raises(SpecError) as e:
        load_job_spec(spec)
    assert e.value.field == "source.scenes.0" and "only the service resolves" in str(e.value)
