"""Consensus and suggest jobs over REST: accepted with their files inside the allowed roots, refused with 422
naming the field when an annotation is missing, outside the roots, or alone."""
from __future__ import annotations

import shutil

import pytest

from service.store import tokens
from service.store.db import session_scope


@pytest.fixture
def auth(app):
    with session_scope(app.state.sessions) as s:
        _, plain = tokens.create_token(s)
    return {"Authorization": f"Bearer {plain}"}


def _spec(img, annotations):
    return {"type": "consensus", "classes": [{"id": 1, "name": "a", "color": "#ff0000"},
                                             {"id": 2, "name": "b", "color": "#00ff00"}],
            "target": {"scenes": [{"image": str(img)}]}, "consensus": {"annotations": [str(a) for a in annotations]},
            "output": "cons"}


def test_consensus_job_is_accepted_and_bad_annotations_are_422(client, auth, tiny_scene, roots):
    img, lab = tiny_scene
    second = lab.with_name("labels2.tif")
    shutil.copy(lab, second)
    r = client.post("/v1/jobs", json=_spec(img, [lab, second]), headers=auth)
    assert r.status_code == 201, r.text
    assert r.json()["type"] == "consensus" and r.json()["status"] == "accepted"

    outside = roots[1] / "labels.tif"
    shutil.copy(lab, outside)
    for annotations, words in (([lab], "at least 2"), ([lab, lab.with_name("nope.tif")], "not found"),
                               ([lab, outside], "")):
        r = client.post("/v1/jobs", json=_spec(img, annotations), headers=auth)
        assert r.status_code == 422, r.text
        fields = [p["field"] for p in r.json()["detail"]]
        assert any(str(f).startswith("consensus.annotations") for f in fields), r.json()
        assert words in r.text


def test_suggest_job_needs_a_bundle(client, auth, tiny_scene):
    img, _ = tiny_scene
    r = client.post("/v1/jobs", json={"type": "suggest", "classes": [{"id": 1, "name": "a", "color": "#ff0000"}],
                                      "target": {"scenes": [{"image": str(img)}]}, "output": "s"}, headers=auth)
    assert r.status_code == 422 and "bundle" in r.text
