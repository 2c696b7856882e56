"""CORS: off unless GEOADAPT_CORS_ORIGINS names origins; then pages there may call the API and read its tiles
with a bearer token (never cookies: no Allow-Credentials), and other origins get no grant."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.app import create_app
from service.settings import Settings
from service.store import tokens
from service.store.db import session_scope

MAPS = "https://maps.example.org"


def _client(settings: Settings, **changes) -> TestClient:
    return TestClient(create_app(settings.model_copy(update=changes)))


def _token(app) -> dict:
    with session_scope(app.state.sessions) as s:
        _, plain = tokens.create_token(s)
    return {"Authorization": f"Bearer {plain}"}


def _preflight(client, origin: str, method: str = "GET", headers: str = "authorization"):
    return client.options("/v1/jobs", headers={"Origin": origin, "Access-Control-Request-Method": method,
                                               "Access-Control-Request-Headers": headers})


def test_no_origin_is_granted_by_default(settings):
    with _client(settings) as c:
        assert "access-control-allow-origin" not in _preflight(c, MAPS).headers
        assert "access-control-allow-origin" not in c.get("/health", headers={"Origin": MAPS}).headers


def test_a_named_origin_may_call_the_api_with_a_token_and_another_may_not(settings):
    with _client(settings, cors_origins=[MAPS]) as c:
        pre = _preflight(c, MAPS, "POST", "authorization,content-type")
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == MAPS
        assert "POST" in pre.headers["access-control-allow-methods"]
        assert "access-control-allow-credentials" not in pre.headers
        r = c.get("/v1/jobs", headers={"Origin": MAPS, **_token(c.app)})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == MAPS
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        assert c.get("/v1/jobs", headers={"Origin": MAPS}).status_code == 401  # CORS grants no access itself

        other = _preflight(c, "https://elsewhere.example.com")
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        assert "access-control-allow-origin" not in c.get("/health", headers={"Origin": "https://x.example"}).headers


def test_any_origin(settings):
    with _client(settings, cors_origins=["*"]) as c:
        assert c.get("/health", headers={"Origin": "https://x.example"}).headers["access-control-allow-origin"] == "*"


def test_origins_from_the_environment_and_bad_ones_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("GEOADAPT_CORS_ORIGINS", f" {MAPS}/ , http://localhost:5173")
    assert Settings(data_dir=tmp_path).cors_origins == [MAPS, "http://localhost:5173"]
    for bad in ("maps.example.org", "https://maps.example.org/app", "ftp://maps.example.org", "https://"):
        with pytest.raises(ValidationError, match="not an origin"):
            Settings(data_dir=tmp_path, cors_origins=bad)
