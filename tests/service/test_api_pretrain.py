"""Pretrain jobs over REST: submitted without classes (labels dropped), their weights among the results, and a
train job's model.checkpoint naming them by the pretrain job's id."""
from __future__ import annotations

import json
import uuid

from service.store import jobs as job_store
from service.store import tokens
from service.store.db import session_scope


def _token(app) -> dict:
    with session_scope(app.state.sessions) as s:
        _, plain = tokens.create_token(s)
    return {"Authorization": f"Bearer {plain}"}


def _pretrain_spec(img, lab, method="simclr") -> dict:
    return {"type": "pretrain", "method": method, "model": "segformer-tiny",
            "source": {"scenes": [{"image": str(img), "labels": str(lab)}]},
            "target": {"scenes": [{"image": str(img)}]},
            "params": {"iterations": 2, "batch_size": 2, "crop": 16}}


def _finish(app, settings, jid: str) -> None:
    """Finish the job the way a worker does, leaving a pretrain job's weights and record."""
    out = settings.job_dir(jid) / "output"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pretrained.pth").write_bytes(b"weights")
    (out / "pretrained.json").write_text(json.dumps({"method": "simclr", "iterations": 2}))
    with session_scope(app.state.sessions) as s:
        job_store.claim(s, jid, "w", previous_run_dead=lambda j: False)
        job_store.finish(s, uuid.UUID(jid), "w", {"status": "finished"})


def test_a_pretrain_job_is_submitted_without_classes_and_its_weights_are_results(app, client, settings, tiny_scene):
    auth = _token(app)
    img, lab = tiny_scene
    r = client.post("/v1/jobs", json=_pretrain_spec(img, lab), headers=auth)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["type"] == "pretrain" and job["method"] == "simclr"
    assert job["spec"]["classes"] is None and job["spec"]["source"]["scenes"][0]["labels"] is None
    listed = client.get("/v1/jobs?type=pretrain", headers=auth).json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    _finish(app, settings, job["id"])
    res = client.get(f"/v1/jobs/{job['id']}/results", headers=auth).json()
    assert res["pretrained"]["path"] == "pretrained.pth" and res["pretrained"]["record"]["method"] == "simclr"
    assert client.get(res["pretrained"]["links"]["download"], headers=auth).content == b"weights"
    assert res["bundle"] is None
    # a pretrain job is no model: /v1/models lists trained segmentors only
    assert client.get("/v1/models", headers=auth).json()["models"] == []


def test_croco_without_target_is_refused_naming_the_field(app, client, tiny_scene):
    spec = _pretrain_spec(*tiny_scene, method="croco")
    del spec["target"]
    r = client.post("/v1/jobs", json=spec, headers=_token(app))
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "target", r.text


def test_model_checkpoint_names_a_finished_pretrain_job_of_the_caller_by_id(app, client, settings, tiny_scene):
    auth = _token(app)
    img, lab = tiny_scene
    jid = client.post("/v1/jobs", json=_pretrain_spec(img, lab), headers=auth).json()["id"]
    train = {"type": "train", "model": {"config": "segformer-tiny", "checkpoint": jid},
             "classes": [{"id": 1, "name": "a", "color": "#ff0000"}, {"id": 2, "name": "b", "color": "#00ff00"}],
             "source": {"scenes": [{"image": str(img), "labels": str(lab)}]},
             "params": {"iterations": 2, "batch_size": 2, "crop": 16}}

    def refused(headers) -> str:
        r = client.post("/v1/jobs", json=train, headers=headers)
        assert r.status_code == 422, r.text
        (problem,) = r.json()["detail"]
        assert problem["field"] == "model.checkpoint", problem
        return problem["message"]

    assert f"no weights {jid}" in refused(auth)  # accepted, not run yet
    _finish(app, settings, jid)
    assert f"no weights {jid}" in refused(_token(app))  # another token's job is not theirs to start from
    r = client.post("/v1/jobs", json=train, headers=auth)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["model"]["checkpoint"] == f"jobs/{jid}/output"
    # a path to the same folder is as good
    other = {**train, "model": {"config": "segformer-tiny", "checkpoint": f"jobs/{jid}/output"}}
    assert client.post("/v1/jobs", json=other, headers=auth).status_code == 201
