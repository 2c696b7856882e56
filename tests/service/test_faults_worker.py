"""Faults while jobs run, on a real Celery worker process over a Redis broker of the test's own (AOF on, a
password, as in production) and the production job store, PostgreSQL (a schema of the test's own): the
worker's job process SIGKILLed mid-prediction, Redis restarted with one job running and one queued, a job
over its time limit, the disk full while a prediction is written. Each job ends successful or failed with a
reason; no job and no result is lost.
(SIGKILL mid-training, of the worker and of its job process: tests/workers/test_tasks_worker.py.)"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient

from core.data.nc import NC_CLASSES
from service.app import create_app
from benchmarks.common import free_port
from service.settings import Settings
from service.store import tokens
from service.store.db import session_scope
from service.store.tables import Job, WorkerRecord
from tests.helpers import fill


pytestmark = [pytest.mark.slow, pytest.mark.integration]

#: the worker's time limit per job; the time-limit test restarts the worker with a short one
SOFT_LIMIT_S = 120
SHORT_LIMIT_S = 10
REDIS_PASSWORD = "redis-pw-" + uuid.uuid4().hex[:10]
FINAL = ("successful", "failed", "dismissed")


class OwnRedis:
    """A redis-server on a free port with AOF in a folder of the test; restartable (not the shared one)."""

    def __init__(self, folder: Path):
        self.exe = shutil.which("redis-server")
        if self.exe is None:
            pytest.skip("redis-server is not installed")
        self.folder, self.port = folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{REDIS_PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), "--appendonly", "yes",
             "--save", "", "--requirepass", REDIS_PASSWORD, "--daemonize", "no", "--logfile", str(self.folder / "log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        r = redis.Redis(port=self.port, password=REDIS_PASSWORD, socket_connect_timeout=1)
        wait_for(lambda: _pings(r), 20, "redis to start")

    def stop(self) -> None:
        """SIGTERM: Redis's own shutdown (the AOF flushed), as `systemctl restart` or a container stop does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)

    def llen(self, queue: str) -> int:
        import redis

        return redis.Redis(port=self.port, password=REDIS_PASSWORD).llen(queue)


def _pings(r) -> bool:
    try:
        return bool(r.ping())
    except Exception:
        return False


def wait_for(pred, timeout: float, what: str, logs=None, every: float = 0.2):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs() if logs else ''}")


def conv_bundle(folder: Path, stats) -> Path:
    """A small real network (ResNet-18 layout, 32 base channels: ~5 s for the mosaic on one core) saved as a
    bundle: random weights, NC classes."""
    import torch

    from models.bundle import save_bundle
    from models.segmentor import build_segmentor

    net = dict(type="Segmentor",
               backbone=dict(type="ResNetV1c", depth=18, in_channels=6, stem_channels=32, base_channels=32,
                             num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1),
                             norm_cfg=dict(type="BN", requires_grad=True)),
               decode_head=dict(type="FCNHead", in_channels=256, in_index=3, channels=16, num_convs=1,
                                concat_input=False, num_classes=len(NC_CLASSES),
                                norm_cfg=dict(type="BN", requires_grad=True), align_corners=False,
                                loss_decode=dict(type="CrossEntropyLoss")))
    torch.manual_seed(0)
    return save_bundle(folder, build_segmentor(net).eval(), {}, NC_CLASSES, {"source": stats}, inference=net)


class Rig:
    """The API in this process, one worker process, a Redis of its own, a PostgreSQL job store; jobs folder on a
    tmpfs when possible."""

    def __init__(self, root: Path, nc_dir: Path, database_url: str):
        self.root = root
        self.redis = OwnRedis(root / "redis")
        self.redis.start()
        self.data = root / "data"
        self.settings = Settings(data_dir=root / "state", allowed_roots=[self.data, nc_dir],
                                 broker_url=self.redis.url, database_url=database_url, heartbeat_interval_s=1.0,
                                 rate_limit_per_minute=0, job_soft_time_limit_s=SOFT_LIMIT_S,
                                 job_hard_time_limit_s=SOFT_LIMIT_S + 30)
        self.settings.ensure_dirs()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(self.settings.jobs_dir)],
                                 capture_output=True, text=True)
        self.tmpfs = mounted.returncode == 0
        self.app = create_app(self.settings)
        self.client = TestClient(self.app)
        with session_scope(self.app.state.sessions) as s:
            _, plain = tokens.create_token(s, name="faults")
        self.auth = {"Authorization": f"Bearer {plain}"}
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                    "GEOADAPT_DATA_DIR": str(self.settings.data_dir), "GEOADAPT_BROKER_URL": self.redis.url,
                    "GEOADAPT_DATABASE_URL": database_url,
                    "GEOADAPT_ALLOWED_ROOTS": f"{self.data}:{nc_dir}", "GEOADAPT_HEARTBEAT_INTERVAL_S": "1",
                    "GEOADAPT_JOB_SOFT_TIME_LIMIT_S": str(SOFT_LIMIT_S),
                    "GEOADAPT_JOB_HARD_TIME_LIMIT_S": str(SOFT_LIMIT_S + 30)}
        self.worker: subprocess.Popen | None = None

    def start_worker(self, **env) -> None:
        name = f"f{uuid.uuid4().hex[:6]}"
        log = open(self.root / "worker.log", "ab")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "cli", "worker", "--pool", "prefork", "--concurrency", "1", "--loglevel",
             "info", "--hostname", f"{name}@%h"], env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)

        def ready():
            if self.worker.poll() is not None:
                raise AssertionError(f"worker exited ({self.worker.returncode})\n{self.logs()}")
            with self.app.state.sessions() as s:
                return any(w.name.startswith(name + "@") and not w.stopped for w in s.query(WorkerRecord))

        wait_for(ready, 90, "the worker to start", self.logs)

    def logs(self) -> str:
        p = self.root / "worker.log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    def submit(self, spec: dict) -> str:
        r = self.client.post("/v1/jobs", json=spec, headers=self.auth)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def job(self, jid: str) -> dict:
        return self.client.get(f"/v1/jobs/{jid}", headers=self.auth).json()

    def final(self, jid: str, timeout: float = 90) -> dict:
        return wait_for(lambda: (j := self.job(jid))["status"] in FINAL and j, timeout, f"job {jid} to end", self.logs)

    def job_pid(self, jid: str) -> int:
        with self.app.state.sessions() as s:
            return int(s.get(Job, uuid.UUID(jid)).worker.rsplit(":", 2)[1])

    def stop_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait(10)

    def close(self) -> None:
        self.stop_worker()
        self.client.close()
        self.app.state.engine.dispose()
        self.redis.stop()
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.settings.jobs_dir)], check=False)


@pytest.fixture(scope="module")
def rig(tmp_path_factory, nc_data, nc_bands, pg_module_schema_url):
    from core.raster.scene import Scene
    from core.raster.stats import compute_stats
    from benchmarks.predict import build_mosaic

    root = tmp_path_factory.mktemp("faults")
    r = Rig(root, Path(nc_data["strata"]).parent, pg_module_schema_url)
    try:
        r.start_worker()
        r.mosaic = build_mosaic(1024, r.data / "mosaic.tif")  # the real NC scene, tiled to 1024 x 1024 x 6
        with Scene.open(nc_bands) as s:
            stats = compute_stats([s])
        r.bundle = conv_bundle(r.data / "model" / "bundle", stats)
        yield r
    finally:
        r.close()


def predict_spec(r: Rig) -> dict:
    return {"type": "predict", "classes": NC_CLASSES, "bundle": str(r.bundle),
            "target": {"scenes": [{"image": str(r.mosaic)}]}}


def train_spec(nc_bands, nc_data, iterations: int) -> dict:
    return {"type": "train", "method": "source-only", "model": "segformer-tiny", "classes": NC_CLASSES,
            "source": {"scenes": [{"bands": [str(p) for p in nc_bands], "labels": str(nc_data["strata"])}],
                       "region": {"columns": [0.0, 0.5]}},
            "params": {"batch_size": 2, "crop": 32, "seed": 0, "iterations": iterations}}


def _cog(r: Rig, jid: str) -> Path:
    return r.settings.job_dir(jid) / "output" / "predictions" / "target-0-mosaic.tif"


def test_job_process_sigkilled_mid_prediction_runs_again_to_the_same_result(rig):
    from models.inference import predict_raster

    jid = rig.submit(predict_spec(rig))
    preds = rig.settings.job_dir(jid) / "output" / "predictions"

    def writing():  # the COG writer's temporary file exists and the COG does not: windows are being predicted
        j = rig.job(jid)
        return (j["status"] == "running" and (j.get("stage") or "").startswith("predicting")
                and any(preds.glob(".*.part.tif")) and not _cog(rig, jid).exists() and j)

    wait_for(writing, 90, "the prediction to be under way", rig.logs, every=0.05)
    os.kill(rig.job_pid(jid), signal.SIGKILL)  # the process running the job, mid-prediction
    j = rig.final(jid)
    assert j["status"] == "successful", (j, rig.logs())
    assert j["attempts"] == 2
    assert not [p.name for p in preds.glob(".*.tif")]  # the killed attempt's temporary file is gone
    # the result is the one an uninterrupted run gives
    ref = rig.root / "ref.tif"
    predict_raster(rig.bundle, rig.mosaic, ref, streams=1, threads=1)
    with rasterio.open(_cog(rig, jid)) as a, rasterio.open(ref) as b:
        assert a.profile["width"] == 1024 and np.mean(a.read(1) == b.read(1)) > 0.999
    res = rig.client.get(f"/v1/jobs/{jid}/results", headers=rig.auth).json()
    assert [(p["name"], p["kind"]) for p in res["predictions"]] == [
        ("predictions--target-0-mosaic", "classes"), ("predictions--target-0-mosaic_probs", "probabilities")]
    rig.first_prediction = jid


def test_redis_restarted_with_a_job_running_and_one_queued(rig, nc_bands, nc_data):
    running = rig.submit(train_spec(nc_bands, nc_data, 300))  # ~10 s of training
    queued = rig.submit(train_spec(nc_bands, nc_data, 20))
    wait_for(lambda: rig.job(running)["status"] == "running", 60, "the first job to start", rig.logs, every=0.05)
    assert rig.job(queued)["status"] == "accepted" and rig.redis.llen("gpu") == 1  # waiting in Redis
    rig.redis.stop()
    r = rig.client.post("/v1/jobs", json=train_spec(nc_bands, nc_data, 5), headers=rig.auth)
    assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, r.text  # refused while Redis is down
    time.sleep(2)
    rig.redis.start()  # same folder: the AOF brings the queued job's message back
    assert rig.job(running)["status"] == "running"  # still at it across the restart
    for jid in (running, queued):
        j = rig.final(jid, timeout=120)
        assert j["status"] == "successful" and j["attempts"] == 1, (jid, j, rig.logs())
    after = rig.submit(train_spec(nc_bands, nc_data, 5))  # the worker is connected again
    assert rig.final(after)["status"] == "successful"
    ids = {j["id"] for j in rig.client.get("/v1/jobs?type=train", headers=rig.auth).json()["jobs"]}
    assert ids == {running, queued, after}  # the refused submit left nothing


def test_disk_full_while_a_prediction_is_written(rig):
    if not rig.tmpfs:
        pytest.skip("no tmpfs under the jobs folder (mount refused); tests/service/test_faults_files.py covers "
                    "the writers with RLIMIT_FSIZE")
    earlier = _cog(rig, rig.first_prediction)
    digest = hashlib.sha256(earlier.read_bytes()).hexdigest()
    ballast = fill(rig.settings.jobs_dir, leave=256 * 1024)  # room for the job's folder, not for its COG
    try:
        jid = rig.submit(predict_spec(rig))
        j = rig.final(jid)
        assert j["status"] == "failed", j
        assert j["error"]["type"] == "disk_full" and "no space left" in j["error"]["message"], j["error"]
        out = rig.settings.job_dir(jid) / "output" / "predictions"
        assert not any(out.glob("*.tif")), "a half-written COG was left where results are listed"
        assert rig.client.get(f"/v1/jobs/{jid}/results", headers=rig.auth).status_code == 409
    finally:
        ballast.unlink()
    assert hashlib.sha256(earlier.read_bytes()).hexdigest() == digest  # the earlier result is intact
    again = rig.submit(predict_spec(rig))
    assert rig.final(again)["status"] == "successful"


def test_job_over_its_time_limit_fails_with_the_reason(rig, nc_bands, nc_data):
    """A worker whose jobs may run SHORT_LIMIT_S seconds; a training job that needs far longer."""
    rig.stop_worker()
    rig.start_worker(GEOADAPT_JOB_SOFT_TIME_LIMIT_S=str(SHORT_LIMIT_S), GEOADAPT_JOB_HARD_TIME_LIMIT_S="60")
    t0 = time.monotonic()
    jid = rig.submit(train_spec(nc_bands, nc_data, 1_000_000))
    j = rig.final(jid, timeout=SHORT_LIMIT_S + 60)
    assert j["status"] == "failed", j
    assert j["error"]["type"] == "time_limit_exceeded" and f"{SHORT_LIMIT_S} s" in j["error"]["message"], j["error"]
    assert time.monotonic() - t0 < SHORT_LIMIT_S + 45
    assert (j.get("done") or 0) < 1_000_000
    assert rig.worker.poll() is None  # the worker itself carries on, and runs the next job
    nxt = rig.submit(train_spec(nc_bands, nc_data, 5))
    assert rig.final(nxt)["status"] == "successful"


def test_no_broker_password_in_the_worker_log(rig):
    text = (rig.root / "worker.log").read_text(errors="replace")
    assert "ready" in text.lower()
    assert REDIS_PASSWORD not in text
