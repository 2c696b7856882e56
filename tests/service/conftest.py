"""Fixtures for the service tests: a real job store on SQLite and on PostgreSQL (tests/conftest.py's
schema fixtures; skipped if PostgreSQL is absent)."""
from __future__ import annotations

import contextlib
import threading
import time

import pytest

from service.settings import Settings
from service.store.db import init_db, make_engine, session_factory


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_schema_url")


@pytest.fixture
def roots(tmp_path):
    """An allowed root with a file in it, and a folder outside every root."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    return root, outside


@pytest.fixture
def settings(tmp_path, database_url, roots):
    return Settings(
        data_dir=tmp_path / "state",
        allowed_roots=[roots[0]],
        database_url=database_url,
        broker_url="memory://",
        rate_limit_per_minute=0,
    )


@pytest.fixture
def session_maker(settings):
    engine = make_engine(settings.database_url)
    init_db(engine)
    yield session_factory(engine)
    engine.dispose()


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


@pytest.fixture
def tiny_scene(roots):
    return write_tiny_scene(roots[0] / "scene")


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
