"""The sharded prediction's coordinator (workers/pipelines/shards.py) in this process, on a real job store
(SQLite): a shard whose claimant died runs again and is counted, a shard already written is neither run nor
rewritten, the result equals one piece's, a cancel stops the shards not yet run, and a failed shard fails
the prediction with its reason. (Real worker processes, one killed mid-job: tests/cli/test_serve_workers.py.)"""
from __future__ import annotations

import json
import os
import shutil
import uuid

import numpy as np
import pytest
import rasterio

from core.data.nc import NC_CLASSES
from core.job_layout import shard_folder
from core.raster.prediction_shards import SHARD_MANIFEST, part_path
from core.raster.scene import Scene
from core.raster.stats import compute_stats
from models.inference import PredictionCancelled, predict_raster
from models.inference.shards import plan_shards
from service.settings import Settings
from service.store import jobs, tokens
from service.store.db import session_scope
from service.store.for_workers import WorkerJobStore
from service.store.tables import Job
from tests.helpers import small_conv_bundle
from workers.pipelines.shards import ShardFailed, ShardPool, predict_sharded, run_shard
from workers.tasks import make_is_dead, process_ident

OPTS = {"window": 64, "overlap": 16, "batch_size": 2, "streams": 1, "threads": 1, "probabilities": True}
DEAD = "not-this-host:1:1"  # a claimant on another host whose heartbeat is long gone


@pytest.fixture(scope="module")
def scene(tmp_path_factory, nc_bands):
    folder = tmp_path_factory.mktemp("coord")
    with Scene.open(nc_bands) as s:
        stats = compute_stats([s])
    bundle = small_conv_bundle(folder, NC_CLASSES, stats)
    return folder / "bundle", bundle, [str(p) for p in nc_bands]


@pytest.fixture
def store(tmp_path):
    settings = Settings(data_dir=tmp_path / "state", database_url=f"sqlite:///{tmp_path / 'store.db'}",
                        broker_url="memory://", heartbeat_interval_s=0.2, orphan_after_s=10)
    st = WorkerJobStore(settings)
    yield st
    st.engine.dispose()


def _running_job(store) -> str:
    with session_scope(store.sessions) as s:
        owner, _ = tokens.create_token(s)
        s.flush()
        job, _ = jobs.create_job(s, job_id=uuid.uuid4(), owner_id=owner.id, spec={"type": "predict"}, queue="gpu")
        jobs.claim(s, job.id, process_ident(), previous_run_dead=lambda j: False)
        return str(job.id)


def _pool(store, jid, out, sent, worker=None) -> ShardPool:
    return ShardPool(store=store, job_id=jid, worker=worker or process_ident(), is_dead=make_is_dead(10),
                     send=lambda folder, i: sent.append((folder, i)), heartbeat_s=0.2, output=out)


def test_a_lost_shard_runs_again_a_written_one_stays_and_the_cog_equals_one_piece(scene, store, tmp_path):
    bundle_path, bundle, bands = scene
    jid = _running_job(store)
    out = tmp_path / "out"
    output = out / "predictions" / "target-0-nc.tif"
    folder = shard_folder(output)
    sent: list = []
    pool = _pool(store, jid, out, sent)
    # an earlier attempt planned 3 shards, wrote shard 0, and died while running shard 1
    manifest = plan_shards(bundle, bands, 3, **OPTS)
    manifest.bundle = str(bundle_path)
    folder.mkdir(parents=True)
    manifest.save(folder / SHARD_MANIFEST)
    key = pool.key(folder)
    store.plan_shards(jid, key, 3)
    assert run_shard(pool, folder, 0) == "done"
    keep = tmp_path / "shard0.tif"  # a second name for shard 0's part: it outlives the shard folder
    os.link(part_path(folder, 0), keep)
    before = keep.stat()
    assert store.claim_shard(jid, key, 1, DEAD, lambda w, age: False) == 1
    with store.sessions() as s:  # its heartbeat stopped long ago
        from service.store.tables import JobShard

        rec = s.get(JobShard, (uuid.UUID(jid), key, 1))
        rec.heartbeat_at = jobs.utcnow().replace(year=2000)
        s.commit()

    stages = []
    figures = predict_sharded(pool, bundle, bundle_path, bands, output, 3, options=OPTS,
                              progress=lambda d, t: stages.append((d, t)))
    # a message for each shard not written; the lost one's again when seen lost (its message died with it)
    assert sent[:2] == [(key, 1), (key, 2)] and set(sent) == {(key, 1), (key, 2)}
    assert figures["shards"]["count"] == 3 and figures["shards"]["reruns"] == 1
    assert [r["attempts"] for r in figures["shards"]["runs"]] == [1, 2, 1]
    assert stages[0] == (1, 3) and stages[-1] == (3, 3)  # progress counts shards
    after = keep.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)  # never written again
    assert not folder.exists()  # the parts go once assembled
    predict_raster(bundle, bands, tmp_path / "one.tif", **OPTS)
    for a, b in (("one.tif", output), ("one_probs.tif", output.with_name("target-0-nc_probs.tif"))):
        with rasterio.open(tmp_path / a) as x, rasterio.open(b) as y:
            assert np.array_equal(x.read(), y.read()) and x.tags() == y.tags()
    # the job was lost after the assembly, before it said so: its next attempt plans and runs anew
    again = predict_sharded(pool, bundle, bundle_path, bands, output, 3, options=OPTS)
    assert again["shards"]["reruns"] == 0 and [r["attempts"] for r in again["shards"]["runs"]] == [1, 1, 1]
    with rasterio.open(tmp_path / "one.tif") as x, rasterio.open(output) as y:
        assert np.array_equal(x.read(), y.read())


def test_a_cancel_stops_the_shards_not_yet_run(scene, store, tmp_path):
    bundle_path, bundle, bands = scene
    jid = _running_job(store)
    out = tmp_path / "out"
    output = out / "predictions" / "target-0-nc.tif"
    sent: list = []
    pool = _pool(store, jid, out, sent)
    ran = []

    def cancel_after_one(done, total):  # the user cancels once the first shard is written
        ran.append(done)
        if done == 1:
            with session_scope(store.sessions) as s:
                jobs.request_cancel(s, s.get(Job, uuid.UUID(jid)))

    with pytest.raises(PredictionCancelled, match="1 of 4"):
        predict_sharded(pool, bundle, bundle_path, bands, output, 4, options=OPTS, progress=cancel_after_one,
                        should_stop=lambda: store.job_stopping(jid))
    folder = shard_folder(output)
    key = pool.key(folder)
    states = [r["status"] for r in store.shards(jid, key)]
    assert states.count("done") == 1 and states.count("pending") == 3
    # a message that arrives now finds the job stopping: the shard does not run
    other = _pool(store, jid, out, sent, worker="this-host-other:2:2")
    assert run_shard(other, folder, 0) == "skipped"
    assert len([p for p in folder.glob("shard-*-classes.tif")]) == 1
    assert not list(folder.glob(".*"))


def test_a_failed_shard_fails_the_prediction_with_its_reason(scene, store, tmp_path):
    bundle_path, bundle, bands = scene
    jid = _running_job(store)
    out = tmp_path / "out"
    output = out / "predictions" / "target-0-nc.tif"
    copies = tmp_path / "bands"
    copies.mkdir()
    moved = [shutil.copy(b, copies) for b in bands]
    folder = shard_folder(output)
    manifest = plan_shards(bundle, moved, 2, **OPTS)
    manifest.bundle = str(bundle_path)
    folder.mkdir(parents=True)
    manifest.save(folder / SHARD_MANIFEST)
    os.unlink(moved[3])  # the input went away after the plan was made
    with pytest.raises(ShardFailed, match="shard 1 of target-0-nc.tif failed: UnreadableRasterError"):
        predict_sharded(_pool(store, jid, out, []), bundle, bundle_path, moved, output, 2, options=OPTS)
    assert not output.exists()


def test_an_adapt_jobs_target_maps_go_in_shards_through_the_jobs_callbacks(scene, store, bench_domains, tmp_path):
    """The target-map step of a training pipeline (here adabn's) finds the worker's ShardPool among the job's
    callbacks and predicts in params.shards shards: the same COG as predict_raster with the new bundle."""
    from core.jobspec import DomainSpec, load_job_spec
    from models.bundle import load_bundle
    from workers.pipelines.dispatch import run_job

    bundle_path, _, _ = scene
    jid = _running_job(store)
    out = tmp_path / "out"
    spec = load_job_spec({"type": "adapt", "method": "adabn", "classes": NC_CLASSES, "bundle": str(bundle_path),
                          "target": bench_domains["target"], "output": str(out),
                          "params": {"batches": 2, "batch_size": 2, "crop": 32, "shards": 2,
                                     "predict_probabilities": False}})
    sent: list = []
    res = run_job(spec, [_pool(store, jid, out, sent)])
    assert res["status"] == "finished", res
    pred = res["predictions"][0]
    assert pred["shards"]["count"] == 2 and pred["shards"]["reruns"] == 0
    assert sorted(i for _, i in sent) == [0, 1]  # both offered to the other workers
    target = DomainSpec.model_validate(bench_domains["target"])
    predict_raster(load_bundle(out), target.scenes[0], tmp_path / "one.tif", region=target.region)
    with rasterio.open(tmp_path / "one.tif") as x, rasterio.open(pred["path"]) as y:
        assert np.array_equal(x.read(), y.read())


def test_shards_planned_by_an_older_version_are_planned_anew(scene, store, tmp_path):
    """A job resumed after an upgrade: its folder holds a layout-1 manifest (a shard re-ran the window row
    above its own; no edge files) and a part written then. Neither is trusted: the shards run anew."""
    bundle_path, bundle, bands = scene
    jid = _running_job(store)
    out = tmp_path / "out"
    output = out / "predictions" / "target-0-nc.tif"
    folder = shard_folder(output)
    pool = _pool(store, jid, out, [])
    old = json.loads(json.dumps(plan_shards(bundle, bands, 3, **OPTS).to_dict()))  # as saved: lists
    del old["layout"]  # what the older version saved
    for later in old["shards"][1:]:
        later["window_rows"][0] -= 1  # its shards overlapped by a window row
    folder.mkdir(parents=True)
    (folder / SHARD_MANIFEST).write_text(json.dumps(old))
    store.plan_shards(jid, pool.key(folder), 3)
    with rasterio.open(part_path(folder, 0), "w", driver="GTiff", width=1, height=1, count=1, dtype="uint8") as ds:
        ds.write(np.zeros((1, 1, 1), np.uint8))  # stands in for a part written by that version
    said: list[str] = []
    figures = predict_sharded(pool, bundle, bundle_path, bands, output, 3, options=OPTS, say=said.append)
    assert any("anew" in m for m in said) and not any(m.startswith("resuming") for m in said)
    assert [r["attempts"] for r in figures["shards"]["runs"]] == [1, 1, 1]
    predict_raster(bundle, bands, tmp_path / "one.tif", **OPTS)
    with rasterio.open(tmp_path / "one.tif") as x, rasterio.open(output) as y:
        assert np.array_equal(x.read(), y.read())
