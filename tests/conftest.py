"""Shared fixtures: the real North Carolina Landsat-7 scene and NEON crowns (fetched once into the data cache), and
PostgreSQL schemas of their own for the job-store tests of every package."""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager

import pytest

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
