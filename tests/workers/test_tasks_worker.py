"""Real Celery worker processes running real (tiny) training jobs on the NC scene, end to end:
embedded (SQLite store + SQLAlchemy/SQLite broker) and production-like (PostgreSQL + Redis).
Cancel of a running job; SIGKILL of a worker (or of its pool process) mid-job, then resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from service.store import tokens
from service.store.db import session_scope
from service.store.tables import WorkerRecord

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("GEOADAPT_TEST_REDIS_URL", "redis://127.0.0.1:6379")
#: one Redis database per Backend: a worker of another test's store must not take its messages
_REDIS_DBS = iter(range(10, 16))


def _redis_or_skip() -> str:
    import redis

    url = f"{REDIS_URL.rstrip('/')}/{next(_REDIS_DBS)}"
    try:
        r = redis.Redis.from_url(url, socket_connect_timeout=2)
        r.ping()
    except redis.RedisError as e:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {e}")
    r.flushdb()  # a test database of its own: no messages left from earlier runs
    return url


class Backend:
    """Settings for the API in this process + a matching environment for worker processes."""

    def __init__(self, kind: str, root: Path, nc_dir: Path, database_url: str | None = None,
                 worker_env: dict | None = None):
        """``database_url``: the PostgreSQL store of a "redis" backend (tests/conftest.py's schema fixtures);
        ``worker_env``: more GEOADAPT_* settings for the workers."""
        self.kind, self.root = kind, root
        extra = {}
        if kind == "redis":
            broker = _redis_or_skip()
            extra = {"database_url": database_url, "broker_url": broker}
        self.settings = Settings(data_dir=root / "state", allowed_roots=[nc_dir], heartbeat_interval_s=1.0,
                                 rate_limit_per_minute=0, **extra)
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                    "GEOADAPT_DATA_DIR": str(self.settings.data_dir),
                    "GEOADAPT_DATABASE_URL": self.settings.database_url,
                    "GEOADAPT_BROKER_URL": self.settings.broker_url,
                    "GEOADAPT_ALLOWED_ROOTS": str(nc_dir), "GEOADAPT_HEARTBEAT_INTERVAL_S": "1", **(worker_env or {})}
        self.app = create_app(self.settings)
        self.client = TestClient(self.app)
        with session_scope(self.app.state.sessions) as s:
            _, plain = tokens.create_token(s, name="test")
        self.auth = {"Authorization": f"Bearer {plain}"}
        self.workers: list[subprocess.Popen] = []

    def start_worker(self, pool: str = "prefork") -> subprocess.Popen:
        name = f"w{uuid.uuid4().hex[:6]}@%h"
        log = open(self.root / f"worker-{len(self.workers)}.log", "wb")
        p = subprocess.Popen(
            [sys.executable, "-m", "cli", "worker", "--pool", pool, "--concurrency", "1",
             "--loglevel", "info", "--hostname", name],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        p.node = name.split("@")[0]
        self.workers.append(p)
        wait_for(lambda: self._ready(p), 60, "worker ready", self)
        return p

    def _ready(self, p) -> bool:
        if p.poll() is not None:
            raise AssertionError(f"worker exited with {p.returncode}\n{self.logs()}")
        with self.app.state.sessions() as s:
            return any(w.name.startswith(p.node + "@") and w.pid == p.pid and not w.stopped
                       for w in s.query(WorkerRecord))

    def logs(self) -> str:
        return "\n".join(f"--- {f.name}\n" + f.read_text(errors="replace")[-3000:]
                         for f in sorted(self.root.glob("worker-*.log")))

    def submit(self, spec: dict, key: str | None = None) -> str:
        h = {**self.auth, **({"Idempotency-Key": key} if key else {})}
        r = self.client.post("/v1/jobs", json=spec, headers=h)
        assert r.status_code in (200, 201), r.text
        return r.json()["id"]

    def job(self, jid: str) -> dict:
        return self.client.get(f"/v1/jobs/{jid}", headers=self.auth).json()

    def close(self) -> None:
        for p in self.workers:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        self.client.close()
        self.app.state.engine.dispose()


def wait_for(pred, timeout: float, what: str, backend: Backend | None = None, every: float = 0.3):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v:
            if os.environ.get("GA_DEBUG"):
                print(f"[{time.monotonic() - t0:6.2f}s] {what}", flush=True)
            return v
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}\n{backend.logs() if backend else ''}")


def nc_spec(nc_bands, nc_data, nc_classes, **params) -> dict:
    return {
        "type": "train",
        "method": "source-only",
        "model": "segformer-tiny",
        "classes": [json.loads(c.model_dump_json()) for c in nc_classes],
        "source": {"scenes": [{"bands": [str(p) for p in nc_bands], "labels": str(nc_data["strata"])}],
                   "region": {"columns": [0.0, 0.5]}},
        "params": {"batch_size": 2, "crop": 32, "seed": 0, **params},
    }


@pytest.fixture(scope="module", params=["embedded", "redis"])
def backend(request, tmp_path_factory, nc_data):
    db = request.getfixturevalue("pg_module_schema_url") if request.param == "redis" else None
    b = Backend(request.param, tmp_path_factory.mktemp(request.param), Path(nc_data["strata"]).parent, db)
    b.start_worker()
    yield b
    b.close()


def _final(b: Backend, jid: str, timeout: float = 90) -> dict:
    seen = set()

    def done():
        j = b.job(jid)
        seen.add(j["progress"])
        return j if j["status"] in ("successful", "failed", "dismissed") else None

    j = wait_for(done, timeout, f"job {jid} to finish", b, every=0.2)
    j["_progress_seen"] = seen
    return j


def test_train_job_end_to_end(backend, nc_bands, nc_data, nc_classes):
    spec = nc_spec(nc_bands, nc_data, nc_classes, iterations=30)
    jid = backend.submit(spec, key="e2e")
    assert backend.submit(spec, key="e2e") == jid  # idempotent while it runs
    j = _final(backend, jid)
    assert j["status"] == "successful", (j, backend.logs())
    assert j["progress"] == 100 and j["done"] == j["total"] == 30 and j["attempts"] == 1
    assert len(j["_progress_seen"]) >= 2
    res = backend.client.get(f"/v1/jobs/{jid}/results", headers=backend.auth).json()
    assert res["bundle"]["metadata"]["band_count"] == 6
    assert res["metrics"]["training"]["iterations"] == 30
    models = backend.client.get("/v1/models", headers=backend.auth).json()
    assert jid in [m["id"] for m in models["models"]]
    assert backend.client.get("/health").json()["workers"]["ok"]
    # a job that succeeded never resumes: its checkpoints are gone, its bundle and results stay
    out = backend.settings.job_dir(jid) / "output"
    assert not (out / "checkpoints").exists() and list(out.rglob("*.pth")) == [out / "bundle" / "weights.pth"]
    assert (out / "metrics.json").is_file() and _record(backend, jid).checkpoint_path is None


def test_keep_checkpoints_setting_keeps_them_after_success(tmp_path, nc_bands, nc_data, nc_classes):
    b = Backend("embedded", tmp_path, Path(nc_data["strata"]).parent, worker_env={"GEOADAPT_KEEP_CHECKPOINTS": "1"})
    try:
        b.start_worker()
        jid = b.submit(nc_spec(nc_bands, nc_data, nc_classes, iterations=4))
        assert _final(b, jid)["status"] == "successful", b.logs()
        ckpt = b.settings.job_dir(jid) / "output" / "checkpoints"
        assert (ckpt / "last.pth").is_file() and _record(b, jid).checkpoint_path == str(ckpt / "last.pth")
    finally:
        b.close()


def _record(b: Backend, jid: str):
    with b.app.state.sessions() as s:
        from service.store.tables import Job

        return s.get(Job, uuid.UUID(jid))


def test_adabn_job_from_a_model_id_end_to_end(backend, nc_bands, nc_data, nc_classes):
    source = backend.submit(nc_spec(nc_bands, nc_data, nc_classes, iterations=5))
    assert _final(backend, source)["status"] == "successful", backend.logs()
    bands = [str(p) for p in nc_bands]
    spec = {"type": "adapt", "method": "adabn", "bundle": source,  # the model id of the train job
            "classes": [json.loads(c.model_dump_json()) for c in nc_classes],
            "target": {"scenes": [{"bands": bands}], "region": {"columns": [0.5, 1.0]}},
            "validation": {"scenes": [{"bands": bands, "labels": str(nc_data["strata"])}],
                           "region": {"columns": [0.75, 1.0]}},
            "params": {"batches": 6, "batch_size": 2, "crop": 32}}
    jid = backend.submit(spec)
    j = _final(backend, jid)
    assert j["status"] == "successful", (j, backend.logs())
    assert j["progress"] == 100 and len(j["_progress_seen"]) >= 2
    assert j["spec"]["bundle"] == f"jobs/{source}/output"  # the public form of the model's folder
    res = backend.client.get(f"/v1/jobs/{jid}/results", headers=backend.auth).json()
    meta = res["bundle"]["metadata"]
    assert meta["method"] == "adabn" and meta["provenance"]["source_model"]["method"] == "source-only"
    assert meta["stats"]["target"] == meta["stats"]["source"]
    assert res["metrics"]["adabn"]["batches"] == 6 and res["metrics"]["adabn"]["crop"] == 32
    assert res["metrics"]["validation"]["miou"] is not None and res["metrics"]["source_only"]["miou"] is not None
    assert {p["kind"] for p in res["predictions"]} == {"classes", "probabilities"}
    models = backend.client.get("/v1/models", headers=backend.auth).json()
    assert jid in [m["id"] for m in models["models"]]  # an adapted model like the others: tiles, predict jobs


def test_cancel_running_job_stops_it_with_a_checkpoint(backend, nc_bands, nc_data, nc_classes):
    jid = backend.submit(nc_spec(nc_bands, nc_data, nc_classes, iterations=20000))
    wait_for(lambda: (backend.job(jid).get("done") or 0) >= 5, 60, "training to start", backend)
    r = backend.client.delete(f"/v1/jobs/{jid}", headers=backend.auth)
    assert r.status_code == 200 and r.json()["cancel_requested"]
    j = _final(backend, jid, timeout=30)
    assert j["status"] == "dismissed" and j["done"] < 20000
    assert j["message"] == "dismissed on request; the last checkpoint is kept"  # the API's word for it
    ckpt = Path(backend.settings.job_dir(jid)) / "output" / "checkpoints"
    assert any(ckpt.glob("*.pth")), "a cancelled job keeps a checkpoint to resume from"


def test_an_override_nothing_reads_is_refused_at_submit_or_fails_the_job_naming_it(backend, nc_bands, nc_data,
                                                                                   nc_classes):
    spec = nc_spec(nc_bands, nc_data, nc_classes, iterations=20000)
    spec["model"] = {"config": "segformer-tiny", "overrides": {"model.backbone.embed_dim": 32}}  # embed_dims
    expected = "model.overrides.model.backbone.embed_dim: no part of the model reads 'model.backbone.embed_dim'"
    # the worker published what it judges overrides with: the API refuses at submit
    catalogue = backend.settings.override_catalogue
    assert catalogue.is_file()
    r = backend.client.post("/v1/jobs", json=spec, headers=backend.auth)
    assert r.status_code == 422 and r.json()["type"] == "invalid_config", r.text
    assert r.json()["detail"][0]["field"] == "model.overrides.model.backbone.embed_dim"
    assert "embed_dims" in r.json()["detail"][0]["message"]
    # without it (an API whose workers have not started yet), the job fails when it starts, before training
    saved = catalogue.read_bytes()
    catalogue.unlink()
    try:
        jid = backend.submit(spec)
        j = _final(backend, jid, timeout=60)
    finally:
        catalogue.write_bytes(saved)
    assert j["status"] == "failed" and j["error"]["type"] == "invalid_config", j
    assert j["error"]["message"].startswith(expected) and "embed_dims" in j["error"]["message"], j
    assert not j["done"] and not (Path(backend.settings.job_dir(jid)) / "output" / "bundle").exists()


def test_dataset_statistics_computed_on_the_cpu_queue(backend, nc_bands, nc_data):
    r = backend.client.post("/v1/datasets", headers=backend.auth, json={
        "name": "nc", "bands": [str(p) for p in nc_bands], "labels": str(nc_data["strata"])})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["stats"]["status"] == "pending" and ds["report"]["bands"] == 6

    st = wait_for(lambda: _finished_stats(backend, ds["id"]), 60, "dataset statistics", backend)
    assert st["status"] == "ok" and len(st["mean"]) == 6 and st["count"] > 0
    assert all(s > 0 for s in st["std"])


def _finished_stats(b: Backend, dataset_id: str) -> dict | None:
    """The dataset's statistics once done or failed (pending, then computing before); which process computed them
    is never shown."""
    st = b.client.get(f"/v1/datasets/{dataset_id}", headers=b.auth).json()["stats"]
    assert "worker" not in st
    return st if st["status"] in ("ok", "failed") else None


def _kill_mid_job(b: Backend, jid: str) -> None:
    """Wait until the running job has recorded a checkpoint.

    Not "and its progress is past iteration N": progress is written at most once a second, and on a
    quiet machine the job below trains 150 iterations in about three seconds, so a progress-based
    condition could miss the whole run (it did, in two CI runs). The checkpoint record is not throttled.
    """
    def ready():
        j = b.job(jid)
        if j["status"] in ("successful", "failed", "dismissed"):
            raise AssertionError(f"the job ended ({j['status']}) before a checkpoint was seen; make it longer")
        return j if j["status"] == "running" and _ckpt(b, jid) else None

    # generous: on a loaded 2-core machine the first checkpoints of a real NC job can take a minute
    wait_for(ready, 180, "a checkpoint", b, every=0.05)


def _ckpt(b: Backend, jid: str) -> bool:
    with b.app.state.sessions() as s:
        from service.store.tables import Job

        return s.get(Job, uuid.UUID(jid)).checkpoint_path is not None


def test_a_worker_stopped_as_serve_stops_it_records_its_stop_and_exits_cleanly(tmp_path, nc_data):
    """SIGQUIT, as `serve` stops its workers: Celery's shutdown runs to its end (the worker's record says stopped,
    the log holds its last words) before the process exits, with status 0, past the interpreter's teardown."""
    b = Backend("embedded", tmp_path, Path(nc_data["strata"]).parent)
    try:
        p = b.start_worker()
        p.send_signal(signal.SIGQUIT)
        assert p.wait(60) == 0
        with b.app.state.sessions() as s:
            assert [w.stopped for w in s.query(WorkerRecord) if w.name.startswith(p.node + "@")] == [True]
        assert "Cold shutdown" in b.logs()
    finally:
        b.close()


@pytest.mark.slow
def test_sigkill_of_the_worker_then_the_job_resumes_on_a_new_one(tmp_path, nc_bands, nc_data, nc_classes,
                                                                 pg_schema_url):
    b = Backend("redis", tmp_path, Path(nc_data["strata"]).parent, pg_schema_url)
    try:
        w = b.start_worker()
        jid = b.submit(nc_spec(nc_bands, nc_data, nc_classes, iterations=400, checkpoint_interval=10))
        _kill_mid_job(b, jid)
        os.killpg(w.pid, signal.SIGKILL)  # the worker and its pool process, no goodbye
        w.wait(10)
        assert b.job(jid)["status"] == "running"
        b.start_worker()  # finds the orphan (its process is gone) and sends it again
        j = _final(b, jid, timeout=300)
        assert j["status"] == "successful", (j, b.logs())
        assert j["attempts"] == 2
        run = b.client.get(f"/v1/jobs/{jid}/results", headers=b.auth).json()
        summary = _results_row(b, jid)["run"]
        assert summary["attempt"] == 2 and summary["resumed_from_iteration"] >= 10, summary
        assert run["metrics"]["training"]["iterations"] == 400
    finally:
        b.close()


def _results_row(b: Backend, jid: str) -> dict:
    with b.app.state.sessions() as s:
        from service.store.tables import Job

        return s.get(Job, uuid.UUID(jid)).results


@pytest.mark.slow
def test_sigkill_of_the_pool_process_requeues_and_resumes(tmp_path, nc_bands, nc_data, nc_classes):
    """Embedded transport: the pool child dies (e.g. the OOM killer); reject_on_worker_lost requeues."""
    b = Backend("embedded", tmp_path, Path(nc_data["strata"]).parent)
    try:
        w = b.start_worker()
        jid = b.submit(nc_spec(nc_bands, nc_data, nc_classes, iterations=400, checkpoint_interval=10))
        _kill_mid_job(b, jid)
        with b.app.state.sessions() as s:
            from service.store.tables import Job

            child_pid = int(s.get(Job, uuid.UUID(jid)).worker.rsplit(":", 2)[1])
        assert child_pid != w.pid
        os.kill(child_pid, signal.SIGKILL)
        j = _final(b, jid, timeout=300)
        assert j["status"] == "successful", (j, b.logs())
        summary = _results_row(b, jid)["run"]
        assert summary["attempt"] == 2 and summary["resumed_from_iteration"] >= 10, summary
        assert w.poll() is None  # the same worker carried on
    finally:
        b.close()


#: a worker's main process as it dies between taking a job's message and handing it to a pool process: the message
#: taken (unacknowledged), then SIGKILL, which leaves the SQL transport no chance to put it back
_TAKE_AND_HANG = """
import sys, time
from kombu import Connection
from workers.embedded_broker import worker_broker
conf = worker_broker(sys.argv[1])
with Connection(conf["broker_url"], transport=conf["broker_transport"]) as conn:
    message = conn.SimpleQueue(sys.argv[2]).get(timeout=30)
    print("taken", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_dataset_statistics_whose_message_died_with_a_worker_are_computed(tmp_path, nc_bands, nc_data):
    """Embedded transport: as for a job below, statistics whose message was taken by a worker killed before it
    began them would stay pending for good; the next worker's orphan sweep sends them again."""
    from core.task_names import CPU_QUEUE, DATASET_STATS
    from workers.embedded_broker import task_messages

    b = Backend("embedded", tmp_path, Path(nc_data["strata"]).parent)
    try:
        r = b.client.post("/v1/datasets", headers=b.auth, json={"name": "nc", "bands": [str(p) for p in nc_bands]})
        assert r.status_code == 201, r.text
        dataset_id = r.json()["id"]
        taker = subprocess.Popen([sys.executable, "-c", _TAKE_AND_HANG, b.settings.broker_url, CPU_QUEUE], env=b.env,
                                 stdout=subprocess.PIPE, text=True)
        assert taker.stdout.readline().strip() == "taken"
        taker.kill()
        taker.wait(10)
        messages = task_messages(b.settings.broker_url, DATASET_STATS)
        assert dataset_id in messages.taken and dataset_id not in messages.waiting
        b.start_worker()
        st = wait_for(lambda: _finished_stats(b, dataset_id), 90, "dataset statistics", b)
        assert st["status"] == "ok" and len(st["mean"]) == 6
        assert f"statistics of dataset {dataset_id} was taken from the queue by a worker that died" in b.logs()
    finally:
        b.close()


@pytest.mark.slow
def test_a_job_whose_message_died_with_a_worker_before_it_started_runs(tmp_path, nc_bands, nc_data, nc_classes):
    """Embedded transport: a job's message taken by a worker killed before the job started stays taken for good
    (SQLite has no visibility timeout), so the job would wait forever; the next worker's orphan sweep sends it
    again and it runs."""
    from workers.embedded_broker import task_messages

    b = Backend("embedded", tmp_path, Path(nc_data["strata"]).parent)
    try:
        jid = b.submit(nc_spec(nc_bands, nc_data, nc_classes, iterations=5))
        with b.app.state.sessions() as s:
            from service.store.tables import Job

            queue = s.get(Job, uuid.UUID(jid)).queue
        taker = subprocess.Popen([sys.executable, "-c", _TAKE_AND_HANG, b.settings.broker_url, queue], env=b.env,
                                 stdout=subprocess.PIPE, text=True)
        assert taker.stdout.readline().strip() == "taken"
        taker.kill()
        taker.wait(10)
        messages = task_messages(b.settings.broker_url)
        assert jid in messages.taken and jid not in messages.waiting
        assert b.job(jid)["status"] == "accepted"
        b.start_worker()
        j = _final(b, jid, timeout=120)
        assert j["status"] == "successful", (j, b.logs())
        assert j["attempts"] == 1  # it had never started
        assert "died before starting it; sending it again" in b.logs()
    finally:
        b.close()
