"""Fixtures for the service tests: a real job store on SQLite and on PostgreSQL (skipped if absent)."""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager

import pytest

from service.settings import Settings
from service.store.db import init_db, make_engine, session_factory

PG_URL = os.environ.get("GEOADAPT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("GEOADAPT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def postgres_or_skip() -> None:
    import psycopg

    try:
        psycopg.connect(PG_URL, connect_timeout=2).close()
    except psycopg.Error as e:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {str(e).strip().splitlines()[0]}")


def redis_or_skip() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as e:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {e}")


@contextmanager
def fresh_pg_schema():
    """A PostgreSQL URL whose search_path is a fresh schema, dropped on exit; skips if PostgreSQL is absent."""
    postgres_or_skip()
    import psycopg

    schema = f"ga_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def pg_schema_url():
    with fresh_pg_schema() as url:
        yield url


@pytest.fixture(scope="module")
def pg_module_schema_url():
    """As pg_schema_url, for a module's fixtures (a worker process and the API share one store)."""
    with fresh_pg_schema() as url:
        yield url


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
