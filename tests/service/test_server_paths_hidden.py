"""The server's folders stay out of answers: a job's spec, message, error and results, an upload's files and a
model's metrics show paths in the state folder relative to it (jobs/<id>/..., datasets/<id>/...), and specs
may name them in that form. Jobs are moved along with the store's worker-side calls, as a worker does."""
from __future__ import annotations

import json
import uuid

import pytest
from fastapi.testclient import TestClient

from core.files import write_json
from service.app import create_app
from service.store import jobs as job_store
from service.store import tokens
from service.store.db import session_scope

from tests.helpers import train_spec


@pytest.fixture
def world(settings, tiny_scene):
    app = create_app(settings)
    with session_scope(app.state.sessions) as s:
        _, plain = tokens.create_token(s, name="paths")
    with TestClient(app) as client:
        yield dict(client=client, app=app, settings=settings, auth={"Authorization": f"Bearer {plain}"},
                   scene=tiny_scene)


def _server_folders(settings) -> tuple[str, str]:
    return str(settings.data_dir), str(settings.data_dir.resolve())


def _run_like_a_worker(w, jid: str, *, fail_with: str | None = None) -> None:
    """What a worker leaves: a message naming the bundle it wrote, metrics naming it, the bundle's manifest."""
    job_id = uuid.UUID(jid)
    out = w["settings"].job_dir(job_id).resolve() / "output"
    bundle = out / "bundle"
    bundle.mkdir(parents=True)
    write_json(bundle / "bundle.json", {"format": 1, "band_count": 3,
                                        "classes": train_spec(*w["scene"])["classes"]})
    write_json(out / "metrics.json", {"evaluation": {}, "bundle": str(bundle)})
    with session_scope(w["app"].state.sessions) as s:
        job_store.claim(s, job_id, "w1", previous_run_dead=lambda j: True)
        job_store.heartbeat(s, job_id, "w1", message=f"bundle written to {bundle}")
        if fail_with:
            job_store.fail(s, job_id, "w1", "disk_full", f"{fail_with} {out / 'predictions'}")
        else:
            job_store.finish(s, job_id, "w1", {"bundle": str(bundle)})


def test_jobs_show_their_folders_relative_to_the_state_folder(world):
    c, auth = world["client"], world["auth"]
    job = c.post("/v1/jobs", json=train_spec(*world["scene"]), headers=auth).json()
    jid = job["id"]
    _run_like_a_worker(world, jid)
    answers = [c.get(f"/v1/jobs/{jid}", headers=auth), c.get(f"/v1/jobs/{jid}/results", headers=auth),
               c.get("/v1/jobs", headers=auth), c.get(f"/v1/models/{jid}", headers=auth)]
    for r in answers:
        assert r.status_code == 200, r.text
        assert not any(folder in r.text for folder in _server_folders(world["settings"])), r.text
    got = answers[0].json()
    assert got["spec"]["output"] == f"jobs/{jid}/output"
    assert got["message"] == f"bundle written to jobs/{jid}/output/bundle"
    assert answers[1].json()["metrics"]["bundle"] == f"jobs/{jid}/output/bundle"
    assert answers[3].json()["metrics"]["bundle"] == f"jobs/{jid}/output/bundle"
    # the form shown is one a spec may name: a predict job on that bundle
    img, _ = world["scene"]
    predict = {"type": "predict", "classes": got["spec"]["classes"], "bundle": got["message"].split()[-1],
               "target": {"scenes": [{"image": str(img)}]}}
    r = c.post("/v1/jobs", json=predict, headers=auth)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["bundle"] == f"jobs/{jid}/output/bundle"
    with open(world["settings"].job_dir(r.json()["id"]) / "spec.json") as fh:
        assert json.load(fh)["bundle"] == str(world["settings"].job_dir(jid).resolve() / "output" / "bundle")


def test_a_failed_jobs_error_hides_the_folder_it_names(world):
    c, auth = world["client"], world["auth"]
    jid = c.post("/v1/jobs", json=train_spec(*world["scene"]), headers=auth).json()["id"]
    _run_like_a_worker(world, jid, fail_with="no space left writing")
    got = c.get(f"/v1/jobs/{jid}", headers=auth).json()
    assert got["status"] == "failed"
    assert got["error"]["message"] == f"no space left writing jobs/{jid}/output/predictions"


def test_another_tokens_folder_in_the_shown_form_is_refused(world):
    c, auth = world["client"], world["auth"]
    jid = c.post("/v1/jobs", json=train_spec(*world["scene"]), headers=auth).json()["id"]
    _run_like_a_worker(world, jid)
    with session_scope(world["app"].state.sessions) as s:
        _, other = tokens.create_token(s, name="other")
    img, _ = world["scene"]
    predict = {"type": "predict", "classes": train_spec(*world["scene"])["classes"],
               "bundle": f"jobs/{jid}/output/bundle", "target": {"scenes": [{"image": str(img)}]}}
    r = c.post("/v1/jobs", json=predict, headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "bundle", r.text
    for escape in ("jobs/../../etc", "datasets/x/../../../etc/passwd", "elsewhere/x.tif"):
        r = c.post("/v1/jobs", json={**predict, "bundle": escape}, headers=auth)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "bundle", (escape, r.text)
