"""OGC API - Processes under /ogcapi, through OWSLib's client (owslib.ogcapi.processes.Processes) over real
HTTP: list, describe, execute asynchronously, poll, fetch results; a synchronous request refused; another
token sees nothing; errors as OGC exceptions. The last test runs real jobs through `geoadapt serve`."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from core.jobspec import JobSpec
from service.store import tokens
from service.store.db import session_scope
from service.store.tables import FAILED, RUNNING, Job

from tests.helpers import memory_app, served_in_thread, train_spec, wait_until_workers_ok, write_tiny_scene

owslib_ogcapi = pytest.importorskip("owslib.ogcapi", reason="OWSLib is part of the test extra")
from owslib.ogcapi.processes import Processes  # noqa: E402

EXC = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0/"
PROCESSES = ["adapt-st-dasegnet", "adapt-feature-regression", "adapt-adabn", "adapt-label-shift", "adapt-semi",
             "train-source-only",
             "predict", "evaluate", "suggest", "consensus", "pretrain-simclr", "pretrain-siameseim", "pretrain-croco"]


@pytest.fixture(autouse=True)
def owslib_headers():
    """OWSLib keeps one module-level header dict that every client updates (token, Prefer): each test starts
    from the clean one."""
    saved = dict(owslib_ogcapi.REQUEST_HEADERS)
    yield
    owslib_ogcapi.REQUEST_HEADERS.clear()
    owslib_ogcapi.REQUEST_HEADERS.update(saved)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """create_app under uvicorn (no worker: jobs stay accepted), a tiny scene under the allowed root, tokens A, B."""
    tmp = tmp_path_factory.mktemp("ogc")
    app, root, img, lab = memory_app(tmp)
    with session_scope(app.state.sessions) as s:
        _, a = tokens.create_token(s, name="a")
        _, b = tokens.create_token(s, name="b")
    with served_in_thread(app) as port:
        base = f"http://127.0.0.1:{port}"
        yield dict(base=base, app=app, a={"Authorization": f"Bearer {a}"}, b={"Authorization": f"Bearer {b}"},
                   inputs={k: v for k, v in train_spec(img, lab).items() if k not in ("type", "method")})


def _client(live, who="a") -> Processes:
    return Processes(f"{live['base']}/ogcapi", headers=live[who])


def _exception(r: httpx.Response, status: int, type_: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == type_ and body["status"] == status and body["title"] and body["detail"], body
    return body


def _set_job(live, job_id: str, **fields) -> None:
    with session_scope(live["app"].state.sessions) as s:
        job = s.get(Job, uuid.UUID(job_id))
        for k, v in fields.items():
            setattr(job, k, v)


def test_owslib_reads_the_landing_page_conformance_and_one_process_per_type_and_method(live):
    p = _client(live)
    rels = {link["rel"].removeprefix("http://www.opengis.net/def/rel/ogc/1.0/") for link in p.links}
    assert {"service-desc", "service-doc", "processes", "conformance", "job-list"} <= rels
    assert "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/core" in p.conformance()["conformsTo"]
    listed = p.processes()
    assert [x["id"] for x in listed] == PROCESSES
    assert all(x["jobControlOptions"] == ["async-execute"] and x["title"] and x["version"] for x in listed)

    desc = p.process("adapt-st-dasegnet")
    spec_fields = set(JobSpec.model_fields) - {"type", "method", "output"}
    assert set(desc["inputs"]) == spec_fields
    assert desc["inputs"]["classes"]["minOccurs"] == 1 and desc["inputs"]["bundle"]["minOccurs"] == 0
    # each input's schema stands alone: the spec's definitions inlined, as deep as they nest
    assert "$ref" not in json.dumps(desc["inputs"])
    source = desc["inputs"]["source"]["schema"]["anyOf"][0]
    assert {"image", "bands", "labels"} <= set(source["properties"]["scenes"]["items"]["properties"])
    assert desc["inputs"]["params"]["schema"]["properties"]["iterations"]["type"] == "integer"
    assert {"bundle", "metrics", "classes"} <= set(desc["outputs"])
    assert "bundle" not in p.process("predict")["outputs"]
    assert set(p.process("pretrain-croco")["outputs"]) == {"pretrained", "metrics"}


def test_execute_async_then_poll_as_owner_and_nothing_for_another_token(live):
    p = _client(live)
    # a qualified value is its value; an output folder is the server's choice, as in /v1
    inputs = {**live["inputs"], "classes": {"value": live["inputs"]["classes"], "mediaType": "application/json"},
              "output": "/somewhere/else"}
    status = p.execute("train-source-only", inputs, async_=True)
    location = p.response_headers["Location"]
    jid = status["jobID"]
    assert location.endswith(f"/ogcapi/jobs/{jid}")
    assert status["status"] == "accepted" and status["processID"] == "train-source-only"
    assert p.response_headers["Preference-Applied"] == "respond-async"

    polled = httpx.get(location, headers=live["a"]).json()
    assert polled["status"] == "accepted" and polled["progress"] == 0 and polled["created"]
    # one store: the same job in /v1, with the spec as the process id and inputs say
    v1 = httpx.get(f"{live['base']}/v1/jobs/{jid}", headers=live["a"]).json()
    assert (v1["type"], v1["method"]) == ("train", "source-only")
    assert v1["spec"]["classes"][0]["name"] == "a" and v1["spec"]["output"] == f"jobs/{jid}/output"
    assert jid in [j["jobID"] for j in httpx.get(f"{live['base']}/ogcapi/jobs", headers=live["a"]).json()["jobs"]]
    _exception(httpx.get(f"{location}/results", headers=live["a"]), 404, EXC + "result-not-ready")

    # token B: no such job, whatever the route; not in its list either
    for path in (location, f"{location}/results"):
        _exception(httpx.get(path, headers=live["b"]), 404, EXC + "no-such-job")
    assert jid not in json.dumps(httpx.get(f"{live['base']}/ogcapi/jobs", headers=live["b"]).json())


def test_synchronous_execution_is_refused_with_an_ogc_exception_and_no_job(live):
    p = _client(live)
    before = httpx.get(f"{live['base']}/ogcapi/jobs", headers=live["a"]).json()["numberMatched"]
    with pytest.raises(RuntimeError) as refused:
        p.execute("train-source-only", live["inputs"], async_=False)  # OWSLib sends Prefer: respond-sync
    body = json.loads(str(refused.value))
    assert body["status"] == 400 and body["type"] == "sync_execution_not_supported"
    assert "respond-async" in body["detail"]
    r = httpx.post(f"{live['base']}/ogcapi/processes/train-source-only/execution",
                   json={"inputs": live["inputs"]}, headers={**live["a"], "Prefer": "wait=10"})
    _exception(r, 400, "sync_execution_not_supported")
    assert httpx.get(f"{live['base']}/ogcapi/jobs", headers=live["a"]).json()["numberMatched"] == before
    # no preference at all: the standard's default mode for an asynchronous-only process
    r = httpx.post(f"{live['base']}/ogcapi/processes/train-source-only/execution", json={"inputs": live["inputs"]},
                   headers=live["a"])
    assert r.status_code == 201 and r.json()["status"] == "accepted", r.text


def test_errors_are_ogc_exceptions_with_the_right_status(live):
    base, a = live["base"], live["a"]
    ex = f"{base}/ogcapi/processes/train-source-only/execution"
    _exception(httpx.get(f"{base}/ogcapi/processes/nope", headers=a), 404, EXC + "no-such-process")
    _exception(httpx.post(f"{base}/ogcapi/processes/nope/execution", json={"inputs": {}}, headers=a), 404,
               EXC + "no-such-process")
    for job in ("not-a-uuid", str(uuid.uuid4())):
        _exception(httpx.get(f"{base}/ogcapi/jobs/{job}", headers=a), 404, EXC + "no-such-job")
    r = httpx.get(f"{base}/ogcapi/jobs")
    _exception(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"] == "Bearer"
    _exception(httpx.get(f"{base}/ogcapi/jobs?limit=0", headers=a), 400, EXC + "invalid-query-parameter-value")
    # a spec the job rules refuse: 400 naming the field, as /v1 names it (there with 422)
    no_labels = {**live["inputs"], "source": {"scenes": [{"image": live["inputs"]["source"]["scenes"][0]["image"]}]}}
    body = _exception(httpx.post(ex, json={"inputs": no_labels}, headers=a), 400, "invalid_spec")
    assert body["problems"][0]["field"] == "source.scenes.0.labels"
    body = _exception(httpx.post(ex, json={"inputs": {**live["inputs"], "type": "adapt"}}, headers=a), 400,
                      "invalid_spec")
    assert body["problems"][0]["field"] == "inputs.type"
    _exception(httpx.post(ex, json={"inputs": live["inputs"], "subscriber": {}}, headers=a), 400, "invalid_spec")
    _exception(httpx.post(ex, content=b"[1]", headers={**a, "Content-Type": "application/json"}), 400,
               "invalid_request")


def test_results_of_a_job_that_did_not_succeed(live):
    p = _client(live)
    jid = p.execute("train-source-only", live["inputs"], async_=True)["jobID"]
    results = f"{live['base']}/ogcapi/jobs/{jid}/results"
    _set_job(live, jid, status=RUNNING, progress=42.4)
    s = httpx.get(f"{live['base']}/ogcapi/jobs/{jid}", headers=live["a"]).json()
    assert (s["status"], s["progress"]) == ("running", 42)
    _exception(httpx.get(results, headers=live["a"]), 404, EXC + "result-not-ready")
    # a failure on the input is the client's (400); one of the worker's is the server's (500)
    _set_job(live, jid, status=FAILED, error_type="label_values_outside_classes", error_message="label 9 is no class")
    body = _exception(httpx.get(results, headers=live["a"]), 400, "label_values_outside_classes")
    assert "label 9" in body["detail"]
    assert "label 9" in httpx.get(f"{live['base']}/ogcapi/jobs/{jid}", headers=live["a"]).json()["message"]
    _set_job(live, jid, error_type="worker_lost", error_message="the worker died")
    _exception(httpx.get(results, headers=live["a"]), 500, "worker_lost")
    _set_job(live, jid, status="dismissed")
    _exception(httpx.get(results, headers=live["a"]), 404, EXC + "result-not-available")


# ---- real jobs: `geoadapt serve` runs the API and a worker ------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    port = _free_port()
    env = {**os.environ, "GEOADAPT_DATA_DIR": str(tmp_path / "state"), "GEOADAPT_ALLOWED_ROOTS": str(tmp_path / "root"),
           "GEOADAPT_HEARTBEAT_INTERVAL_S": "1", "OMP_NUM_THREADS": "1"}
    made = subprocess.run([sys.executable, "-m", "cli", "token", "create", "--name", "ogc"], env=env,
                          capture_output=True, text=True, check=True)
    token = made.stdout.strip().splitlines()[-1].split()[-1]
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    wait_until_workers_ok(base, proc, tmp_path / "serve.log")
    yield base, {"Authorization": f"Bearer {token}"}
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _run(p: Processes, process: str, inputs: dict, headers: dict) -> tuple[str, dict]:
    """Execute asynchronously, poll the Location until the job ends; (job id, final statusInfo)."""
    status = p.execute(process, inputs, async_=True)
    location = p.response_headers["Location"]
    for _ in range(600):
        status = httpx.get(location, headers=headers).json()
        if status["status"] in ("successful", "failed", "dismissed"):
            break
        time.sleep(0.5)
    return status["jobID"], status


@pytest.mark.slow
@pytest.mark.integration
def test_owslib_trains_then_predicts_with_that_model_through_a_real_worker(served, tmp_path):
    base, auth = served
    img, lab = write_tiny_scene(tmp_path / "root" / "scene")
    inputs = {k: v for k, v in train_spec(img, lab).items() if k not in ("type", "method")}
    p = Processes(f"{base}/ogcapi", headers=auth)

    jid, status = _run(p, "train-source-only", inputs, auth)
    assert status["status"] == "successful", status
    assert status["progress"] == 100 and status["finished"]
    assert any(link["rel"].endswith("/results") for link in status["links"])
    results = httpx.get(f"{base}/ogcapi/jobs/{jid}/results", headers=auth).json()
    assert results["bundle"]["href"] == f"{base}/v1/models/{jid}"
    assert httpx.get(results["bundle"]["href"], headers=auth).json()["classes"][0]["name"] == "a"
    assert isinstance(results["metrics"], dict)

    # the model by its id, as in /v1; the class map comes back as a COG link that downloads
    predict = {"classes": inputs["classes"], "bundle": jid, "target": {"scenes": [{"image": str(img)}]}}
    pid, status = _run(p, "predict", predict, auth)
    assert status["status"] == "successful" and status["processID"] == "predict", status
    results = httpx.get(f"{base}/ogcapi/jobs/{pid}/results", headers=auth).json()
    assert "bundle" not in results and len(results["classes"]) == 1 and len(results["probabilities"]) == 1
    cog = results["classes"][0]
    assert cog["type"].startswith("image/tiff")
    data = httpx.get(cog["href"], headers=auth).content
    assert data[:4] in (b"II*\x00", b"MM\x00*") and len(data) > 200
