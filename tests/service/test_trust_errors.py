"""Requests that used to be bare 500s (and dropped the keep-alive connection), over real HTTP: each is now a
4xx naming the field, and an error no handler expects is a JSON 500 whose request id is in the log too.
The connection is checked by sending a second request on the same socket."""
from __future__ import annotations

import http.client
import json
import logging

import pytest

from service.store import tokens
from service.store.db import session_scope

from tests.helpers import memory_app, served_in_thread, train_spec


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """create_app under uvicorn in a thread, with one allowed root holding a tiny scene, and a token."""
    tmp = tmp_path_factory.mktemp("errors")
    app, root, img, lab = memory_app(tmp)

    def unexpected() -> None:
        raise RuntimeError("a bug no handler knows")

    # a route with a bug, first in the table: any route's unexpected exception takes this path
    app.add_api_route("/v1/bug", unexpected, methods=["GET"])
    app.router.routes.insert(0, app.router.routes.pop())
    with session_scope(app.state.sessions) as s:
        _, plain = tokens.create_token(s, name="errors")
    with served_in_thread(app) as port:
        yield dict(port=port, auth={"Authorization": f"Bearer {plain}"}, root=root, img=img, lab=lab, app=app)


def exchange(live, method: str, path: str, body=None, headers=None) -> list[tuple[int, dict, dict]]:
    """The request, then GET /health on the same connection: both answers (status, headers, JSON body).
    http.client never reconnects an open connection, so a server that closed it makes the second fail."""
    conn = http.client.HTTPConnection("127.0.0.1", live["port"], timeout=30)
    out = []
    try:
        for m, p, b, h in ((method, path, body, headers), ("GET", "/health", None, {})):
            data = json.dumps(b) if b is not None else None
            conn.request(m, p, body=data, headers={**live["auth"], "Content-Type": "application/json", **(h or {})})
            r = conn.getresponse()
            raw = r.read()
            out.append((r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(raw) if raw else None))
    finally:
        conn.close()
    return out


def _deep(levels: int):
    value: object = 1
    for _ in range(levels):
        value = {"a": value}
    return value


LONG = "a" * 300  # one path component over Linux's 255-byte limit

# (id, method, path, body builder, header builder, field the answer names, words of its message)
CASES = [
    ("long-component/dataset-image", "POST", "/v1/datasets",
     lambda w: {"name": "x", "image": str(w["root"] / LONG / "x.tif")}, None, "image", ["300 bytes", "limit is 255"]),
    ("long-component/dataset-labels", "POST", "/v1/datasets",
     lambda w: {"name": "x", "image": str(w["img"]), "labels": str(w["root"] / (LONG + ".tif"))}, None, "labels",
     ["304 bytes"]),
    ("long-component/job-image", "POST", "/v1/jobs",
     lambda w: train_spec(w["root"] / LONG / "x.tif", w["lab"]), None, "source.scenes.0.image", ["300 bytes"]),
    ("long-component/job-bundle", "POST", "/v1/jobs",
     lambda w: train_spec(w["img"], w["lab"], bundle=str(w["root"] / LONG)), None, "bundle", ["300 bytes"]),
    ("long-component/job-aoi", "POST", "/v1/jobs",
     lambda w: {**train_spec(w["img"], w["lab"]),
                "source": {"scenes": [{"image": str(w["img"]), "labels": str(w["lab"])}],
                           "region": {"aoi": str(w["root"] / (LONG + ".geojson"))}}},
     None, "source.region.aoi", ["limit is 255"]),
    ("long-component/result-file", "GET", None, None, None, "path", ["no file"]),
    ("overrides-nested-500-deep", "POST", "/v1/jobs",
     lambda w: train_spec(w["img"], w["lab"], model={"config": "segformer-tiny", "overrides": {"x": _deep(500)}}),
     None, "model.overrides.x", ["nested deeper than 64 levels"]),
    ("aoi-nested-500-deep", "POST", "/v1/jobs",
     lambda w: {**train_spec(w["img"], w["lab"]),
                "source": {"scenes": [{"image": str(w["img"]), "labels": str(w["lab"])}],
                           "region": {"aoi": {"type": "Polygon", "coordinates": _deep(500)}}}},
     None, "source.region.aoi", ["nested deeper"]),
    ("empty-idempotency-key", "POST", "/v1/jobs", lambda w: train_spec(w["img"], w["lab"]),
     lambda w: {"Idempotency-Key": ""}, "Idempotency-Key", ["at least 1 character"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_former_500s_are_4xx_naming_the_field_and_keep_the_connection(live, case):
    _, method, path, body, headers, field, words = case
    if path is None:  # a result file whose name is too long, of a job that has begun writing its output
        job = exchange(live, "POST", "/v1/jobs", train_spec(live["img"], live["lab"]))[0][2]
        (live["app"].state.settings.job_dir(job["id"]) / "output").mkdir(parents=True)
        path = f"/v1/jobs/{job['id']}/files/{LONG}.tif"
    tries = 2 if headers else 1  # the empty key's second use met the UNIQUE constraint
    for _ in range(tries):
        (status, _h, answer), (health, _, _) = exchange(live, method, path, body(live) if body else None,
                                                        headers(live) if headers else None)
        assert 400 <= status < 500, (status, answer)
        assert any(d["field"] == field for d in answer["detail"]), answer
        text = " ".join(d["message"] for d in answer["detail"])
        assert all(w in text for w in words), (words, answer)
        assert health == 200


def test_an_unexpected_error_is_a_json_500_with_the_request_id_that_the_log_has(live, caplog):
    with caplog.at_level(logging.ERROR, logger="geoadapt.api"):
        (status, headers, body), (health, health_headers, _) = exchange(live, "GET", "/v1/bug")
    assert status == 500 and body["type"] == "internal_error", body
    rid = body["request_id"]
    assert rid and headers["x-request-id"] == rid and rid in body["detail"][0]["message"]
    assert "RuntimeError" not in json.dumps(body)  # what went wrong stays in the log
    logged = [r for r in caplog.records if rid in r.getMessage()]
    assert logged and logged[0].exc_info and "a bug no handler knows" in str(logged[0].exc_info[1])
    # the connection survived, and every answer carries an id of its own
    assert health == 200 and health_headers["x-request-id"] not in ("", rid)
