"""STAC out: a token's results under /v1/stac, read by pystac through a real server (catalog, children, items,
assets downloaded with the token) and validated against the STAC 1.0.0 and extension JSON schemas kept in
stac_schemas/ (offline: every schema is registered under its own $id)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

import jsonschema
import numpy as np
import pystac
import pytest
from fastapi.testclient import TestClient
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.stac_io import DefaultStacIO
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from core.raster.cog import class_cog_writer, probability_cog_writer
from core.raster.grid import Grid
from service.app import create_app
from service.settings import Settings
from service.store import jobs as job_store
from service.store import tokens
from service.store.db import session_scope
from service.store.tables import RUNNING, SUCCESSFUL

from tests.helpers import served_in_thread

SCHEMAS = Path(__file__).parent / "stac_schemas"
CLASSES = [{"id": 1, "name": "forest", "color": "#228b22"}, {"id": 4, "name": "water", "color": "#1e90ff"}]
CORE = {"Catalog": "https://schemas.stacspec.org/v1.0.0/catalog-spec/json-schema/catalog.json",
        "Collection": "https://schemas.stacspec.org/v1.0.0/collection-spec/json-schema/collection.json",
        "Feature": "https://schemas.stacspec.org/v1.0.0/item-spec/json-schema/item.json"}


def _write_prediction(path: Path, probabilities: bool) -> None:
    """A class COG (and its probabilities twin) as the predictor writes them: through core.raster.cog."""
    grid = Grid(crs=CRS.from_epsg(32617), transform=from_origin(600000, 4000000, 30, 30), width=40, height=30)
    rng = np.random.default_rng(0)
    with class_cog_writer(path, grid, CLASSES) as w:
        w.write(rng.choice(np.array([1, 4], dtype="uint8"), size=(1, 30, 40)), Window(0, 0, 40, 30))
    if probabilities:
        with probability_cog_writer(path.with_name(f"{path.stem}_probs.tif"), grid, CLASSES) as w:
            w.write(rng.integers(0, 255, size=(2, 30, 40), dtype="uint8"), Window(0, 0, 40, 30))


def _job(s, settings, owner, job_type: str, status: str = SUCCESSFUL, bundle: Path | None = None,
         predictions: dict[str, bool] | None = None) -> uuid.UUID:
    job_id = uuid.uuid4()
    out = settings.job_dir(job_id) / "output"
    spec = {"type": job_type, "method": "st-dasegnet" if job_type == "adapt" else "source-only", "classes": CLASSES,
            "output": str(out), **({"bundle": str(bundle)} if bundle else {})}
    job, _ = job_store.create_job(s, job_id=job_id, owner_id=owner, spec=spec, queue="gpu")
    job.status, job.finished_at = status, datetime(2026, 5, 4, 3, 2, 1, tzinfo=timezone.utc)
    if job_type in ("train", "adapt"):
        (out / "bundle").mkdir(parents=True)
        for name, text in (("bundle.json", '{"format": 1}'), ("config.json", "{}"), ("weights.pth", "w" * 100)):
            (out / "bundle" / name).write_text(text)
    for name, probs in (predictions or {}).items():
        (out / "predictions").mkdir(parents=True, exist_ok=True)
        _write_prediction(out / "predictions" / f"{name}.tif", probs)
    return job_id


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("stac")
    settings = Settings(data_dir=root / "state", allowed_roots=[root / "data"], rate_limit_per_minute=0)
    app = create_app(settings)
    with session_scope(app.state.sessions) as s:
        a_rec, a = tokens.create_token(s, name="a")
        b_rec, b = tokens.create_token(s, name="b")
        adapt = _job(s, settings, a_rec.id, "adapt", predictions={"target-0-scene": True})
        predict = _job(s, settings, a_rec.id, "predict", bundle=settings.job_dir(adapt) / "output",
                       predictions={"target-0-other": False})
        running = _job(s, settings, a_rec.id, "predict", status=RUNNING, predictions={"target-0-unfinished": False})
        b_train = _job(s, settings, b_rec.id, "train")
    client = TestClient(app)
    yield dict(settings=settings, app=app, client=client, a={"Authorization": f"Bearer {a}"},
               b={"Authorization": f"Bearer {b}"}, adapt=adapt, predict=predict, running=running, b_train=b_train)
    client.close()


def _registry() -> Registry:
    resources = []
    for f in SCHEMAS.rglob("*.json"):
        doc = json.loads(f.read_text())
        resources.append((doc["$id"].rstrip("#"), Resource.from_contents(doc, default_specification=DRAFT7)))
    return Registry().with_resources(resources)


def _validate(obj: dict, registry: Registry) -> None:
    """As stac-validator does: the core schema of the object's type, then each extension it names."""
    for uri in (CORE[obj["type"]], *obj.get("stac_extensions", [])):
        jsonschema.Draft7Validator({"$ref": uri}, registry=registry).validate(obj)


def _get(url: str, headers: dict | None = None) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
        return r.read()


def test_pystac_reads_the_catalog_and_downloads_the_assets(world):
    with served_in_thread(world["app"]) as port:
        base = f"http://127.0.0.1:{port}"
        io = DefaultStacIO(headers=world["a"])
        cat = pystac.Catalog.from_file(f"{base}/v1/stac", stac_io=io)
        assert {c.id for c in cat.get_children()} == {"adapt", "predict"}
        items = {i.id: i for i in cat.get_items(recursive=True)}
        adapt_id = f"{world['adapt']}.predictions--target-0-scene"
        predict_id = f"{world['predict']}.predictions--target-0-other"
        assert set(items) == {adapt_id, predict_id}  # not the running job's, not token b's
        item = items[adapt_id]
        assert item.collection_id == "adapt" and item.datetime == datetime(2026, 5, 4, 3, 2, 1, tzinfo=timezone.utc)
        assert ProjectionExtension.ext(item).epsg == 32617 and ProjectionExtension.ext(item).shape == [30, 40]
        wgs84 = transform_bounds("EPSG:32617", "EPSG:4326", 600000, 4000000 - 30 * 30, 600000 + 40 * 30, 4000000)
        assert item.bbox == pytest.approx(list(wgs84), abs=1e-6)
        classes = ClassificationExtension.ext(item.assets["classes"]).classes
        assert [(c.value, c.name, c.color_hint) for c in classes] == [(1, "forest", "228B22"), (4, "water", "1E90FF")]
        assert set(item.assets) == {"classes", "probabilities", "bundle", "bundle-config", "bundle-weights"}
        for key, asset in item.assets.items():
            data = _get(asset.href, world["a"])
            assert len(data) == asset.extra_fields["file:size"], key
            if asset.media_type.startswith("image/tiff"):
                assert data[:4] == b"II*\x00", key
            with pytest.raises(urllib.error.HTTPError) as e:
                _get(asset.href)  # the token opens them, nothing else
            assert e.value.code == 401
        # a predict job's item carries the bundle it ran: the adapt job's files
        other = items[predict_id]
        assert "probabilities" not in other.assets
        assert other.assets["bundle-weights"].href == item.assets["bundle-weights"].href
        # the tilejson: with the token's header, and signed for clients that send none
        tilejsons = [lk.href for lk in item.links if lk.rel == "tilejson"]
        assert json.loads(_get(tilejsons[0], world["a"]))["tiles"]
        assert json.loads(_get(tilejsons[1]))["tiles"]


def test_catalog_collections_and_items_are_valid_stac_with_their_extensions(world):
    registry, c, a = _registry(), world["client"], world["a"]
    root = c.get("/v1/stac", headers=a)
    assert root.status_code == 200 and root.headers["content-type"] == "application/json"
    _validate(root.json(), registry)
    seen = 0
    for child in (lk for lk in root.json()["links"] if lk["rel"] == "child"):
        col = c.get(child["href"], headers=a).json()
        _validate(col, registry)
        assert col["extent"]["temporal"]["interval"] == [["2026-05-04T03:02:01Z", "2026-05-04T03:02:01Z"]]
        for link in (lk for lk in col["links"] if lk["rel"] == "item"):
            r = c.get(link["href"], headers=a)
            assert r.headers["content-type"] == "application/geo+json"
            _validate(r.json(), registry)
            seen += 1
    assert seen == 2
    # the validation does catch what the extensions forbid: a colour hint with '#'
    bad = c.get(f"/v1/stac/adapt/{world['adapt']}.predictions--target-0-scene", headers=a).json()
    bad["assets"]["classes"]["classification:classes"][0]["color_hint"] = "#228b22"
    with pytest.raises(jsonschema.ValidationError):
        _validate(bad, registry)


def test_each_token_sees_only_its_own_results(world):
    c, a, b = world["client"], world["a"], world["b"]
    mine = f"/v1/stac/adapt/{world['adapt']}.predictions--target-0-scene"
    assert c.get(mine, headers=b).status_code == 404
    assert c.get(mine).status_code == 401
    assert not [lk for lk in c.get("/v1/stac/adapt", headers=b).json()["links"] if lk["rel"] == "item"]
    # b's train job made no prediction: its collection is there, with no items
    children = [lk["href"].rsplit("/", 1)[-1] for lk in c.get("/v1/stac", headers=b).json()["links"]
                if lk["rel"] == "child"]
    assert children == ["train"]
    # an item is found only in its own collection, and only once its job has succeeded
    assert c.get(f"/v1/stac/predict/{world['adapt']}.predictions--target-0-scene", headers=a).status_code == 404
    assert c.get(f"/v1/stac/predict/{world['running']}.predictions--target-0-unfinished", headers=a).status_code == 404
    assert c.get(f"/v1/stac/adapt/{world['adapt']}.nothing", headers=a).status_code == 404
    assert c.get("/v1/stac/adapt/not-an-id", headers=a).status_code == 404
    assert c.get("/v1/stac/nonsense", headers=a).status_code == 422
