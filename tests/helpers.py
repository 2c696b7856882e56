"""Helpers the service, CLI and worker tests share: a tiny real scene, a small train spec, the app served
over real HTTP in a thread, and a GDAL TMS client of a tilejson."""
from __future__ import annotations

import contextlib
import errno
import threading
import time


def write_tiny_scene(folder, *, bands: int = 3, size: int = 32, classes=(1, 2), crs: str | None = "EPSG:32617"):
    """A small georeferenced image and its label raster, written with real GDAL."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tr = from_origin(600000.0, 4000000.0, 30.0, 30.0)
    img = folder / "image.tif"
    lab = folder / "labels.tif"
    prof = dict(driver="GTiff", width=size, height=size, transform=tr, crs=crs)
    with rasterio.open(img, "w", count=bands, dtype="float32", **prof) as ds:
        ds.write(rng.random((bands, size, size), dtype=np.float32) * 100)
    with rasterio.open(lab, "w", count=1, dtype="uint8", **prof) as ds:
        ds.write(rng.choice(np.array(classes, dtype=np.uint8), size=(1, size, size)))
    return img, lab


def write_raster(path, arr, nodata, dtype):
    """A one- or multi-band GeoTIFF of ``arr`` on a fixed 10 m UTM grid (annotations and images that share it)."""
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[-1], height=arr.shape[-2],
                       count=1 if arr.ndim == 2 else arr.shape[0], dtype=dtype, crs="EPSG:32617",
                       transform=from_origin(500000.0, 3000000.0, 10.0, 10.0), nodata=nodata) as ds:
        ds.write(arr if arr.ndim == 3 else arr[None])
    return path


def write_stac_scene(folder, common_names=("blue", "green", "red", "nir"), *, form: str = "1.0", size: int = 32):
    """A tiny scene as a STAC Item: one single-band GeoTIFF per common name (B1.tif, ...; relative hrefs) and a
    label raster. ``form``: "1.0" names bands in ``eo:bands[].common_name``, "1.1" in ``bands[].eo:common_name``.
    Returns (item path, labels path)."""
    import json

    import rasterio

    img, lab = write_tiny_scene(folder, bands=len(common_names), size=size)
    assets = {}
    with rasterio.open(img) as ds:
        prof = {**ds.profile, "count": 1}
        for i, name in enumerate(common_names, start=1):
            with rasterio.open(folder / f"B{i}.tif", "w", **prof) as out:
                out.write(ds.read(i), 1)
            band = {"name": f"B{i}", "common_name": name} if form == "1.0" else {"name": f"B{i}", "eo:common_name": name}
            assets[f"B{i}"] = {"href": f"./B{i}.tif", "type": "image/tiff; application=geotiff",
                               "roles": ["data"], **({"eo:bands": [band]} if form == "1.0" else {"bands": [band]})}
    item = {"type": "Feature", "stac_version": "1.1.0" if form == "1.1" else "1.0.0", "id": folder.name,
            "stac_extensions": [] if form == "1.1" else ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
            "geometry": None, "properties": {"datetime": "2020-01-01T00:00:00Z"}, "links": [], "assets": assets}
    path = folder / "item.json"
    path.write_text(json.dumps(item))
    return path, lab


def train_spec(img, lab, **extra) -> dict:
    spec = {
        "type": "train",
        "method": "source-only",
        "model": "segformer-tiny",
        "classes": [{"id": 1, "name": "a", "color": "#ff0000"}, {"id": 2, "name": "b", "color": "#00ff00"}],
        "source": {"scenes": [{"image": str(img), "labels": str(lab)}]},
        "params": {"iterations": 2, "batch_size": 2, "crop": 16, "seed": 0},
    }
    spec.update(extra)
    return spec


@contextlib.contextmanager
def served_in_thread(app):
    """The app over real HTTP: uvicorn in a thread on a free port; yields the port, stops on exit."""
    import uvicorn

    from benchmarks.common import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        th.join(10)


def read_tms_layer(tilejson: dict, authorization: str | None = None):
    """What GDAL's TMS driver (QGIS's XYZ layers) reads of a tilejson's first tile URL at its maxzoom over its
    bounds: a (4, h, w) RGBA array; ``authorization``: the header GDAL sends, None for none at all."""
    import rasterio
    from rasterio.warp import transform_bounds

    tmpl = tilejson["tiles"][0].replace("{z}", "${z}").replace("{x}", "${x}").replace("{y}", "${y}")
    xml = f"""<GDAL_WMS><Service name="TMS"><ServerUrl>{tmpl.replace("&", "&amp;")}</ServerUrl></Service>
<DataWindow><UpperLeftX>-20037508.34</UpperLeftX><UpperLeftY>20037508.34</UpperLeftY>
<LowerRightX>20037508.34</LowerRightX><LowerRightY>-20037508.34</LowerRightY><TileLevel>{tilejson['maxzoom']}</TileLevel>
<TileCountX>1</TileCountX><TileCountY>1</TileCountY><YOrigin>top</YOrigin></DataWindow>
<Projection>EPSG:3857</Projection><BlockSizeX>256</BlockSizeX><BlockSizeY>256</BlockSizeY>
<BandsCount>4</BandsCount><ZeroBlockHttpCodes>204,404</ZeroBlockHttpCodes></GDAL_WMS>"""
    headers = f"Authorization: {authorization}" if authorization else None
    with rasterio.Env(GDAL_HTTP_HEADERS=headers), rasterio.open(xml) as ds:
        left, bottom, right, top = transform_bounds("EPSG:4326", "EPSG:3857", *tilejson["bounds"])
        return ds.read(window=ds.window(left, bottom, right, top).round_offsets().round_lengths())


def small_conv_bundle(path, classes, stats):
    """A small convolutional network (real mmseg modules) saved as a bundle in ``path/bundle``, loaded back."""
    import torch

    from models.bundle import load_bundle, save_bundle
    from models.segmentor import build_segmentor

    net = dict(
        type="Segmentor",
        backbone=dict(type="ResNetV1c", depth=18, in_channels=6, stem_channels=8, base_channels=8, num_stages=4,
                      out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1),
                      norm_cfg=dict(type="BN", requires_grad=True)),
        decode_head=dict(type="FCNHead", in_channels=64, in_index=3, channels=16, num_convs=1, concat_input=False,
                         num_classes=len(classes), norm_cfg=dict(type="BN", requires_grad=True),
                         align_corners=False, loss_decode=dict(type="CrossEntropyLoss")),
    )
    torch.manual_seed(0)
    save_bundle(path / "bundle", build_segmentor(net), {}, classes, {"source": stats}, inference=net)
    return load_bundle(path)


def fill(fs, leave: int = 16 * 1024):
    """Write a ballast file until the filesystem is full, then give back `leave` bytes."""
    ballast = fs / "ballast"
    with open(ballast, "wb", buffering=0) as fh:  # unbuffered: nothing left to flush (and fail) on close
        try:
            while True:
                fh.write(b"\x00" * 65536)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    with open(ballast, "r+b") as fh:
        fh.truncate(max(0, ballast.stat().st_size - leave))
    return ballast


def memory_app(tmp):
    """create_app on a SQLite store and the in-memory broker (no worker: jobs stay accepted), with one allowed
    root holding a tiny scene: (app, root, image, labels)."""
    from service.app import create_app
    from service.settings import Settings

    root = tmp / "root"
    img, lab = write_tiny_scene(root / "scene")
    settings = Settings(data_dir=tmp / "state", allowed_roots=[root], database_url=f"sqlite:///{tmp / 'store.db'}",
                        broker_url="memory://", rate_limit_per_minute=0)
    return create_app(settings), root, img, lab


def wait_until_workers_ok(url: str, proc, log_path, tries: int = 240) -> None:
    """Poll a `geoadapt serve`'s /health until its workers are up; the serve log in the error if it never is."""
    import httpx

    for _ in range(tries):
        try:
            if httpx.get(f"{url}/health", timeout=2).json()["workers"]["ok"]:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("serve did not become healthy:\n" + log_path.read_text()[-3000:])
