"""`geoadapt serve --workers 2` from the outside: two job worker processes (children of serve, half the cores each),
a predict job in shards that both run, one of them SIGKILLed while it runs a shard: the job succeeds, the
lost shard ran again (counted in the result), and the COG equals one piece's. A cancel mid-sharding stops
the shards not yet run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio

from benchmarks.common import free_port
from core.data.nc import NC_CLASSES
from core.raster.scene import Scene
from core.raster.stats import compute_stats
from service.settings import Settings
from service.store.db import make_engine, session_factory
from service.store.tables import Job, JobShard, WorkerRecord
from tests.helpers import small_conv_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every child of ``pid``, whichever of its threads started it (a worker started
    again is a child of serve's supervisor thread: /proc/<pid>/task/<pid>/children does not list it)."""
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if _parent(int(d.name)) == pid:
                    kids.append((int(d.name), (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
            except (OSError, ValueError, IndexError):
                pass
    return kids


def _job_workers(pid: int) -> list[tuple[int, str]]:
    return [(k, c) for k, c in _children(pid) if "worker" in c and "tiles" not in c]


class Served:
    def __init__(self, root: Path, nc_bands):
        from benchmarks.predict import build_mosaic

        self.root = root
        with Scene.open(nc_bands) as s:
            stats = compute_stats([s])
        self.bundle = small_conv_bundle(root, NC_CLASSES, stats)
        self.mosaic = build_mosaic(3072, root / "data" / "mosaic.tif")  # shards of ~1 s: a second worker gets one
        self.env = {**os.environ, "GEOADAPT_DATA_DIR": str(root / "state"), "GEOADAPT_ALLOWED_ROOTS": str(root),
                    "GEOADAPT_HEARTBEAT_INTERVAL_S": "1"}
        self.settings = Settings(data_dir=root / "state")
        token = subprocess.run([sys.executable, "-m", "cli", "token", "create", "--name", "t"], env=self.env,
                               capture_output=True, text=True, check=True).stdout.split()[-1]
        self.auth = {"Authorization": f"Bearer {token}"}
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = root / "serve.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--port", self.url.rsplit(":", 1)[1], "--workers", "2"],
            env=self.env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        self.engine = make_engine(self.settings.database_url)
        self.sessions = session_factory(self.engine)
        self.wait(lambda: self._ready(), 240, "two job workers and the API")

    def _ready(self) -> bool:
        try:
            httpx.get(f"{self.url}/health", timeout=2).raise_for_status()
        except httpx.HTTPError:
            return False
        with self.sessions() as s:
            names = {w.name.split("@")[0] for w in s.query(WorkerRecord) if not w.stopped}
        return {"jobs1", "jobs2", "tiles"} <= names

    def wait(self, pred, timeout: float, what: str, every: float = 0.2):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            v = pred()
            if v:
                return v
            if self.proc.poll() is not None:
                break
            time.sleep(every)
        raise AssertionError(f"timed out waiting for {what}\n{self.log.read_text()[-4000:]}")

    def submit(self, shards: int) -> str:
        spec = {"type": "predict", "classes": NC_CLASSES, "bundle": str(self.root / "bundle"),
                "target": {"scenes": [{"image": str(self.mosaic)}]}, "params": {"shards": shards}}
        r = httpx.post(f"{self.url}/v1/jobs", json=spec, headers=self.auth)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def job(self, jid: str) -> dict:
        return httpx.get(f"{self.url}/v1/jobs/{jid}", headers=self.auth).json()

    def shards(self, jid: str) -> list[JobShard]:
        with self.sessions() as s:
            return list(s.query(JobShard).filter(JobShard.job_id == uuid.UUID(jid)).order_by(JobShard.index))

    def coordinator(self, jid: str) -> str | None:
        with self.sessions() as s:
            return s.get(Job, uuid.UUID(jid)).worker

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.engine.dispose()


@pytest.fixture(scope="module")
def served(tmp_path_factory, nc_bands):
    s = Served(tmp_path_factory.mktemp("serve2"), nc_bands)
    yield s
    s.close()


def _pid(ident: str | None) -> int | None:
    return int(ident.rsplit(":", 2)[1]) if ident else None


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_serve_workers_2_starts_two_job_worker_children_with_half_the_cores_each(served):
    workers = _job_workers(served.proc.pid)
    assert len(workers) == 2, _children(served.proc.pid)
    assert sorted(c.split("--hostname ")[1].split("@")[0] for _, c in workers) == ["jobs1", "jobs2"]
    assert sum("tiles" in c for _, c in _children(served.proc.pid)) == 1
    share = str(max(1, len(os.sched_getaffinity(0)) // 2))
    for pid, _ in workers:
        env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        assert env["GEOADAPT_WORKER_CORES"] == share


def test_a_worker_killed_mid_shard_the_job_succeeds_with_the_same_cog(served, tmp_path):
    from models.inference import predict_raster

    jid = served.submit(4)

    def helper_running():  # a shard run by the job worker that is not the coordinator
        coord = _pid(served.coordinator(jid))
        for rec in served.shards(jid):
            pid = _pid(rec.worker)
            if rec.status == "running" and pid not in (None, coord) and os.path.exists(f"/proc/{pid}"):
                return _parent(pid)  # the pool process's worker: a child of serve
        return None

    worker = served.wait(helper_running, 120, "a shard running in the other worker", every=0.1)
    assert worker in [pid for pid, _ in _job_workers(served.proc.pid)]
    os.kill(worker, signal.SIGKILL)  # the worker and, with it, its pool process mid-shard
    j = served.wait(lambda: (j := served.job(jid))["status"] in ("successful", "failed", "dismissed") and j,
                    300, "the job to end")
    assert j["status"] == "successful", (j, served.log.read_text()[-3000:])
    res = httpx.get(f"{served.url}/v1/jobs/{jid}/results", headers=served.auth).json()
    out = served.settings.job_dir(jid) / "output"
    pred = json.loads((out / "predictions.json").read_text())["predictions"][0]
    assert pred["shards"]["count"] == 4 and pred["shards"]["reruns"] >= 1, pred["shards"]
    assert [p["kind"] for p in res["predictions"]] == ["classes", "probabilities"]
    assert not (out / "predictions" / ".shards").exists()
    cog = Path(pred["path"])
    ref = tmp_path / "ref.tif"
    predict_raster(served.bundle, served.mosaic, ref, streams=1, threads=1, probabilities=True)  # a worker's threads
    for a, b in ((ref, cog), (tmp_path / "ref_probs.tif", cog.with_name(cog.stem + "_probs.tif"))):
        with rasterio.open(a) as x, rasterio.open(b) as y:
            assert np.array_equal(x.read(), y.read())
    assert len(_job_workers(served.proc.pid)) == 2  # serve started the killed worker again


def test_a_cancel_mid_sharding_stops_the_shards_not_yet_run(served):
    served.wait(lambda: len(_job_workers(served.proc.pid)) == 2 and served._ready(), 240, "both workers back")
    jid = served.submit(8)
    served.wait(lambda: any(r.status == "done" for r in served.shards(jid)), 180, "a first shard written", every=0.1)
    assert httpx.delete(f"{served.url}/v1/jobs/{jid}", headers=served.auth).status_code in (200, 202)
    j = served.wait(lambda: (j := served.job(jid))["status"] in ("successful", "failed", "dismissed") and j,
                    120, "the job to end")
    assert j["status"] == "dismissed", j
    served.wait(lambda: not any(r.status == "running" for r in served.shards(jid)), 30, "running shards to stop")
    done = [r.index for r in served.shards(jid) if r.status == "done"]
    time.sleep(3)  # messages still queued find the job dismissed and run nothing
    assert [r.index for r in served.shards(jid) if r.status == "done"] == done and len(done) < 8
    parts = served.settings.job_dir(jid) / "output" / "predictions" / ".shards" / "target-0-mosaic"
    assert len(list(parts.glob("shard-*-classes.tif"))) == len(done)
