"""The API on the store fixtures of tests/conftest.py (SQLite and PostgreSQL), through Starlette's TestClient."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app


@pytest.fixture
def app(settings):
    return create_app(settings)


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        yield c
