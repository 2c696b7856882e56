"""The jobs API through FastAPI's TestClient on a real store (SQLite and PostgreSQL)."""
from __future__ import annotations

import json
import os
import uuid
import warnings

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.store import datasets as dataset_store
from service.store import jobs as job_store
from service.store import tokens
from service.store.db import session_scope

from tests.helpers import train_spec, write_tiny_scene


def _token(app, admin=False) -> dict:
    with session_scope(app.state.sessions) as s:
        _, plain = tokens.create_token(s, admin=admin)
    return {"Authorization": f"Bearer {plain}"}


@pytest.fixture
def auth(app):
    return _token(app)


def test_health_and_openapi_need_no_token_everything_else_does(client, auth):
    h = client.get("/health")
    assert h.status_code == 200
    assert h.json()["job_store"]["ok"] and h.json()["broker"]["ok"]
    assert client.get("/openapi.json").status_code == 200
    for path in ("/v1/jobs", "/v1/datasets", "/v1/models", f"/v1/jobs/{uuid.uuid4()}"):
        r = client.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer ga_0000_nope"}).status_code == 401
    assert client.get("/v1/jobs", headers=auth).status_code == 200


def test_submit_status_and_output_confined_to_job_folder(client, auth, settings, tiny_scene):
    img, lab = tiny_scene
    r = client.post("/v1/jobs", json=train_spec(img, lab, output="/etc"), headers=auth)
    assert r.status_code == 201, r.text
    job = r.json()
    assert r.headers["location"].endswith(f"/v1/jobs/{job['id']}")
    assert job["status"] == "accepted" and job["progress"] == 0
    # the client's output is replaced by the job's own folder, shown relative to the state folder
    assert job["spec"]["output"] == f"jobs/{job['id']}/output"
    assert str(settings.data_dir) not in r.text and str(settings.data_dir.resolve()) not in r.text
    assert (settings.job_dir(job["id"]) / "spec.json").is_file()
    got = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert got["id"] == job["id"] and got["links"][0]["rel"] == "self"
    assert {"stage", "done", "total", "eta_s", "created_at", "error"} <= set(got)


def test_other_tokens_get_404_and_do_not_list_it_admin_sees_all(app, client, auth, tiny_scene):
    other, admin = _token(app), _token(app, admin=True)
    jid = client.post("/v1/jobs", json=train_spec(*tiny_scene), headers=auth).json()["id"]
    for method, path in (("GET", f"/v1/jobs/{jid}"), ("GET", f"/v1/jobs/{jid}/results"),
                         ("DELETE", f"/v1/jobs/{jid}"), ("GET", f"/v1/jobs/{jid}/files/spec.json")):
        r = client.request(method, path, headers=other)
        assert r.status_code == 404, (method, path, r.status_code)
    assert jid not in client.get("/v1/jobs", headers=other).text
    assert client.get(f"/v1/jobs/{jid}", headers=admin).status_code == 200
    assert jid in client.get("/v1/jobs", headers=admin).text


def test_idempotency_key(client, auth, tiny_scene):
    spec = train_spec(*tiny_scene)
    h = {**auth, "Idempotency-Key": "k-1"}
    first = client.post("/v1/jobs", json=spec, headers=h)
    again = client.post("/v1/jobs", json=spec, headers=h)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = client.post("/v1/jobs", json={**spec, "params": {"iterations": 3}}, headers=h)
    assert other.status_code == 409
    assert other.json()["detail"][0]["field"] == "Idempotency-Key"
    assert client.get("/v1/jobs", headers=auth).json()["total"] == 1


def test_inputs_validated_once_until_a_file_changes(client, auth, settings, tiny_scene, monkeypatch):
    """Submits of the same files reuse the first validation; a file truncated after it is refused."""
    import core.raster.validate as validate

    calls = []
    real = validate.validate_job_inputs
    monkeypatch.setattr(validate, "validate_job_inputs", lambda *a, **k: calls.append(1) or real(*a, **k))
    img, lab = tiny_scene
    spec = train_spec(img, lab, params={"iterations": 2, "batch_size": 2, "crop": 16, "seed": 41})
    first = client.post("/v1/jobs", json=spec, headers=auth)
    second = client.post("/v1/jobs", json=spec, headers=auth)
    assert first.status_code == second.status_code == 201
    assert len(calls) == 1
    assert second.json()["id"] != first.json()["id"]
    ids = {first.json()["id"], second.json()["id"]}
    reports = [json.loads((settings.job_dir(j) / "inputs-report.json").read_text()) for j in ids]
    assert reports[0] == reports[1] and reports[0]["domains"]["source"]["scenes"][0]["width"] > 0

    good = img.read_bytes()
    img.write_bytes(good[: len(good) // 2])  # the same path, now a truncated file
    os.utime(img, ns=(1, 1))  # even with an old mtime: the size and the key change
    third = client.post("/v1/jobs", json=spec, headers=auth)
    assert third.status_code == 422, third.text
    assert len(calls) == 2


def test_validation_errors_are_422_naming_fields(client, auth, tiny_scene):
    img, lab = tiny_scene
    bad = train_spec(img, lab)
    bad["classes"][0]["color"] = "red"
    bad["params"]["iterations"] = 0
    bad["surprise"] = 1
    r = client.post("/v1/jobs", json=bad, headers=auth)
    assert r.status_code == 422
    fields = {d["field"] for d in r.json()["detail"]}
    assert {"classes.0.color", "params.iterations", "surprise"} <= fields, fields
    r = client.post("/v1/jobs", json=train_spec(img, str(lab) + ".missing"), headers=auth)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "source.scenes.0.labels"
    # not JSON / not an object
    assert client.post("/v1/jobs", content=b"{nope", headers={**auth, "Content-Type": "application/json"}).status_code == 422
    assert client.post("/v1/jobs", json=[1, 2], headers=auth).status_code == 422


def _bad_combination(img, lab, case: str) -> dict:
    target = {"scenes": [{"image": str(img)}]}
    return {
        "train-st-dasegnet": lambda: train_spec(img, lab, method="st-dasegnet"),
        "train-feature-regression": lambda: train_spec(img, lab, method="feature-regression"),
        "train-adabn": lambda: train_spec(img, lab, method="adabn"),
        "adapt-source-only": lambda: train_spec(img, lab, type="adapt", target=target),
        "adapt-without-target": lambda: train_spec(img, lab, type="adapt", method="st-dasegnet"),
        "adabn-without-bundle": lambda: {**train_spec(img, lab, type="adapt", method="adabn", target=target),
                                         "source": None, "model": None},
        "predict-without-bundle": lambda: {**train_spec(img, lab, type="predict", target=target), "source": None},
        "evaluate-unlabelled": lambda: {**train_spec(img, lab, type="evaluate", target=target, bundle=str(img)),
                                        "source": None},
    }[case]()


@pytest.mark.parametrize("case, field, words", [
    ("train-st-dasegnet", "method", "use type 'adapt' for st-dasegnet"),
    ("train-feature-regression", "method", "use type 'adapt' for feature-regression"),
    ("train-adabn", "method", "use type 'adapt' for adabn"),
    ("adapt-source-only", "method", "needs an adaptation method"),
    ("adapt-without-target", "target", "needs 'target' scenes"),
    ("adabn-without-bundle", "bundle", "needs 'bundle'"),
    ("predict-without-bundle", "bundle", "needs 'bundle'"),
    ("evaluate-unlabelled", "target.scenes.0.labels", "labels is required"),
])
def test_a_type_and_method_or_fields_that_do_not_fit_are_422_at_submit(client, auth, tiny_scene, case, field, words):
    body = {k: v for k, v in _bad_combination(*tiny_scene, case).items() if v is not None}
    r = client.post("/v1/jobs", json=body, headers=auth)
    assert r.status_code == 422, r.text
    assert r.json()["type"] == "invalid_spec"
    assert r.json()["detail"] == [{"field": field, "message": r.json()["detail"][0]["message"]}]
    assert words in r.json()["detail"][0]["message"], r.json()
    assert client.get("/v1/jobs", headers=auth).json()["total"] == 0  # nothing queued to fail in a worker


def test_path_escape_refused(client, auth, tiny_scene, roots, tmp_path):
    img, lab = tiny_scene
    root, outside = roots
    (outside / "secret.tif").write_bytes(img.read_bytes())
    os.symlink(outside / "secret.tif", root / "link.tif")
    for bad in ("../../../../etc/passwd", f"{root}/../outside/secret.tif", str(outside / "secret.tif"),
                "/etc/passwd", str(root / "link.tif")):
        r = client.post("/v1/jobs", json=train_spec(bad, lab), headers=auth)
        assert r.status_code == 422, (bad, r.status_code)
        assert r.json()["detail"][0]["field"] == "source.scenes.0.image", r.json()


def test_pagination_and_filters(client, auth, tiny_scene):
    ids = [client.post("/v1/jobs", json=train_spec(*tiny_scene, params={"seed": i}), headers=auth).json()["id"]
           for i in range(5)]
    p1 = client.get("/v1/jobs?limit=2", headers=auth).json()
    assert p1["total"] == 5 and len(p1["jobs"]) == 2
    nxt = next(lk["href"] for lk in p1["links"] if lk["rel"] == "next")
    p2 = client.get(nxt, headers=auth).json()
    p3 = client.get("/v1/jobs?limit=2&offset=4", headers=auth).json()
    assert not any(lk["rel"] == "next" for lk in p3["links"])
    assert {j["id"] for j in p1["jobs"] + p2["jobs"] + p3["jobs"]} == set(ids)
    assert client.get("/v1/jobs?status=running", headers=auth).json()["total"] == 0
    assert client.get("/v1/jobs?type=train&status=accepted", headers=auth).json()["total"] == 5
    assert client.get("/v1/jobs?status=bogus", headers=auth).status_code == 422
    assert client.get("/v1/jobs?limit=0", headers=auth).status_code == 422


def test_cancel_queued_then_delete_the_dismissed_job(client, auth, settings, tiny_scene):
    jid = client.post("/v1/jobs", json=train_spec(*tiny_scene), headers=auth).json()["id"]
    r = client.delete(f"/v1/jobs/{jid}", headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "dismissed"
    assert client.get(f"/v1/jobs/{jid}/results", headers=auth).status_code == 409
    # once ended, DELETE deletes: the record and the folder
    r = client.delete(f"/v1/jobs/{jid}", headers=auth)
    assert r.status_code == 204 and r.content == b""
    assert client.get(f"/v1/jobs/{jid}", headers=auth).status_code == 404
    assert client.delete(f"/v1/jobs/{jid}", headers=auth).status_code == 404
    assert not settings.job_dir(jid).exists() and list(settings.jobs_dir.iterdir()) == []


def _finished_train_job(app, client, auth, settings, tiny_scene) -> str:
    """A successful train job with what a worker leaves: bundle, metrics, a COG, checkpoints."""
    jid = client.post("/v1/jobs", json=train_spec(*tiny_scene), headers=auth).json()["id"]
    out = settings.job_dir(jid) / "output"
    (out / "bundle").mkdir(parents=True)
    (out / "bundle" / "bundle.json").write_text('{"band_count": 3}')
    (out / "metrics.json").write_text('{"miou": 0.5}')
    (out / "predictions").mkdir()
    (out / "predictions" / "scene0_classes.tif").write_bytes(b"II*\x00" + b"\x00" * 100)
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.pth").write_bytes(b"x" * 1000)
    tiles = settings.data_dir / "tiles" / "models" / jid / "some-dataset"
    tiles.mkdir(parents=True)
    (tiles / "0.png").write_bytes(b"png")
    with session_scope(app.state.sessions) as s:
        job_store.claim(s, jid, "w", previous_run_dead=lambda j: False)
        job_store.finish(s, uuid.UUID(jid), "w", {"iterations": 2})
    return jid


def test_delete_an_ended_job_removes_its_files_record_and_model(app, client, auth, settings, tiny_scene):
    jid = _finished_train_job(app, client, auth, settings, tiny_scene)
    other = _finished_train_job(app, client, auth, settings, tiny_scene)
    img, _ = tiny_scene
    predict = {"type": "predict", "classes": train_spec(*tiny_scene)["classes"],
               "bundle": str(settings.job_dir(jid) / "output" / "bundle"), "target": {"scenes": [{"image": str(img)}]}}
    user = client.post("/v1/jobs", json=predict, headers=auth).json()["id"]
    before = sorted(p.relative_to(settings.data_dir) for p in settings.data_dir.rglob("*"))

    # a queued job uses its model: 409 naming that job, nothing touched
    r = client.delete(f"/v1/jobs/{jid}", headers=auth)
    assert r.status_code == 409 and user in r.json()["detail"][0]["message"], r.text
    assert sorted(p.relative_to(settings.data_dir) for p in settings.data_dir.rglob("*")) == before
    assert client.get(f"/v1/models/{jid}", headers=auth).status_code == 200

    assert client.delete(f"/v1/jobs/{user}", headers=auth).json()["status"] == "dismissed"
    # a dataset registered on its files: 409 naming it (it would point at nothing)
    its_file = str(settings.job_dir(jid) / "output" / "predictions" / "scene0_classes.tif")
    with session_scope(app.state.sessions) as s:  # the job's COG registered as imagery
        owner = s.get(job_store.Job, uuid.UUID(jid)).owner_id
        ds = dataset_store.create_dataset(s, dataset_id=uuid.uuid4(), owner_id=owner, name="its map", kind="path",
                                          paths={"image": its_file})
        ds_id = str(ds.id)
    r = client.delete(f"/v1/jobs/{jid}", headers=auth)
    assert r.status_code == 409 and ds_id in r.json()["detail"][0]["message"], r.text
    assert client.delete(f"/v1/datasets/{ds_id}", headers=auth).status_code == 204
    r = client.delete(f"/v1/jobs/{jid}", headers=auth)
    assert r.status_code == 204, r.text
    for path in (f"/v1/jobs/{jid}", f"/v1/jobs/{jid}/results", f"/v1/models/{jid}",
                 f"/v1/jobs/{jid}/files/metrics.json"):
        assert client.get(path, headers=auth).status_code == 404, path
    assert jid not in client.get("/v1/jobs", headers=auth).text
    assert [m["id"] for m in client.get("/v1/models", headers=auth).json()["models"]] == [other]
    assert not settings.job_dir(jid).exists()
    assert not (settings.data_dir / "tiles" / "models" / jid).exists()
    assert sorted(p.name for p in settings.jobs_dir.iterdir()) == sorted([other, user])  # no trash left
    with app.state.sessions() as s:
        assert s.get(job_store.Job, uuid.UUID(jid)) is None
    # the other model and the dismissed predict job are untouched
    assert (settings.job_dir(other) / "output" / "bundle" / "bundle.json").is_file()
    assert client.get(f"/v1/models/{other}", headers=auth).status_code == 200
    assert client.get(f"/v1/jobs/{user}", headers=auth).json()["status"] == "dismissed"


def test_a_deletion_cut_short_is_undone_or_finished_at_start(settings, tiny_scene):
    """A crash between the folder's rename and the commit leaves the record: the folder comes back. After
    the commit it leaves no record: the folder goes."""
    app = create_app(settings)
    with TestClient(app) as c:
        auth = _token(app)
        kept = _finished_train_job(app, c, auth, settings, tiny_scene)
        gone = _finished_train_job(app, c, auth, settings, tiny_scene)
        assert c.delete(f"/v1/jobs/{gone}", headers=auth).status_code == 204
    os.rename(settings.job_dir(kept), settings.jobs_dir / f".deleting-{kept}")
    write_tiny_scene(settings.jobs_dir / f".deleting-{gone}")  # as if removal had not run
    app = create_app(settings)
    with TestClient(app) as c:
        assert sorted(p.name for p in settings.jobs_dir.iterdir()) == [kept]
        assert c.get(f"/v1/jobs/{kept}/results", headers=auth).json()["metrics"] == {"miou": 0.5}


def test_a_failed_job_reports_its_error_type_and_message(app, client, auth, tiny_scene):
    jid = client.post("/v1/jobs", json=train_spec(*tiny_scene), headers=auth).json()["id"]
    with session_scope(app.state.sessions) as s:  # fail it the way a worker does: claim, then fail
        job_store.claim(s, jid, "w", previous_run_dead=lambda j: False)
        job_store.fail(s, uuid.UUID(jid), "w", "time_limit_exceeded", "the job ran past 10 s")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the response model serialises the error as declared, with no warning
        listed = client.get("/v1/jobs", headers=auth).json()["jobs"]
        body = client.get(f"/v1/jobs/{jid}", headers=auth).json()
    assert body["status"] == "failed"
    assert body["error"] == {"type": "time_limit_exceeded", "message": "the job ran past 10 s"}
    assert [j["error"] for j in listed if j["id"] == jid] == [body["error"]]


def test_results_links_and_files(app, client, auth, settings, tiny_scene):
    jid = client.post("/v1/jobs", json=train_spec(*tiny_scene), headers=auth).json()["id"]
    out = settings.job_dir(jid) / "output"
    (out / "bundle").mkdir(parents=True)
    (out / "bundle" / "metadata.json").write_text('{"classes": 2}')
    (out / "metrics.json").write_text('{"miou": 0.5}')
    (out / "predictions").mkdir()
    (out / "predictions" / "scene0_classes.tif").write_bytes(b"II*\x00" + b"\x00" * 100)
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "iter_2.pth").write_bytes(b"x")
    # finish it the way a worker does: claim, then finish
    with session_scope(app.state.sessions) as s:
        job_store.claim(s, jid, "w", previous_run_dead=lambda j: False)
        job_store.finish(s, uuid.UUID(jid), "w", {"iterations": 2})
    res = client.get(f"/v1/jobs/{jid}/results", headers=auth)
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["metrics"] == {"miou": 0.5} and body["bundle"]["metadata"] == {"classes": 2}
    (pred,) = body["predictions"]
    assert pred["name"] == "predictions--scene0_classes" and pred["kind"] == "classes"
    assert set(pred["links"]) >= {"download", "info", "tilejson", "tiles"}
    assert all(f["name"].split("/")[0] != "checkpoints" for f in body["files"])
    dl = client.get(pred["links"]["download"], headers={**auth, "Range": "bytes=0-3"})
    assert dl.status_code == 206 and dl.content == b"II*\x00"
    assert client.get(f"/v1/jobs/{jid}/files/checkpoints/iter_2.pth", headers=auth).status_code == 404
    assert client.get(f"/v1/jobs/{jid}/files/..%2F..%2Fgeoadapt.db", headers=auth).status_code == 404
    models = client.get("/v1/models", headers=auth).json()
    assert [m["id"] for m in models["models"]] == [jid]
    assert client.get(f"/v1/models/{jid}", headers=auth).json()["metrics"] == {"miou": 0.5}


def test_a_bundle_given_as_a_model_id_is_the_callers_successful_training_job(app, client, auth, settings, tiny_scene):
    img, lab = tiny_scene
    spec = train_spec(img, lab)
    jid = client.post("/v1/jobs", json=spec, headers=auth).json()["id"]
    adabn = {"type": "adapt", "method": "adabn", "bundle": jid, "classes": spec["classes"],
             "target": {"scenes": [{"image": str(img)}]}}

    def refused(headers) -> str:
        r = client.post("/v1/jobs", json=adabn, headers=headers)
        assert r.status_code == 422, r.text
        (problem,) = r.json()["detail"]
        assert problem["field"] == "bundle", problem
        return problem["message"]

    assert f"no model {jid}" in refused(auth)  # accepted, not trained yet
    out = settings.job_dir(jid) / "output"
    (out / "bundle").mkdir(parents=True)
    (out / "bundle" / "bundle.json").write_text(json.dumps(
        {"format": 1, "band_count": 3, "classes": spec["classes"], "batchnorm_layers": 5}))
    with session_scope(app.state.sessions) as s:  # finish it the way a worker does
        job_store.claim(s, jid, "w", previous_run_dead=lambda j: False)
        job_store.finish(s, uuid.UUID(jid), "w", {"iterations": 2})
    assert f"no model {jid}" in refused(_token(app))  # another token's model is no model of theirs
    r = client.post("/v1/jobs", json=adabn, headers=auth)
    assert r.status_code == 201, r.text
    # answers show the state folder's paths in their public form (no server paths)
    assert r.json()["spec"]["bundle"] == f"jobs/{jid}/output" and r.json()["method"] == "adabn"


def test_rate_limit_and_body_limit(tmp_path, settings, tiny_scene):
    app = create_app(settings.model_copy(update={"rate_limit_per_minute": 2, "max_json_bytes": 4096}))
    with TestClient(app) as c:
        auth = _token(app)
        spec = train_spec(*tiny_scene)
        codes = [c.post("/v1/jobs", json=spec, headers=auth).status_code for _ in range(3)]
        assert codes == [201, 201, 429]
        r = c.post("/v1/jobs", json=spec, headers=auth)
        assert int(r.headers["retry-after"]) >= 1
        big = c.post("/v1/jobs", json={**spec, "pad": "x" * 5000}, headers=_token(app))
        assert big.status_code == 413


def test_store_unreachable_is_503_with_retry_after(tmp_path):
    from service.settings import Settings

    s = Settings(data_dir=tmp_path, database_url="postgresql://postgres@127.0.0.1:1/none", broker_url="memory://")
    with TestClient(create_app(s)) as c:
        r = c.get("/v1/jobs", headers={"Authorization": "Bearer ga_1234abcd_x"})
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
        r = c.post("/v1/jobs", json={"type": "train"}, headers={"Authorization": "Bearer ga_1234abcd_x"})
        assert r.status_code == 503
        assert "127.0.0.1" not in r.text  # no connection details leak
        assert c.get("/health").status_code == 503


def test_broker_unreachable_at_submit_is_503_and_leaves_no_job(tiny_scene, settings):
    app = create_app(settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    with TestClient(app) as c:
        auth = _token(app)
        r = c.post("/v1/jobs", json=train_spec(*tiny_scene), headers={**auth, "Idempotency-Key": "z"})
        assert r.status_code == 503 and "retry-after" in r.headers
        assert c.get("/v1/jobs", headers=auth).json()["total"] == 0


def test_start_up_declares_the_queues_and_freezes_start_up_objects_until_shutdown(app, settings):
    import gc
    import sqlite3

    gc.unfreeze()
    with TestClient(app):
        # objects alive after start are out of the collector's walks while the app serves
        assert gc.get_freeze_count() > 0
        if settings.embedded_broker:
            broker = settings.broker_url.split(":///", 1)[1]
            with sqlite3.connect(broker) as db:
                # the warm-up declared the job queues before any submit, in a WAL-mode broker file
                assert {q for (q,) in db.execute("SELECT name FROM kombu_queue")} >= {"gpu", "cpu"}
                assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert gc.get_freeze_count() == 0  # a stopped app can be collected again
