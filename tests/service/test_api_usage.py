"""Storage per token: GET /v1/usage counts the files of its jobs and uploads; a quota refuses uploads that
would pass it (413) and new jobs once it is passed (507), with the figures in the message."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.store import tokens
from service.store.db import session_scope

from tests.helpers import train_spec, write_tiny_scene


def _token(app) -> dict:
    with session_scope(app.state.sessions) as s:
        _, plain = tokens.create_token(s)
    return {"Authorization": f"Bearer {plain}"}


def _upload(client, auth, img, name="up"):
    with open(img, "rb") as fh:
        return client.post("/v1/datasets/upload", data={"name": name}, files={"image": ("scene.tif", fh)}, headers=auth)


def _folder_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_usage_without_a_quota_counts_jobs_and_uploads(settings, tiny_scene, tmp_path):
    app = create_app(settings)
    img, _ = write_tiny_scene(tmp_path / "client")
    with TestClient(app) as c:
        auth, other = _token(app), _token(app)
        assert c.get("/v1/usage", headers=auth).json() == {
            "used_bytes": 0, "quota_bytes": None, "jobs": 0, "jobs_bytes": 0, "uploads": 0, "uploads_bytes": 0}
        up = _upload(c, auth, img).json()
        jid = c.post("/v1/jobs", json=train_spec(*tiny_scene), headers=auth).json()["id"]
        c.post("/v1/datasets", json={"name": "by path", "image": str(tiny_scene[0])}, headers=auth)  # not counted
        u = c.get("/v1/usage", headers=auth).json()
        assert u["uploads"] == 1 and u["uploads_bytes"] == img.stat().st_size
        assert u["jobs"] == 1 and u["jobs_bytes"] == _folder_bytes(settings.job_dir(jid)) > 0
        assert u["used_bytes"] == u["jobs_bytes"] + u["uploads_bytes"] and u["quota_bytes"] is None
        assert c.get("/v1/usage", headers=other).json()["used_bytes"] == 0  # per token
        assert c.delete(f"/v1/datasets/{up['id']}", headers=auth).status_code == 204
        assert c.get("/v1/usage", headers=auth).json()["uploads_bytes"] == 0


def test_quota_refuses_uploads_past_it_and_jobs_once_it_is_used_up(settings, tiny_scene, tmp_path):
    img, _ = write_tiny_scene(tmp_path / "client")
    size = img.stat().st_size
    quota = size + size // 2  # one upload fits, two do not
    app = create_app(settings.model_copy(update={"storage_quota_bytes": quota}))
    with TestClient(app) as c:
        auth, other = _token(app), _token(app)
        assert _upload(c, auth, img).status_code == 201
        r = _upload(c, auth, img, name="second")
        assert r.status_code == 413 and r.json()["type"] == "storage_quota_exceeded", r.text
        problem = r.json()["detail"][0]
        assert problem["field"] == "image" and "quota" in problem["message"]
        assert f"{quota / 1000:.1f} kB" in problem["message"] and f"{size / 1000:.1f} kB used" in problem["message"]
        assert c.get("/v1/datasets", headers=auth).json()["total"] == 1
        assert len(list(settings.datasets_dir.iterdir())) == 1  # nothing of the refused upload stays

        # below the quota a job is accepted; its results take the token past it: no new job (507)
        jid = c.post("/v1/jobs", json=train_spec(*tiny_scene), headers=auth).json()["id"]
        out = settings.job_dir(jid) / "output"
        out.mkdir(parents=True)
        (out / "metrics.json").write_bytes(b"0" * size)
        r = c.post("/v1/jobs", json=train_spec(*tiny_scene, params={"seed": 1}), headers=auth)
        assert r.status_code == 507 and r.json()["type"] == "storage_quota_exceeded", r.text
        message = r.json()["detail"][0]["message"]
        assert "used up" in message and f"of {quota / 1000:.1f} kB" in message and "DELETE /v1/jobs" in message
        assert c.get("/v1/jobs", headers=auth).json()["total"] == 1
        u = c.get("/v1/usage", headers=auth).json()
        assert u["quota_bytes"] == quota and u["used_bytes"] > quota
        # another token has its own quota
        assert c.post("/v1/jobs", json=train_spec(*tiny_scene), headers=other).status_code == 201

        # deleting the job frees its storage: jobs are accepted again
        assert c.delete(f"/v1/jobs/{jid}", headers=auth).json()["status"] == "dismissed"
        assert c.delete(f"/v1/jobs/{jid}", headers=auth).status_code == 204
        assert c.get("/v1/usage", headers=auth).json()["jobs_bytes"] == 0
        assert c.post("/v1/jobs", json=train_spec(*tiny_scene, params={"seed": 1}), headers=auth).status_code == 201


@pytest.mark.parametrize("bad", ["-1", "lots"])
def test_quota_setting_must_be_a_byte_count(bad, monkeypatch):
    from pydantic import ValidationError

    from service.settings import Settings

    monkeypatch.setenv("GEOADAPT_STORAGE_QUOTA_BYTES", bad)
    with pytest.raises(ValidationError, match="storage_quota_bytes"):
        Settings()
