"""GET /v1/models/{id}/onnx, linked from the model page: the first request sends the export to a worker (202, once),
then the file, or 422 with the reason the worker wrote; 404 for another token's model."""
from __future__ import annotations

import uuid

from core.bundle_manifest import ONNX, ONNX_FAILED
from service.store import jobs as job_store
from service.store import tokens
from service.store.db import session_scope
from tests.helpers import train_spec


def _auth(app) -> dict:
    with session_scope(app.state.sessions) as s:
        _, plain = tokens.create_token(s)
    return {"Authorization": f"Bearer {plain}"}


def _finished_model(app, client, auth, settings, tiny_scene) -> str:
    jid = client.post("/v1/jobs", json=train_spec(*tiny_scene), headers=auth).json()["id"]
    bundle = settings.job_dir(jid) / "output" / "bundle"
    bundle.mkdir(parents=True)
    (bundle / "bundle.json").write_text('{"classes": 2}')
    with session_scope(app.state.sessions) as s:  # finish it the way a worker does: claim, then finish
        job_store.claim(s, jid, "w", previous_run_dead=lambda j: False)
        job_store.finish(s, uuid.UUID(jid), "w", {"iterations": 2})
    return jid


def test_a_models_onnx_is_exported_on_request_then_downloads_for_its_owner_only(app, client, settings, tiny_scene):
    auth, other = _auth(app), _auth(app)
    jid = _finished_model(app, client, auth, settings, tiny_scene)
    bundle = settings.job_dir(jid) / "output" / "bundle"
    page = client.get(f"/v1/models/{jid}", headers=auth).json()
    (link,) = [l for l in page["links"] if l["type"] == "application/onnx"]

    r = client.get(link["href"], headers=auth)  # no file yet: sent to a worker
    assert r.status_code == 202 and r.headers["retry-after"] and r.headers["location"] == link["href"]
    (marker,) = [p for p in bundle.iterdir() if "requested" in p.name]
    sent_at = marker.stat().st_mtime_ns
    assert client.get(link["href"], headers=auth).status_code == 202
    assert marker.stat().st_mtime_ns == sent_at  # asked again: not sent twice

    payload = b"\x08\x07onnx-bytes" * 100
    (bundle / ONNX).write_bytes(payload)  # as the worker's export leaves it
    r = client.get(link["href"], headers=auth)
    assert r.status_code == 200 and r.content == payload
    assert r.headers["content-type"] == "application/onnx"
    assert f"geoadapt-{jid}.onnx" in r.headers["content-disposition"]
    assert client.get(link["href"], headers=other).status_code == 404  # another token's model
    assert client.get(link["href"]).status_code == 401
    assert client.get(f"/v1/models/{uuid.uuid4()}/onnx", headers=auth).status_code == 404


def test_a_failed_export_answers_422_with_the_reason_and_no_server_path(app, client, settings, tiny_scene):
    auth = _auth(app)
    jid = _finished_model(app, client, auth, settings, tiny_scene)
    bundle = settings.job_dir(jid) / "output" / "bundle"
    (bundle / ONNX_FAILED).write_text(f"Reshape failed in {bundle}/weights.pth")
    r = client.get(f"/v1/models/{jid}/onnx", headers=auth)
    assert r.status_code == 422 and "Reshape failed" in r.text
    assert str(settings.data_dir) not in r.text
