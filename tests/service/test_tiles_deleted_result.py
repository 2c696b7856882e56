"""A result whose job is deleted while a tile request for it is under way (found, then gone before it is
opened) answers 404 naming it, not 500 (schemathesis's stateful phase met this: DELETE beside GET)."""
from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from benchmarks.security import write_class_cog
from service.store import jobs as job_store
from service.store import tokens
from service.store.db import session_scope
from service.store.tables import SUCCESSFUL
from service.tiles import sources


def test_a_result_deleted_between_lookup_and_open_is_404(app, settings, monkeypatch):
    with session_scope(app.state.sessions) as s:
        owner, token = tokens.create_token(s)
        job, _ = job_store.create_job(s, job_id=uuid.uuid4(), owner_id=owner.id, spec={"type": "predict"},
                                      queue="gpu")
        job.status = SUCCESSFUL
        job_id = job.id
    write_class_cog(settings.job_dir(job_id) / "output" / "predictions" / "scene.tif", size=256)
    url = f"/v1/results/{job_id}.predictions--scene/WebMercatorQuad/tilejson.json"
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as c:
        assert c.get(url, headers=auth).status_code == 200

        found = sources.find_cog

        def found_then_deleted(job_dir, name):
            path = found(job_dir, name)
            path.unlink()  # the job's files go (DELETE /v1/jobs/{id}) before this request opens it
            return path

        monkeypatch.setattr(sources, "find_cog", found_then_deleted)
        r = c.get(url, headers=auth)
    assert r.status_code == 404, r.text
    assert r.json()["type"] == "not_found" and "deleted" in r.json()["detail"][0]["message"]
