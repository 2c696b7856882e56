"""Hostile and broken input through the REST API (dataset registration, upload, job submission), with
real files written by GDAL or by hand: each is refused with a 4xx whose body names the problem, and the
store (job and dataset rows, the state folder) and the client's files are the same afterwards."""
from __future__ import annotations

import hashlib
import json
import struct
import time
import zlib
from pathlib import Path

import pytest
import rasterio
from fastapi.testclient import TestClient
from rasterio.transform import from_origin
from sqlalchemy import text

from service.app import create_app
from service.settings import Settings
from service.store import tokens
from service.store.db import session_scope

from tests.helpers import train_spec, write_tiny_scene

CLASSES = [{"id": 1, "name": "a", "color": "#ff0000"}, {"id": 2, "name": "b", "color": "#00ff00"}]


# ---- hostile files, made the way an attacker or a broken export would make them -------------------------

def tiff_header_bomb(path: Path, width: int, height: int) -> Path:
    """A 150-byte TIFF whose header declares width x height 8-bit pixels in one uncompressed strip."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (277, 3, 1),
               (278, 4, height), (279, 4, 16)]
    out = b"II*\x00" + struct.pack("<I", 24) + b"\x00" * 16 + struct.pack("<H", len(entries))
    for tag, typ, val in entries:
        out += struct.pack("<HHI", tag, typ, 1) + (struct.pack("<HH", val, 0) if typ == 3 else struct.pack("<I", val))
    path.write_bytes(out + struct.pack("<I", 0))
    return path


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR declares width x height and whose IDAT inflates zeros: a few hundred bytes on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    idat = zlib.compress(b"\x00" * (width + 1) * 8, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def shifted_labels(lab: Path, out: Path, *, x0: float, size: int | None = None, crs="keep") -> Path:
    """The labels written again with another origin (and optionally another size or CRS)."""
    with rasterio.open(lab) as ds:
        prof, arr = ds.profile, ds.read()
    if size:
        arr = arr[:, :size, :size]
        prof.update(width=size, height=size)
    prof.update(transform=from_origin(x0, 4000000.0, 30.0, 30.0))
    if crs != "keep":
        prof.update(crs=crs)
    with rasterio.open(out, "w", **prof) as ds:
        ds.write(arr)
    return out


def write_bundle_manifest(folder: Path, band_count: int, **fields) -> Path:
    """A model bundle folder as save_bundle writes its manifest; the service reads no more than that."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bundle.json").write_text(json.dumps({"format": 1, "band_count": band_count, "classes": CLASSES,
                                                    **fields}))
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    root = tmp / "root"
    img, lab = write_tiny_scene(root / "scene")  # 3 bands, 32 x 32, EPSG:32617, labels 1/2
    f = {"img": img, "lab": lab}
    good = img.read_bytes()
    (root / "truncated.tif").write_bytes(good[: len(good) // 2])
    (root / "zeros.tif").write_bytes(b"\x00" * 4096)
    (root / "notes.tif").write_text("these are field notes, not an image\n")
    (root / "page.tif").write_text("<html><body>404</body></html>")
    f["bomb_tif"] = tiff_header_bomb(root / "bomb.tif", 200_000, 200_000)
    f["bomb_png"] = png_bomb(root / "bomb.png", 100_000, 100_000)
    f["img9"], f["lab9"] = write_tiny_scene(root / "nine", classes=(1, 2, 9))
    f["far"] = shifted_labels(lab, root / "far.tif", x0=700000.0)
    f["img_nocrs"], _ = write_tiny_scene(root / "nocrs", crs=None)
    f["img_local"], _ = write_tiny_scene(root / "local", crs='LOCAL_CS["site grid"]')
    f["half"] = shifted_labels(lab, root / "half.tif", x0=600300.0, size=16)
    (root / "labels.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"class": 1},
         "geometry": {"type": "Polygon", "coordinates": [[[-79.0, 36.1], [-78.99, 36.1], [-78.99, 36.11],
                                                          [-79.0, 36.1]]]}}]}))
    f["bundle6"] = write_bundle_manifest(root / "bundle6", 6)
    f["bundle3"] = write_bundle_manifest(root / "bundle3", 3, batchnorm_layers=5, config_name="segformer-tiny")
    f["bundle_gn"] = write_bundle_manifest(root / "bundle-gn", 3, batchnorm_layers=0, config_name="segformer-tiny")
    settings = Settings(data_dir=tmp / "state", allowed_roots=[root], database_url=f"sqlite:///{tmp / 'store.db'}",
                        broker_url="memory://", rate_limit_per_minute=0)
    app = create_app(settings)
    with session_scope(app.state.sessions) as s:
        _, plain = tokens.create_token(s, name="hostile")
    with TestClient(app) as client:
        # one accepted job and one dataset first: "unchanged" must mean something
        auth = {"Authorization": f"Bearer {plain}"}
        assert client.post("/v1/jobs", json=train_spec(img, lab), headers=auth).status_code == 201
        assert client.post("/v1/datasets", json={"name": "ok", "image": str(img)}, headers=auth).status_code == 201
        yield dict(client=client, app=app, settings=settings, root=root, auth=auth, f=f)


def snapshot(w) -> dict:
    """Rows of the job and dataset tables, every file of the state folder but the SQLite store, every client file."""
    with w["app"].state.sessions() as s:
        rows = {t: sorted(map(tuple, s.execute(text(f"SELECT * FROM {t}")).all()), key=repr)
                for t in ("jobs", "datasets")}
    def files(folder: Path) -> dict:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith("geoadapt.db")}
    return {"rows": rows, "state": files(w["settings"].data_dir), "client": files(w["root"])}


def _job(**kw) -> callable:
    """A job body built from the world's files: kw values are file keys (str) or literal values."""
    def build(f):
        spec = train_spec(f["img"], f["lab"])
        for k, v in kw.items():
            spec[k] = v(f) if callable(v) else v
        return spec
    return build


def _scene(image: str, labels: str | None = "lab", **extra):
    def build(f):
        spec = train_spec(f[image], f[labels] if labels else f["lab"], **extra)
        if labels is None:
            del spec["source"]["scenes"][0]["labels"]
        return spec
    return build


# (id, endpoint, body builder, status, error type, field prefix, words the message must hold)
CASES = [
    # broken and hostile files
    ("truncated-geotiff/dataset", "datasets", lambda f: {"name": "t", "image": str(f["img"].parent.parent / "truncated.tif")},
     422, "unreadable_raster", "image", ["truncated"]),
    ("truncated-geotiff/job", "jobs", lambda f: train_spec(f["img"].parent.parent / "truncated.tif", f["lab"]),
     422, "unreadable_raster", "source.scenes.0", ["truncated"]),
    ("not-an-image-text/dataset", "datasets", lambda f: {"name": "t", "image": str(f["img"].parent.parent / "notes.tif")},
     422, "unreadable_raster", "image", ["not a GeoTIFF"]),
    ("not-an-image-html/job", "jobs", lambda f: train_spec(f["img"].parent.parent / "page.tif", f["lab"]),
     422, "unreadable_raster", "source.scenes.0.image", ["not a GeoTIFF"]),
    ("not-an-image-zeros/labels", "jobs", lambda f: train_spec(f["img"], f["img"].parent.parent / "zeros.tif"),
     422, "unreadable_raster", "source.scenes.0.labels", ["not a GeoTIFF"]),
    ("tiff-header-200000x200000/dataset", "datasets", lambda f: {"name": "t", "image": str(f["bomb_tif"])},
     422, "raster_too_large", "image", ["200000 x 200000", "limit"]),
    ("tiff-header-200000x200000/job", "jobs", lambda f: train_spec(f["bomb_tif"], f["lab"]),
     422, "raster_too_large", "source.scenes.0", ["200000 x 200000"]),
    ("png-bomb-100000x100000/dataset", "datasets", lambda f: {"name": "t", "image": str(f["bomb_png"])},
     422, "raster_too_large", "image", ["100000 x 100000"]),
    ("png-bomb-as-labels/dataset", "datasets", lambda f: {"name": "t", "image": str(f["img"]), "labels": str(f["bomb_png"])},
     422, "raster_too_large", "labels", ["100000 x 100000"]),
    ("folder-as-image/dataset", "datasets", lambda f: {"name": "t", "image": str(f["img"].parent)},
     422, "unreadable_raster", "image", ["scene is a folder; expected a GeoTIFF"]),
    ("folder-as-labels/job", "jobs", lambda f: train_spec(f["img"], f["img"].parent),
     422, "unreadable_raster", "source.scenes.0.labels", ["is a folder; expected a GeoTIFF or a vector labels file"]),
    # what the data says against the job
    ("wrong-band-count-for-model/predict", "jobs",
     lambda f: {"type": "predict", "classes": CLASSES, "bundle": str(f["bundle6"]), "target": {"scenes": [{"image": str(f["img"])}]}},
     422, "band_count_mismatch", "target.scenes.0", ["3 bands", "expects 6"]),
    ("wrong-band-count-across-domains/adapt", "jobs",
     lambda f: train_spec(f["img"], f["lab"], type="adapt", method="st-dasegnet",
                          target={"scenes": [{"image": str(f["img_nocrs"])}, {"bands": [str(f["lab"])]}]}),
     422, "band_count_mismatch", "target.scenes.1", ["bands"]),
    ("model-without-batchnorm/adabn", "jobs",
     lambda f: {"type": "adapt", "method": "adabn", "classes": CLASSES, "bundle": str(f["bundle_gn"]),
                "target": {"scenes": [{"image": str(f["img"])}]}},
     422, "no_batchnorm", "bundle", ["bundle-gn (segformer-tiny) has no batch-norm layers", "would change nothing"]),
    ("other-classes-than-the-model/adabn", "jobs",
     lambda f: {"type": "adapt", "method": "adabn", "bundle": str(f["bundle3"]),
                "classes": [{"id": 1, "name": "a", "color": "#ff0000"}, {"id": 7, "name": "g", "color": "#00ff00"}],
                "target": {"scenes": [{"image": str(f["img"])}]}},
     422, "invalid_spec", "classes", ["[1, 7] differ from the model's [1, 2]"]),
    ("other-classes-than-the-model/label-shift", "jobs",
     lambda f: {"type": "adapt", "method": "label-shift", "bundle": str(f["bundle3"]),
                "classes": [{"id": 1, "name": "a", "color": "#ff0000"}, {"id": 7, "name": "g", "color": "#00ff00"}],
                "source": {"scenes": [{"image": str(f["img"]), "labels": str(f["lab"])}]},
                "target": {"scenes": [{"image": str(f["img"])}]}},
     422, "invalid_spec", "classes", ["[1, 7] differ from the model's [1, 2]"]),
    ("unknown-model-id/adabn", "jobs",
     lambda f: {"type": "adapt", "method": "adabn", "classes": CLASSES, "bundle": "0b6c2d5e-7f1a-4c3b-9d8e-1a2b3c4d5e6f",
                "target": {"scenes": [{"image": str(f["img"])}]}},
     422, "invalid_spec", "bundle", ["no model 0b6c2d5e-7f1a-4c3b-9d8e-1a2b3c4d5e6f"]),
    ("no-bundle-there/predict", "jobs",
     lambda f: {"type": "predict", "classes": CLASSES, "bundle": str(f["img"].parent), "target": {"scenes": [{"image": str(f["img"])}]}},
     422, "invalid_bundle", "bundle", ["bundle.json"]),
    ("label-values-outside-classes", "jobs", _scene("img9", "lab9"),
     422, "label_values_outside_classes", "source.scenes.0", ["9", "not in the class list"]),
    ("labels-no-overlap", "jobs", _scene("img", "far"), 422, "no_overlap", "source.scenes.0", ["share no ground"]),
    ("crs-missing-vector-labels", "jobs", lambda f: train_spec(f["img_nocrs"], f["img"].parent.parent / "labels.geojson"),
     422, "missing_crs", "source.scenes.0", ["no CRS"]),
    ("crs-missing-labels-elsewhere", "jobs", _scene("img_nocrs", "half"), 422, "missing_crs", "source.scenes.0", ["no CRS"]),
    ("crs-local-vector-labels", "jobs", lambda f: train_spec(f["img_local"], f["img"].parent.parent / "labels.geojson"),
     422, "missing_crs", "source.scenes.0", ["cannot be placed", "local or unknown CRS"]),
    ("crs-local-labels-elsewhere", "jobs", _scene("img_local", "half"), 422, "missing_crs", "source.scenes.0",
     ["no transformation", "local or unknown CRS"]),
    ("crs-missing-feature-regression", "jobs",
     lambda f: train_spec(f["img"], f["lab"], type="adapt", method="feature-regression",
                          target={"scenes": [{"image": str(f["img_nocrs"])}]}),
     422, "missing_crs", "target.scenes.0", ["no CRS"]),
    # parameters, methods, configs, keys
    ("param-not-a-number", "jobs", _job(params={"iterations": "many"}), 422, "invalid_spec", "params.iterations", ["integer"]),
    ("param-number-as-string", "jobs", _job(params={"iterations": "30"}), 422, "invalid_spec", "params.iterations",
     ["valid integer"]),
    ("param-boolean-as-count", "jobs", _job(params={"iterations": True, "predict_targets": 1}), 422, "invalid_spec",
     "params.", ["valid integer", "valid boolean"]),
    ("param-out-of-range", "jobs", _job(params={"crop": 10**9, "batch_size": -1, "seed": 2**40}),
     422, "invalid_spec", "params.", ["less than or equal", "greater than or equal"]),
    ("param-fraction-of-iterations", "jobs", _job(params={"iterations": 1.5}), 422, "invalid_spec", "params.iterations", ["integer"]),
    ("param-region-reversed", "jobs", lambda f: {**train_spec(f["img"], f["lab"]),
                                                 "source": {"scenes": [{"image": str(f["img"]), "labels": str(f["lab"])}],
                                                            "region": {"columns": [0.9, 0.1]}}},
     422, "invalid_spec", "source.region.columns", ["0 <= start < end <= 1"]),
    ("class-colour-and-id", "jobs", _job(classes=[{"id": -1, "name": "a", "color": "red"}]),
     422, "invalid_spec", "classes.0.", ["#rrggbb"]),
    ("unknown-method", "jobs", _job(method="magic"), 422, "invalid_spec", "method", ["st-dasegnet"]),
    ("unknown-type", "jobs", _job(type="mine"), 422, "invalid_spec", "type", ["adapt"]),
    ("unknown-config-name", "jobs", _job(model="segformer-huge"), 422, "invalid_config", "model.config",
     ["unknown model config", "segformer-tiny"]),
    ("config-as-a-python-file", "jobs", _job(model={"config": "/usr/lib/python3/dist-packages/this.py"}),
     422, "invalid_config", "model.config", ["unknown model config"]),
    ("override-names-a-file", "jobs", _job(model={"config": "segformer-tiny", "overrides": {"checkpoint": "/etc/shadow"}}),
     422, "invalid_config", "model.overrides.checkpoint", ["model.checkpoint"]),
    ("override-names-a-url", "jobs",
     _job(model={"config": "segformer-tiny",
                 "overrides": {"model.backbone.init_cfg": {"type": "Pretrained", "checkpoint": "http://169.254.169.254/x"}}}),
     422, "invalid_config", "model.overrides.model.backbone.init_cfg", ["cannot be overridden"]),
    ("override-type-as-import-path", "jobs",
     _job(model={"config": "segformer-tiny", "overrides": {"model.type": "os.system"}}),
     422, "invalid_config", "model.overrides.model.type", ["never a dotted path", "os.system"]),
    ("override-nested-type-as-import-path", "jobs",
     _job(model={"config": "segformer-tiny", "overrides": {"model": {"backbone": {"type": "subprocess.run"}}}}),
     422, "invalid_config", "model.overrides.model.backbone.type", ["never a dotted path"]),
    ("override-custom-imports", "jobs",
     _job(model={"config": "segformer-tiny", "overrides": {"custom_imports": {"imports": ["os"]}}}),
     422, "invalid_config", "model.overrides.custom_imports", ["no part of the model reads it"]),
    ("extra-key-top", "jobs", _job(surprise=1), 422, "invalid_spec", "surprise", ["unknown key"]),
    ("extra-key-nested", "jobs", lambda f: {**train_spec(f["img"], f["lab"], params={"lr": 0.1}),
                                            "source": {"scenes": [{"image": str(f["img"]), "labels": str(f["lab"]), "nodata": 0}],
                                                       "where": "x"}},
     422, "invalid_spec", "", ["unknown key"]),
    ("extra-key-dataset", "datasets", lambda f: {"name": "t", "image": str(f["img"]), "owner": "someone-else"},
     422, "invalid_request", "owner", ["Extra inputs"]),
    ("path-field-holds-an-object", "jobs", _job(bundle={}), 422, "invalid_spec", "bundle", ["must be a path"]),
    ("path-field-unknown-user-home", "jobs", lambda f: train_spec("~nobody_here/x.tif", f["lab"]),
     422, "invalid_spec", "source.scenes.0.image", ["home folder"]),
    ("missing-fields", "jobs", lambda f: {"type": "train"}, 422, "invalid_spec", "classes", ["Field required"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_a_4xx_naming_it_and_changes_nothing(world, case):
    _, endpoint, build, status, kind, field, words = case
    before = snapshot(world)
    t0 = time.monotonic()
    r = world["client"].post(f"/v1/{endpoint}", json=build(world["f"]), headers=world["auth"])
    took = time.monotonic() - t0
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == kind, body
    assert any(d["field"].startswith(field) for d in body["detail"]), body
    text_ = " ".join(d["message"] for d in body["detail"])
    for w in words:
        assert w in text_, (w, body)
    assert took < 5, f"{took:.1f} s: refusing a hostile file must not read it whole"
    assert snapshot(world) == before


def test_bad_bodies_and_query_parameters(world):
    c, auth = world["client"], world["auth"]
    before = snapshot(world)
    for content, ctype in ((b"{nope", "application/json"), (b"[1, 2]", "application/json"), (b"", "application/json"),
                           (b"type=train", "application/x-www-form-urlencoded"),
                           (json.dumps({"type": "train", "x": float("nan")}).encode(), "application/json")):
        r = c.post("/v1/jobs", content=content, headers={**auth, "Content-Type": ctype})
        assert r.status_code == 422, (content, r.status_code, r.text)
        assert r.json()["type"] in ("invalid_request", "invalid_spec"), r.text
    # bytes that are not UTF-8, a route that does not exist, a method it does not take: same error shape
    for method, url, kw, status, kind in (
            ("POST", "/v1/jobs", b"\xff\xfe\x00", 400, "bad_request"), ("GET", "/v1/nothing-here", None, 404, "not_found"),
            ("PUT", "/v1/jobs", None, 405, "method_not_allowed")):
        r = c.request(method, url, content=kw, headers={**auth, "Content-Type": "application/json"})
        assert r.status_code == status and r.json()["type"] == kind and r.json()["detail"][0]["message"], r.text
    for url, field in (("/v1/jobs?limit=abc", "limit"), ("/v1/jobs?offset=-1", "offset"), ("/v1/jobs?status=won", "status"),
                       ("/v1/jobs?limit=100000", "limit"), ("/v1/datasets?limit=1e3", "limit")):
        r = c.get(url, headers=auth)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == field, (url, r.text)
    for url in ("/v1/jobs/not-a-uuid", "/v1/datasets/1", "/v1/models/%00"):
        assert c.get(url, headers=auth).status_code in (404, 422), url
    assert snapshot(world) == before


def test_hostile_uploads_leave_nothing_behind(world):
    c, auth, f = world["client"], world["auth"], world["f"]
    good = f["img"].read_bytes()
    before = snapshot(world)
    cases = [
        ({"image": ("scene.tif", good[: len(good) // 2])}, "unreadable_raster", "truncated"),
        ({"image": ("scene.tif", b"GIF89a" + b"\x00" * 100)}, "unreadable_raster", "not a GeoTIFF"),
        ({"image": ("bomb.png", f["bomb_png"].read_bytes())}, "raster_too_large", "100000 x 100000"),
        ({"image": ("x.tif", good), "labels": ("x.vrt", b"<VRTDataset rasterXSize='1' rasterYSize='1'/>")},
         "unreadable_raster", "not a GeoTIFF"),
        ({"image": ("x.tif", good), "labels": ("l.geojson", b"{not json")}, "unreadable_raster", "GeoJSON"),
    ]
    for files, kind, words in cases:
        r = c.post("/v1/datasets/upload", data={"name": "up"}, files=files, headers=auth)
        assert r.status_code == 422, r.text
        assert r.json()["type"] == kind and words in r.json()["detail"][0]["message"], r.text
    assert snapshot(world) == before  # no dataset row, no folder, no temp file left


def _damaged(root: Path, good: Path) -> dict[str, Path]:
    """Real GeoTIFFs cut short at several points, and a deflate-compressed one with its pixel data overwritten."""
    out = {}
    raw = good.read_bytes()
    for frac in (0.5, 0.8, 0.95):
        out[f"cut-at-{int(frac * 100)}%"] = root / f"cut{int(frac * 100)}.tif"
        out[f"cut-at-{int(frac * 100)}%"].write_bytes(raw[: int(len(raw) * frac)])
    with rasterio.open(good) as ds:
        prof, arr = ds.profile, ds.read()
    packed = root / "deflate.tif"
    with rasterio.open(packed, "w", **{**prof, "compress": "deflate", "tiled": True, "blockxsize": 16,
                                       "blockysize": 16}) as ds:
        ds.write(arr)
    with rasterio.open(packed) as ds:  # where the last block's compressed bytes lie (registration reads that one)
        offset = int(ds.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
    data = bytearray(packed.read_bytes())
    data[offset: offset + 64] = bytes(range(64))
    out["deflate-block-overwritten"] = root / "garbled.tif"
    out["deflate-block-overwritten"].write_bytes(bytes(data))
    return out


def test_damaged_files_are_described_in_words_not_libtiff_text(world):
    c, auth, f = world["client"], world["auth"], world["f"]
    (world["root"] / "damaged").mkdir(exist_ok=True)
    damaged = _damaged(world["root"] / "damaged", f["img"])
    before = snapshot(world)
    for what, path in damaged.items():
        for endpoint, body, field in (
                ("datasets", {"name": "d", "image": str(path)}, "image"),
                ("jobs", train_spec(path, f["lab"]), "source.scenes.0"),
                ("jobs", train_spec(f["img"], path), "source.scenes.0")):
            r = c.post(f"/v1/{endpoint}", json=body, headers=auth)
            assert r.status_code == 422 and r.json()["type"] == "unreadable_raster", (what, r.text)
            message = r.json()["detail"][0]["message"]
            assert path.name in message and ("truncated" in message or "corrupt" in message), (what, message)
            for raw in ("TIFFRead", "TIFFFetch", "scanline", "4294967295", "Read error", "ZIPDecode", "IReadBlock"):
                assert raw not in message, (what, message)
    assert snapshot(world) == before
