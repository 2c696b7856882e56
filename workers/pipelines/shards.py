"""Sharded prediction across workers: the job's own process coordinates, every worker (itself included)
runs shards, the job store says who runs what, and the coordinator assembles the COG.

Call flow for one scene (the job's process, inside workers.pipelines.predict.predict_domains)::

    predict_sharded(pool, bundle, scene, output, n)
      <predictions>/.shards/<name>/manifest.json   plan_shards once (a resumed job reads it back)
      pool.plan(name, n)                        shard records in the job store (kept when resuming)
      pool.send(name, i) for every shard not done  -> a RUN_SHARD message each; any idle worker takes one
      loop until every part is written:
        claim a pending shard, or one whose claimant died -> run it here (no slot waits idle)
        else wait; re-send the shards whose claimant died (their message died with it)
        a failed shard fails the job; a cancel stops here (the other runs stop at their next beat)
      assemble_shards -> <predictions>/<name>.tif (+ _probs.tif), COG with overviews; the parts go

    RUN_SHARD(job, folder, i) on any worker -> run_shard(pool, folder, i): claim (else skip: done, alive
    elsewhere, or the job stopping), heartbeat thread (stop on cancel / lost claim), predict_shard,
    publish the part once (never over an existing one), mark done | failed | pending again (stopped).

Liveness is the jobs' rule (workers.tasks.make_is_dead): on this host the claimant's pid and start
time, elsewhere a heartbeat older than the orphan limit. A shard whose run was lost runs again; its
record's attempts say how often, and the job's result counts the re-runs.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from core.job_layout import shard_folder
from core.raster.cog import remove_stale_temporaries
from core.raster.prediction_shards import SHARD_MANIFEST
from models.inference.shards import (
    SHARD_LAYOUT, ShardManifest, assemble_shards, plan_shards, predict_shard, shard_done,
)
from models.inference.windowed import PredictionCancelled
from models.training.callbacks import Callback

log = logging.getLogger("geoadapt.worker")

#: how often the coordinator looks at the shard records while it has none to run
POLL_S = 0.5
#: the longest a shard run goes without a heartbeat (and without hearing of a cancel)
BEAT_MAX_S = 5.0


class ShardFailed(Exception):
    """A shard's run failed (not lost: it raised); the job fails with its reason."""


@dataclass
class ShardPool(Callback):
    """What a worker offers a job's pipeline for sharded predictions: the job store's shard records and a
    way to send shard messages (workers.tasks builds it; a local run has none and predicts in one piece).

    A Callback (all hooks no-ops) so that it travels with the job's callbacks to every predict step.
    """

    store: Any  # service.store.for_workers.WorkerJobStore (injected; workers never import the service)
    job_id: str
    worker: str  # process_ident() of this process
    is_dead: Callable[[str | None, float | None], bool]
    send: Callable[[str, int], None]  # (shard folder relative to the job's output, index) -> a message
    shard_pixels: int = 0  # predictions over more output pixels than this are sharded (0: only on request)
    cores: int | None = None  # CPU cores this worker's predictions use (GEOADAPT_WORKER_CORES); None: all
    heartbeat_s: float = 15.0
    output: Path | None = None  # the job's output folder (shard folders are named relative to it)
    reruns_sent: dict = field(default_factory=dict)  # (key, index) -> attempt whose loss was re-sent

    def run_options(self) -> dict:
        """The prediction options that fit this worker's share of the cores (streams x threads), on a CPU;
        they change how fast a prediction runs, never its pixels (one thread per stream either way)."""
        import torch

        from models.inference.windowed import default_streams

        if not self.cores or torch.cuda.is_available():
            return {}
        streams, threads = default_streams(torch.device("cpu"), None, None, cores=self.cores)
        return {"streams": streams, "threads": threads}

    def key(self, folder: Path) -> str:
        """The shard records' name of a shard folder: its path relative to the job's output."""
        return Path(folder).resolve().relative_to(Path(self.output).resolve()).as_posix()


def shard_pool_of(callbacks: Sequence[Any] | None) -> ShardPool | None:
    return next((c for c in callbacks or () if isinstance(c, ShardPool)), None)


# ---- a bundle per process, for shard runs ------------------------------------------------------------
_bundles: dict[str, tuple[float, Any]] = {}
_bundles_lock = threading.Lock()


def _bundle(path: str) -> Any:
    """The bundle at ``path``, loaded once per process (a worker runs several shards of one job)."""
    from models.bundle import load_bundle

    mtime = Path(path).stat().st_mtime
    with _bundles_lock:
        hit = _bundles.get(path)
        if hit is not None and hit[0] == mtime:
            return hit[1]
        b = load_bundle(path)
        _bundles.clear()  # one model at a time: a worker's memory is the network's
        _bundles[path] = (mtime, b)
        return b


# ---- one shard: the task's body, and what the coordinator runs itself ---------------------------------

class _ShardBeat(threading.Thread):
    """Keeps a shard run's heartbeat fresh and learns whether it should stop (cancel, job ended, claim lost)."""

    def __init__(self, pool: ShardPool, key: str, index: int):
        super().__init__(name=f"shard-beat-{index}", daemon=True)
        self.pool, self.key, self.index = pool, key, index
        self.stop_asked = False
        self._done = threading.Event()

    def run(self) -> None:
        # at most every few seconds: a cancel reaches a shard in another worker within that
        while not self._done.wait(min(self.pool.heartbeat_s, BEAT_MAX_S)):
            try:
                self.stop_asked = self.pool.store.shard_beat(self.pool.job_id, self.key, self.index,
                                                             self.pool.worker) or self.stop_asked
            except Exception as e:  # a store hiccup must not kill the run; the next beat retries
                log.warning("shard heartbeat failed: %s", type(e).__name__)

    def finish(self) -> None:
        self._done.set()
        self.join(timeout=5)


def run_shard(pool: ShardPool, folder: Path, index: int, *, bundle: Any = None,
              should_stop: Callable[[], bool] | None = None) -> str:
    """Claim and run shard ``index`` of the manifest in ``folder``; returns done | skipped | stopped | failed
    (failed: recorded on the shard, raised as ShardFailed by the coordinator)."""
    key = pool.key(folder)
    attempt = pool.store.claim_shard(pool.job_id, key, index, pool.worker, pool.is_dead)
    if attempt is None:
        return "skipped"
    manifest = ShardManifest.load(folder / SHARD_MANIFEST)
    if shard_done(manifest, folder, index):  # written by a run that died before saying so
        pool.store.shard_done(pool.job_id, key, index, {"index": index, "published": False, "attempt": attempt})
        return "done"
    beat = _ShardBeat(pool, key, index)
    beat.start()
    try:
        result = predict_shard(bundle if bundle is not None else _bundle(manifest.bundle), manifest, index, folder,
                               should_stop=lambda: beat.stop_asked or bool(should_stop and should_stop()),
                               **pool.run_options())
    except PredictionCancelled:
        pool.store.shard_released(pool.job_id, key, index, pool.worker)
        return "stopped"
    except Exception as e:
        log.exception("shard %s/%s of job %s failed", key, index, pool.job_id)
        pool.store.shard_failed(pool.job_id, key, index, pool.worker,
                                {"type": type(e).__name__, "message": str(e)[:2000]})
        return "failed"
    finally:
        beat.finish()
    pool.store.shard_done(pool.job_id, key, index, {**result.to_dict(), "attempt": attempt, "worker": pool.worker})
    return "done"


# ---- the coordinator ----------------------------------------------------------------------------------

def predict_sharded(
    pool: ShardPool,
    bundle: Any,
    bundle_path: str | Path,
    input: Any,
    output: Path,
    shards: int,
    *,
    options: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    say: Callable[[str], None] = lambda m: None,
) -> dict:
    """Predict ``input`` to the COG ``output`` in ``shards`` shards run by any worker (this one too).
    ``progress(done, total)`` counts shards. Returns predict_raster's figures plus ``shards``: their
    count, re-runs and each one's run. Raises PredictionCancelled when ``should_stop`` says so."""
    folder = shard_folder(output)
    key = pool.key(folder)
    manifest_path = folder / SHARD_MANIFEST
    fresh = not manifest_path.is_file()
    if not fresh:  # a resumed job: the plan, and every part already written, stay
        manifest = ShardManifest.load(manifest_path)
        if manifest.layout != SHARD_LAYOUT:  # planned by an older version: its parts do not fit this one's
            say(f"planning the shards of {output.name} anew (they were planned by an older version)")
            shutil.rmtree(folder)
            fresh = True
        else:
            say(f"resuming {len(manifest.shards)} shards of {output.name}")
    if fresh:  # the first attempt, or one after an assembly whose job was lost before it said so: plan anew
        folder.mkdir(parents=True, exist_ok=True)
        manifest = plan_shards(bundle, input, shards, **(options or {}))
        manifest.bundle = str(bundle_path)
        manifest.save(manifest_path)
    n = len(manifest.shards)
    pool.store.plan_shards(pool.job_id, key, n, fresh=fresh)
    records = {r["index"]: r for r in pool.store.shards(pool.job_id, key)}
    for i in range(n):
        if records[i]["status"] != "done":
            pool.send(key, i)
    stop = should_stop or (lambda: False)
    last_done = -1
    while True:
        records = {r["index"]: r for r in pool.store.shards(pool.job_id, key)}
        failed = [r for r in records.values() if r["status"] == "failed"]
        if failed:
            err = failed[0]["result"]["error"]
            raise ShardFailed(f"shard {failed[0]['index']} of {output.name} failed: {err['type']}: {err['message']}")
        done = sum(1 for r in records.values() if r["status"] == "done")
        if done != last_done and progress is not None:
            progress(done, n)
            last_done = done
        if done == n:
            break
        if stop():
            raise PredictionCancelled(f"stopped with {done} of {n} shards written")
        ran = False
        for i in _claim_order(records, pool.is_dead):
            outcome = run_shard(pool, folder, i, bundle=bundle, should_stop=lambda: stop() or _resend_lost(pool, key))
            if outcome != "skipped":
                ran = True
                break
        if not ran:
            _resend_lost(pool, key, force=True)
            time.sleep(POLL_S)
    say(f"assembling {output.name} from {n} shards")
    results = [r["result"] for r in records.values() if r["result"]]
    for p in remove_stale_temporaries(output.parent):
        say(f"removed {p.name}, left by an interrupted attempt")
    result = assemble_shards(bundle, manifest, folder, output, results=[r for r in results if "predicted" in r])
    figures = result.to_dict()
    figures["shards"] = {
        "count": n,
        "reruns": sum(max(0, int(r["attempts"]) - 1) for r in records.values()),
        "runs": [{"index": r["index"], "attempts": r["attempts"],
                  **{k: (r["result"] or {}).get(k) for k in ("worker", "seconds", "predicted", "published")}}
                 for r in sorted(records.values(), key=lambda r: r["index"])],
    }
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()  # .shards/, once no other prediction of the job has shards in it
    except OSError:
        pass
    return figures


def _claim_order(records: dict[int, dict], is_dead) -> list[int]:
    """Shards this process could take now, last first: messages are taken first-in first-out, so the
    coordinator working from the other end rarely races another worker for the same shard."""
    open_ = [i for i, r in records.items()
             if r["status"] == "pending" or (r["status"] == "running" and is_dead(r["worker"], r["heartbeat_age_s"]))]
    return sorted(open_, reverse=True)


_last_rescue: dict[tuple[str, str], float] = {}  # (job, shard folder) -> when its shards were last looked at


def _resend_lost(pool: ShardPool, key: str, force: bool = False) -> bool:
    """Send again (once per lost run) the shards whose claimant died: their message died with it, and an
    idle worker may take them while this process is busy. Looked at every few seconds; never asks to stop."""
    now = time.monotonic()
    if not force and now - _last_rescue.get((pool.job_id, key), 0.0) < max(2.0, min(pool.heartbeat_s, BEAT_MAX_S) / 2):
        return False
    _last_rescue[(pool.job_id, key)] = now
    try:
        for r in pool.store.shards(pool.job_id, key):
            if r["status"] == "running" and pool.is_dead(r["worker"], r["heartbeat_age_s"]) \
                    and pool.reruns_sent.get((key, r["index"])) != r["attempts"]:
                pool.reruns_sent[(key, r["index"])] = r["attempts"]
                log.warning("job %s: shard %s/%s lost its worker; sending it again", pool.job_id, key, r["index"])
                pool.send(key, r["index"])
    except Exception as e:
        log.warning("shard rescue failed: %s", type(e).__name__)
    return False
