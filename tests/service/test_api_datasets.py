"""Datasets by path and by upload: confined, checked with real GDAL, owner-scoped, size-limited."""
from __future__ import annotations

import pytest

from service.app import create_app
from service.store import tokens
from service.store.db import session_scope

from tests.helpers import write_tiny_scene


def _token(app) -> dict:
    with session_scope(app.state.sessions) as s:
        _, plain = tokens.create_token(s)
    return {"Authorization": f"Bearer {plain}"}


@pytest.fixture
def app(settings):
    return create_app(settings.model_copy(update={"max_upload_bytes": 64 * 1024}))


def test_register_by_path_reports_the_raster(client, app, tiny_scene, roots):
    auth = _token(app)
    img, lab = tiny_scene
    r = client.post("/v1/datasets", json={"name": "nc", "image": str(img), "labels": str(lab)}, headers=auth)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["kind"] == "path" and ds["report"]["bands"] == 3 and ds["report"]["crs"] == "EPSG:32617"
    assert ds["report"]["labels"]["kind"] == "raster"
    assert client.get(f"/v1/datasets/{ds['id']}", headers=_token(app)).status_code == 404
    assert client.get(f"/v1/datasets/{ds['id']}", headers=auth).json()["name"] == "nc"
    assert client.get("/v1/datasets", headers=auth).json()["total"] == 1


def test_register_refuses_paths_outside_and_unreadable_files(client, app, tiny_scene, roots):
    auth = _token(app)
    img, lab = tiny_scene
    root, outside = roots
    r = client.post("/v1/datasets", json={"name": "x", "bands": [str(img), str(outside / "b.tif")]}, headers=auth)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "bands.1"
    (root / "junk.tif").write_text("not a raster")
    r = client.post("/v1/datasets", json={"name": "x", "image": str(root / "junk.tif")}, headers=auth)
    assert r.status_code == 422 and r.json()["type"] == "unreadable_raster"
    r = client.post("/v1/datasets", json={"name": "x", "image": str(img), "bands": [str(img)]}, headers=auth)
    assert r.status_code == 422


def test_upload_then_use_in_a_job_and_size_limit(client, app, tmp_path, settings):
    auth = _token(app)
    img, lab = write_tiny_scene(tmp_path / "client")
    with open(img, "rb") as fi, open(lab, "rb") as fl:
        r = client.post("/v1/datasets/upload", data={"name": "up"},
                        files={"image": ("../../evil name.tif", fi, "image/tiff"), "labels": ("labels.tif", fl)},
                        headers=auth)
    assert r.status_code == 201, r.text
    ds = r.json()
    image_path = ds["paths"]["image"]
    # the upload's files as datasets/<id>/<name>: the server's folders stay out of answers, and specs name them so
    assert image_path == f"datasets/{ds['id']}/evil_name.tif", image_path
    assert str(settings.data_dir) not in r.text and str(settings.data_dir.resolve()) not in r.text
    assert client.get(f"/v1/datasets/{ds['id']}", headers=auth).json()["paths"] == ds["paths"]
    # the owner's jobs may read the upload; nobody else's
    spec = {"type": "train", "classes": [{"id": 1, "name": "a", "color": "#ff0000"}, {"id": 2, "name": "b", "color": "#00ff00"}],
            "source": {"scenes": [{"image": image_path, "labels": ds["paths"]["labels"]}]},
            "params": {"iterations": 1, "crop": 16}}
    assert client.post("/v1/jobs", json=spec, headers=auth).status_code == 201
    r = client.post("/v1/jobs", json=spec, headers=_token(app))
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "source.scenes.0.image"
    # over the limit: 413, nothing left behind
    big = tmp_path / "big.tif"
    big.write_bytes(b"\x00" * (80 * 1024))
    with open(big, "rb") as fb:
        r = client.post("/v1/datasets/upload", data={"name": "big"}, files={"image": ("big.tif", fb)}, headers=auth)
    assert r.status_code == 413
    assert len(list(settings.datasets_dir.iterdir())) == 1
    # an upload that is not a raster: 422, folder removed
    with open(big, "rb") as fb:
        r = client.post("/v1/datasets/upload", data={"name": "bad"},
                        files={"image": ("x.tif", fb.read(1000))}, headers=auth)
    assert r.status_code == 422
    assert len(list(settings.datasets_dir.iterdir())) == 1
    assert client.delete(f"/v1/datasets/{ds['id']}", headers=auth).status_code == 204
    assert not settings.dataset_dir(ds["id"]).exists()
