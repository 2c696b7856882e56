"""No secrets in logs, no file contents in errors: a live `geoadapt serve` at debug log level with a
password in its store URL and in its broker URL, driven with good, bad and revoked tokens and with
files whose contents are a marker; afterwards neither its log nor any answer holds a secret or a marker."""
from __future__ import annotations

import json
import uuid

import httpx
import pytest

from benchmarks.common import free_port
from benchmarks.security import prepare, start_server, stop_server

DB_PASSWORD = "db-pw-" + uuid.uuid4().hex[:12]
BROKER_PASSWORD = "broker-pw-" + uuid.uuid4().hex[:12]
MARKER = "FILE-CONTENT-" + uuid.uuid4().hex[:12]


@pytest.fixture
def served(tmp_path, request):
    """A served world; the store is PostgreSQL (password in the URL; trust auth ignores it) when there is one."""
    world = prepare(tmp_path / "w", clients=2)
    env = {"GEOADAPT_BROKER_URL": f"redis://:{BROKER_PASSWORD}@127.0.0.1:1/0"}  # nothing listens: submits get 503
    try:
        url = request.getfixturevalue("pg_schema_url")  # skips when PostgreSQL is absent
        env["GEOADAPT_DATABASE_URL"] = url.replace("postgres@", f"postgres:{DB_PASSWORD}@", 1)
        assert DB_PASSWORD in env["GEOADAPT_DATABASE_URL"]
    except pytest.skip.Exception:
        pass  # SQLite: no store password to leak; the rest still holds
    if "GEOADAPT_DATABASE_URL" in env:  # the world's tokens and objects live in the SQLite store it was made in
        _copy_world_to(world, env["GEOADAPT_DATABASE_URL"])
    port = free_port()
    log = tmp_path / "serve.log"
    proc = start_server(world, port, log=log, env=env, log_level="debug")
    try:
        yield world, f"http://127.0.0.1:{port}", log, env
    finally:
        stop_server(proc)


def _copy_world_to(world, url: str) -> None:
    """Tokens, jobs and datasets of the prepared SQLite store, copied into the PostgreSQL store."""
    from sqlalchemy import select

    from service.store.db import init_db, make_engine, session_factory, session_scope
    from service.store.tables import Dataset, Job, Token

    src = session_factory(make_engine(f"sqlite:///{world.data_dir / 'geoadapt.db'}"))
    engine = make_engine(url)
    init_db(engine)
    with src() as s, session_scope(session_factory(engine)) as d:
        for model in (Token, Job, Dataset):
            for row in s.scalars(select(model)):
                s.expunge(row)
                d.merge(row)
    engine.dispose()


def test_no_secret_in_logs_and_no_file_contents_in_errors(served, tmp_path):
    world, base, log, env = served
    good = world.tokens[0]
    fake = "ga_deadbeef_" + "S3cretPart" * 4
    root = world.root
    # files whose contents must never come back: not images, broken GeoJSON, an AOI and a bundle manifest
    (root / "notes.tif").write_text(f"{MARKER}\n" * 20)
    (root / "labels.geojson").write_text('{"type": "FeatureCollection", "features": [' + MARKER)
    (root / "aoi.geojson").write_text(json.dumps({"type": MARKER}))
    (root / "bundle").mkdir()
    (root / "bundle" / "bundle.json").write_text(MARKER)
    outside = tmp_path / "outside.tif"
    outside.write_text(MARKER)
    h = {"Authorization": f"Bearer {good}"}
    spec = world.spec()
    answers = []
    with httpx.Client(base_url=base, timeout=30) as c:
        answers.append(c.get("/health"))
        assert answers[-1].status_code == 503  # the broker is down: said so, with nothing about where it is
        answers.append(c.get("/v1/jobs", headers=h))
        assert answers[-1].status_code == 200
        for bad in (fake, good + "x", "nonsense"):
            answers.append(c.get("/v1/jobs", headers={"Authorization": f"Bearer {bad}"}))
            assert answers[-1].status_code == 401
        answers.append(c.post("/v1/jobs", json=spec, headers=h))
        assert answers[-1].status_code == 503 and "retry-after" in answers[-1].headers, answers[-1].text
        for body in ({**spec, "source": {"scenes": [{"image": str(root / "notes.tif"), "labels": str(world.labels)}]}},
                     {**spec, "source": {"scenes": [{"image": str(world.image), "labels": str(root / "labels.geojson")}]}},
                     {**spec, "source": {"scenes": [{"image": str(world.image), "labels": str(world.labels)}],
                                         "region": {"aoi": str(root / "aoi.geojson")}}},
                     {"type": "predict", "classes": spec["classes"], "bundle": str(root / "bundle"),
                      "target": {"scenes": [{"image": str(world.image)}]}},
                     {**spec, "source": {"scenes": [{"image": str(outside), "labels": str(world.labels)}]}}):
            answers.append(c.post("/v1/jobs", json=body, headers=h))
            assert answers[-1].status_code == 422, answers[-1].text
        for body in ({"name": "n", "image": str(root / "notes.tif")}, {"name": "n", "image": str(outside)},
                     {"name": "n", "image": str(world.image), "labels": str(root / "labels.geojson")}):
            answers.append(c.post("/v1/datasets", json=body, headers=h))
            assert answers[-1].status_code == 422, answers[-1].text
        answers.append(c.post("/v1/datasets/upload", data={"name": "u"}, files={"image": ("x.tif", MARKER.encode())},
                              headers=h))
        assert answers[-1].status_code == 422
        answers.append(c.get(f"/v1/jobs/{world.job_id}/files/..%2F..%2F..%2Fgeoadapt.db", headers=h))
        answers.append(c.get(f"/v1/jobs/{uuid.uuid4()}", headers=h))
    secrets = [good, good.split("_", 2)[2], fake, "S3cretPart", BROKER_PASSWORD, DB_PASSWORD]
    for r in answers:
        for s in secrets + [MARKER]:
            assert s not in r.text and s not in str(r.headers), (s, r.request.url, r.text[:300])
    text = log.read_text(errors="replace")
    assert "GET /v1/jobs" in text or "/v1/jobs" in text, "the log level is not what the test assumes"
    for s in secrets + [MARKER]:
        assert s not in text, f"{s!r} is in the server log"
    assert "***" in text  # the start-up line names the broker, its password redacted
    if "GEOADAPT_DATABASE_URL" in env:
        assert "postgres:***@" in text
