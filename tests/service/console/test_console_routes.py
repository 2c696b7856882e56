"""The console's routes without a browser: the page at /, its static files, its headers, the YAML reader."""
from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.console import LEAFLET_DIR, STATIC_DIR, map_library_ready
from service.settings import Settings
from service.store import tokens


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console")
    app = create_app(Settings(data_dir=tmp / "state", database_url=f"sqlite:///{tmp / 'store.db'}",
                              broker_url="memory://", rate_limit_per_minute=0))
    with app.state.sessions() as s:
        _, token = tokens.create_token(s, name="me")
        s.commit()
    with TestClient(app) as c:
        c.token = token
        yield c


def test_the_page_is_served_at_the_root_with_a_strict_policy(client):
    for path in ("/", "/console"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "<html" in r.text and "<title>geoadapt console</title>" in r.text
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-eval" not in csp and "http" not in csp  # nothing from a CDN
        assert r.headers["x-content-type-options"] == "nosniff"
    assert "/" not in {p for p in client.get("/openapi.json").json()["paths"]}


def test_every_file_the_page_names_is_served(client):
    page = client.get("/").text
    refs = re.findall(r'(?:src|href)="(console/static/[^"]+)"', page)
    assert any(r.endswith("app.js") for r in refs) and any(r.endswith("leaflet.js") for r in refs)
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page), "the page loads nothing from another origin"
    for ref in refs:
        r = client.get("/" + ref)
        if "/vendor/" in ref and not map_library_ready():
            assert r.status_code == 404  # no npm here: the page says so in a banner (tests/console browser tests)
            continue
        assert r.status_code == 200, ref
    for js in (STATIC_DIR / "js").glob("*.js"):
        assert client.get(f"/console/static/js/{js.name}").status_code == 200
    assert client.get("/console/static/../../app.py").status_code == 404


def test_map_library_ready_follows_the_build_output():
    assert map_library_ready() == (LEAFLET_DIR / "leaflet.js").is_file()


def test_spec_reader_turns_yaml_into_json(client):
    h = {"Authorization": f"Bearer {client.token}"}
    text = "type: adapt\nmethod: st-dasegnet\nclasses:\n  - {id: 1, name: forest, color: '#1b7837'}\nparams: {iterations: 5}\n"
    r = client.post("/console/api/spec", content=text, headers=h)
    assert r.status_code == 200
    assert r.json() == {"type": "adapt", "method": "st-dasegnet", "classes": [{"id": 1, "name": "forest", "color": "#1b7837"}],
                        "params": {"iterations": 5}}
    assert client.post("/console/api/spec", content='{"type": "train"}', headers=h).json() == {"type": "train"}


@pytest.mark.parametrize("text, field, words", [
    ("type: train\nclasses: [1, 2\n", "(file)", "line 3"),
    ("- type: train\n", "(spec)", "mapping"),
    ("just words", "(spec)", "mapping"),
])
def test_spec_reader_names_what_is_wrong(client, text, field, words):
    r = client.post("/console/api/spec", content=text, headers={"Authorization": f"Bearer {client.token}"})
    assert r.status_code == 422
    d = r.json()["detail"][0]
    assert d["field"] == field and words in d["message"]


def test_spec_reader_needs_a_token_and_a_small_body(client):
    assert client.post("/console/api/spec", content="type: train").status_code == 401
    big = "a: " + "x" * (2 * 1024 * 1024)
    r = client.post("/console/api/spec", content=big, headers={"Authorization": f"Bearer {client.token}"})
    assert r.status_code == 413
