"""STAC Items in: a job scene or a dataset registration names a local STAC Item and band common names; the API
resolves them to the item's files under the allowed roots, or answers 422 naming the field (a missing common name
with the names the item has, a non-local href, a file outside the roots)."""
from __future__ import annotations

import json

import pytest

from service.store import tokens
from service.store.db import session_scope

from tests.helpers import train_spec, write_stac_scene


@pytest.fixture
def auth(app):
    with session_scope(app.state.sessions) as s:
        _, plain = tokens.create_token(s)
    return {"Authorization": f"Bearer {plain}"}


@pytest.fixture
def stac_scene(roots):
    return write_stac_scene(roots[0] / "landsat", ("blue", "green", "red", "nir"))


def _stac_train(item, lab, names) -> dict:
    spec = train_spec("unused", lab)
    spec["source"]["scenes"] = [{"stac": str(item), "bands": names, "labels": str(lab)}]
    return spec


def _set_href(item, key: str, href: str) -> None:
    doc = json.loads(item.read_text())
    doc["assets"][key]["href"] = href
    item.write_text(json.dumps(doc))


def test_a_job_scene_named_by_a_stac_item_runs_on_its_files(client, auth, settings, stac_scene):
    item, lab = stac_scene
    r = client.post("/v1/jobs", json=_stac_train(item, lab, ["red", "green", "nir"]), headers=auth)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    stored = json.loads((settings.job_dir(job_id) / "spec.json").read_text())["source"]["scenes"][0]
    folder = item.parent.resolve()
    assert stored["bands"] == [str(folder / n) for n in ("B3.tif", "B2.tif", "B4.tif")]
    assert stored["stac"] == {"item": str(item.resolve()), "bands": ["red", "green", "nir"]}
    report = json.loads((settings.job_dir(job_id) / "inputs-report.json").read_text())
    assert report["domains"]["source"]["band_count"] == 3, report  # validated like any band stack


@pytest.mark.parametrize("case, field, words", [
    ("missing name", "source.scenes.0.bands.1", "no asset with common name 'swir16'; its common names: blue, green, "
                                                "nir, red"),
    ("remote href", "source.scenes.0.bands.0", "'B3' is not a local file (https://example.com/B3.tif)"),
    ("asset outside roots", "source.scenes.0.bands.0", "asset 'B3' (B3.tif): path is outside the allowed roots"),
    ("item outside roots", "source.scenes.0.stac", "path is outside the allowed roots"),
])
def test_stac_scene_problems_are_422_naming_the_field(client, auth, roots, stac_scene, case, field, words):
    item, lab = stac_scene
    names = ["red", "swir16"] if case == "missing name" else ["red"]
    if case == "remote href":
        _set_href(item, "B3", "https://example.com/B3.tif")
    if case == "asset outside roots":
        (roots[1] / "B3.tif").write_bytes((item.parent / "B3.tif").read_bytes())
        _set_href(item, "B3", str(roots[1] / "B3.tif"))
    if case == "item outside roots":
        outside = roots[1] / "item.json"
        outside.write_text(item.read_text().replace("./B", f"{item.parent}/B"))
        item = outside
    r = client.post("/v1/jobs", json=_stac_train(item, lab, names), headers=auth)
    assert r.status_code == 422, r.text
    problem = r.json()["detail"][0]
    assert problem["field"] == field and words in problem["message"], problem


def test_a_dataset_registered_from_a_stac_item_serves_job_scenes(client, auth, stac_scene):
    item, lab = stac_scene
    r = client.post("/v1/datasets", json={"name": "landsat", "stac": str(item), "bands": ["nir", "red"],
                                          "labels": str(lab)}, headers=auth)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["paths"]["bands"] == [str(item.parent.resolve() / n) for n in ("B4.tif", "B3.tif")]
    assert ds["paths"]["stac"] == str(item.resolve()) and ds["report"]["bands"] == 2
    spec = train_spec("unused", lab)
    spec["source"]["scenes"] = [{"dataset": ds["id"]}]
    assert client.post("/v1/jobs", json=spec, headers=auth).status_code == 201
    # a scene names either its dataset or a STAC item
    spec["source"]["scenes"] = [{"dataset": ds["id"], "stac": str(item), "bands": ["red"]}]
    r = client.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "source.scenes.0.dataset", r.text


@pytest.mark.parametrize("body, field, words", [
    ({"bands": ["red", "pan"]}, "bands.1", "its common names: blue, green, nir, red"),
    ({"bands": None}, "bands", "common names"),
    ({"bands": ["red"], "image": "x.tif"}, "image", "not both"),
    ({"bands": ["red"], "stac": "/etc/item.json"}, "stac", "outside the allowed roots"),
])
def test_dataset_registration_from_stac_problems_name_the_field(client, auth, stac_scene, body, field, words):
    item, _ = stac_scene
    r = client.post("/v1/datasets", json={"name": "x", "stac": str(item), **body}, headers=auth)
    assert r.status_code == 422, r.text
    problem = r.json()["detail"][0]
    assert problem["field"] == field and words in problem["message"], problem
