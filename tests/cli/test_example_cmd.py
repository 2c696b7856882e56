"""The shipped examples submitted as the README shows: `geoadapt example NAME --json` is the body of
POST /v1/jobs (curl), accepted by a service whose allowed root is the data cache, after the real
input checks on the fetched NC and Olinda scenes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from core.data.examples import EXAMPLES
from core.data.fetch import cache_root
from service.app import create_app
from service.settings import Settings
from service.store import tokens
from service.store.db import session_scope


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_the_example_json_is_a_job_the_service_accepts(name, tmp_path, nc_data):
    out = subprocess.run([sys.executable, "-m", "cli", "example", name, "--json", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    path = tmp_path / f"{name}.json"
    assert out.stdout.strip().splitlines()[-1] == str(path)
    body = json.loads(path.read_text())
    settings = Settings(data_dir=tmp_path / "state", allowed_roots=[(cache_root() / "data").resolve()],
                        broker_url="memory://", rate_limit_per_minute=0)
    app = create_app(settings)
    with TestClient(app) as c, session_scope(app.state.sessions) as s:
        h = {"Authorization": f"Bearer {tokens.create_token(s)[1]}"}
        s.commit()
        r = c.post("/v1/jobs", headers=h, json=body)
        assert r.status_code == 201, r.text
        spec = r.json()["spec"]
    assert spec["method"] == EXAMPLES[name].method
    assert [c["name"] for c in spec["classes"]][:2] == ["developed", "agriculture"]


def test_an_unknown_example_exits_2_naming_the_known_ones():
    r = subprocess.run([sys.executable, "-m", "cli", "example", "nc-to-mars"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "nc-to-olinda" in r.stderr
