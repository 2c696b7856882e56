"""Shared fixtures: the real North Carolina Landsat-7 scene and NEON crowns (fetched once into the data cache),
PostgreSQL schemas of their own for the job-store tests of every package, and a real job store (SQLite and
PostgreSQL) with settings, allowed roots and a tiny scene for the service and CLI tests."""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager

import pytest

from service.settings import Settings
from service.store.db import init_db, make_engine, session_factory
from tests.helpers import write_tiny_scene

PG_URL = os.environ.get("GEOADAPT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def nc_data():
    """{"b10".."b70", "strata": Path} of the NC set, fetched and verified (cached across runs)."""
    from core.data.fetch import fetch

    return fetch("nc-landsat")


@pytest.fixture(scope="session")
def nc_bands(nc_data):
    """The six NC band files in band order."""
    from core.data.nc import nc_band_paths

    return nc_band_paths(nc_data)


@pytest.fixture(scope="session")
def nc_classes():
    """The 7 strata classes as ClassSpec objects."""
    from core.data.nc import nc_class_specs

    return nc_class_specs()


@pytest.fixture(scope="session")
def neon_data():
    """The NEON crowns set's files (images and crown-box XMLs), fetched and verified (cached across runs)."""
    from core.data.fetch import fetch

    return fetch("neon-crowns")


@pytest.fixture(scope="session")
def neon_scenes(neon_data):
    """The four NEON scenes' derived RGB and tree-label GeoTIFFs (built once, beside the fetched files)."""
    from core.data.neon import prepare_neon

    return prepare_neon(neon_data)


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: two cores are shared with other work, and one thread also
    makes runs bit-reproducible."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def postgres_or_skip() -> None:
    import psycopg

    try:
        psycopg.connect(PG_URL, connect_timeout=2).close()
    except psycopg.Error as e:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {str(e).strip().splitlines()[0]}")


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
    """A PostgreSQL job store of the test's own (a fresh schema); skips if PostgreSQL is absent."""
    with fresh_pg_schema() as url:
        yield url


@pytest.fixture(scope="module")
def pg_module_schema_url():
    """As pg_schema_url, for a module's fixtures (a worker process and the API share one store)."""
    with fresh_pg_schema() as url:
        yield url


# ---- a real job store on SQLite and on PostgreSQL (skipped if PostgreSQL is absent), for the service and CLI
# tests ---------------------------------------------------------------------------------------------------------

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


@pytest.fixture
def tiny_scene(roots):
    return write_tiny_scene(roots[0] / "scene")
