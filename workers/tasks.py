"""Celery tasks: thin, like views. Take a job id, claim it in the job store, call one pipeline
function with a callback that reports progress/checkpoints and relays cancel, record the outcome.

    run_job(job_id)
      store.claim(job_id, me)        -> spec, or None (finished, dismissed, or alive elsewhere)
      Heartbeat thread               -> store.report(...) every few seconds; reads cancel flag
      PIPELINES[spec.type](spec, callbacks=[StoreReporter, ShardPool])
                                     (ShardPool: a large prediction's shards go to every worker as
                                      run_shard(job_id, folder, index) messages: workers/pipelines/shards.py)
      store.succeed (then its checkpoints go, unless kept) | store.dismiss (on request, checkpoint kept)
        | store.fail(error type, message)

A killed worker's job comes back (acks_late + reject_on_worker_lost, or the orphan sweep when a
worker starts) and the pipeline resumes from the checkpoint in the job's folder. On the embedded broker the
sweep also sends again a job whose message a worker took and died with before starting it.
"""
from __future__ import annotations

import errno
import importlib
import json
import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

from celery import signals
from celery.exceptions import SoftTimeLimitExceeded

from core.errors import ConfigError, GeoadaptError
from core.jobspec import JobSpec, load_job_spec
from core.resume_state import drop_checkpoints
from core.task_names import CPU_QUEUE, DATASET_STATS, EXPORT_MODEL_ONNX, GPU_QUEUE, RUN_JOB, RUN_SHARD
from workers.celery_app import app
from workers.embedded_broker import purge_taken, task_messages

log = logging.getLogger("geoadapt.worker")

#: job type -> "module:function", imported when a job of that type runs (torch loads only then)
PIPELINES = {t: "workers.pipelines.dispatch:run_job"
             for t in ("train", "adapt", "evaluate", "predict", "suggest", "consensus", "pretrain")}


# ---- which process runs a job, and is it still alive? -------------------------------------------

def _start_ticks(pid: int) -> str:
    """Process start time (Linux /proc); with the pid it names one process, not a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_ident(pid: int | None = None) -> str:
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_is_dead(orphan_after_s: float):
    """Decide whether the process recorded as running a job is gone.

    On this host: ask the OS (pid and start time). On another host: only a heartbeat older than
    `orphan_after_s` says so.
    """
    host = socket.gethostname()

    def is_dead(ident: str | None, heartbeat_age_s: float | None) -> bool:
        if not ident:
            return True
        try:
            h, pid_s, start = ident.rsplit(":", 2)
            pid = int(pid_s)
        except ValueError:
            return True
        if h == host:
            if not _pid_alive(pid):
                return True
            return bool(start) and _start_ticks(pid) != start
        return heartbeat_age_s is None or heartbeat_age_s > orphan_after_s

    return is_dead


# ---- progress reporting ------------------------------------------------------------------------

class StoreReporter:
    """Training-loop callback (models.training.callbacks.Callback protocol) writing the job store.

    Writes at most once per `min_interval_s` (the loop may run many iterations a second); asks
    the store for a cancel request at the same pace.
    """

    def __init__(self, store, job_id: str, worker: str, *, span: tuple[float, float] = (0.0, 99.0),
                 min_interval_s: float = 1.0):
        self.store, self.job_id, self.worker = store, job_id, worker
        self.span = span
        self.min_interval_s = min_interval_s
        self.cancel = False
        self.progress = 0.0
        self.result = None
        self.resumed_from: int | None = None
        self._last = 0.0
        self._stage: str | None = None  # the stage last written
        self._lock = threading.Lock()

    def _write(self, force: bool = False, **fields) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.min_interval_s:
            return
        with self._lock:
            self._last = now
            self._stage = fields.get("stage", self._stage)
            try:
                self.cancel = self.store.report(self.job_id, self.worker, **fields) or self.cancel
            except Exception as e:  # a store hiccup must not kill a long job; the next write retries
                log.warning("progress write failed for job %s: %s", self.job_id, type(e).__name__)

    def _scaled(self, done: int, total: int) -> float:
        lo, hi = self.span
        frac = min(1.0, done / total) if total else 0.0
        self.progress = max(self.progress, lo + (hi - lo) * frac)  # never goes backwards
        return round(self.progress, 2)

    # Callback hooks ------------------------------------------------------------------------------
    def on_start(self, iteration: int, total: int) -> None:
        self.resumed_from = iteration or None
        msg = f"resumed from iteration {iteration}" if iteration else None
        self._write(force=True, stage="training", done=iteration, total=total,
                    progress=self._scaled(iteration, total), message=msg)

    def on_progress(self, progress) -> None:
        self._write(force=progress.stage != self._stage,  # a new stage shows at once
                    stage=progress.stage, done=progress.iteration, total=progress.total,
                    progress=self._scaled(progress.iteration, progress.total), eta_s=progress.eta_s)

    def on_validation(self, iteration: int, metrics: dict, is_best: bool) -> None:
        miou = metrics.get("miou")
        if miou is not None:
            self._write(force=True, message=f"validation at iteration {iteration}: mIoU {miou:.4f}")

    def on_checkpoint(self, iteration: int, path, kind: str) -> None:
        if kind == "last":
            try:
                self.store.checkpoint(self.job_id, str(path))
            except Exception as e:
                log.warning("checkpoint record failed for job %s: %s", self.job_id, type(e).__name__)

    def on_stage(self, stage: str, done: int | None = None, total: int | None = None) -> None:
        """Stages after training (e.g. predicting windows) fill the rest of the bar, up to 99%."""
        fields: dict[str, Any] = {"stage": stage, "done": done, "total": total}
        if done is not None and total:
            lo = self.span[1]
            self.progress = max(self.progress, lo + (99.0 - lo) * min(1.0, done / total))
            fields["progress"] = round(self.progress, 2)
        self._write(force=not done or done == total, **fields)

    def on_log(self, message: str) -> None:
        """The pipeline's step messages ("computing band statistics", ...) as the job's message."""
        fields: dict[str, Any] = {"message": str(message)[:500]}
        if self.progress == 0.0 and not self.resumed_from:
            fields["stage"] = "preparing"
        self._write(force=True, **fields)

    def should_stop(self) -> bool:
        if not self.cancel:
            self._write()  # polls the cancel flag at most once per interval
        return self.cancel

    def on_end(self, result) -> None:
        self.result = result
        done, total = getattr(result, "iterations_done", None), getattr(result, "total", None)
        if done is not None and total:  # the last iterations may have fallen inside the throttle
            self._write(force=True, done=done, total=total, progress=self._scaled(done, total))


class Heartbeat(threading.Thread):
    """Keeps the job's heartbeat fresh while the pipeline is busy outside the loop (data, stats)."""

    def __init__(self, reporter: StoreReporter, interval_s: float):
        super().__init__(name=f"heartbeat-{reporter.job_id}", daemon=True)
        self.reporter, self.interval_s = reporter, interval_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.reporter._write(force=True)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def _pipeline(job_type: str):
    mod, _, fn = PIPELINES[job_type].partition(":")
    try:
        module = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name != mod:  # a dependency of the pipeline is missing: a real environment error
            raise
        raise ConfigError(f"{job_type} jobs are not available in this build", field="type") from None
    return getattr(module, fn)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _stopped(result: Any, reporter: StoreReporter) -> bool:
    """The pipeline returned early on our request (its result says so, or the loop's did)."""
    if isinstance(result, dict) and "status" in result:
        return result["status"] == "stopped"
    return bool(getattr(reporter.result, "stopped", False))


#: less free space than this where the job writes, at the moment a write fails, means the disk is full
LOW_DISK_BYTES = 64 * 1024 * 1024


def failure_reason(e: BaseException, output: str | None) -> tuple[str, str]:
    """(error type, message) for an unexpected exception. A full disk is said in words: GDAL and torch
    report it as a bare write error ("Write failed. See previous exception"), so the chain and the free
    space where the job writes are looked at too."""
    chain, x = [], e
    while x is not None and len(chain) < 6:
        chain.append(x)
        x = x.__cause__ or x.__context__
    detail = next((str(c) for c in reversed(chain) if str(c) and "previous exception" not in str(c)), str(e))
    message = f"{type(e).__name__}: {detail}"
    free = None
    if output:
        place = Path(output)
        while not place.exists() and place != place.parent:
            place = place.parent
        try:
            free = shutil.disk_usage(place).free
        except OSError:
            pass
    if any(getattr(c, "errno", None) == errno.ENOSPC for c in chain) or (free is not None and free < LOW_DISK_BYTES):
        free_s = f" ({free / 1e6:.1f} MB free)" if free is not None else ""
        return "disk_full", f"no space left on the disk holding the job's output{free_s}: {message}"[:4000]
    return "internal_error", message


# ---- the task ----------------------------------------------------------------------------------

@app.task(name=RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(self, job_id: str) -> str:
    """Run one job from the store to its end; returns the final state (for logs only)."""
    store, settings = self.app.job_store, self.app.settings
    if store is None:
        raise RuntimeError("the worker was started without a job store: use `geoadapt worker`")
    me = process_ident()
    claimed = store.claim(job_id, me, make_is_dead(settings.orphan_after_s))
    if claimed is None:
        log.info("job %s: not run here (finished, dismissed, or running elsewhere)", job_id)
        return "skipped"
    try:
        spec = load_job_spec(claimed["spec"], check_files=True)  # the spec's rules, as at submission
    except Exception as e:  # a spec stored before a rule was added, or an input file gone since
        return _failed(store, job_id, me, e, output=None)
    reporter = StoreReporter(store, job_id, me, span=(0.0, _training_share(spec)))
    beat = Heartbeat(reporter, settings.heartbeat_interval_s)
    beat.start()
    log.info("job %s: attempt %s on %s", job_id, claimed["attempts"], me)
    try:
        callbacks = [reporter, *_shard_pool(self.app, job_id, me, claimed.get("queue"), spec.output)]
        result = _pipeline(spec.type)(spec, callbacks=callbacks, log=reporter.on_log)
    except SoftTimeLimitExceeded:
        store.fail(job_id, me, "time_limit_exceeded", f"the job ran past {settings.job_soft_time_limit_s} s")
        return "failed"
    except Exception as e:
        return _failed(store, job_id, me, e, output=spec.output)
    finally:
        beat.stop()
    if reporter.cancel and _stopped(result, reporter):
        store.dismiss(job_id, me, "dismissed on request; the last checkpoint is kept")
        return "dismissed"
    summary = dict(result) if isinstance(result, dict) else {"result": result}
    summary["run"] = {"attempt": claimed["attempts"], "resumed_from_iteration": reporter.resumed_from}
    if store.succeed(job_id, me, _jsonable(summary)) and not settings.keep_checkpoints:
        _drop_resume_state(store, job_id, str(spec.output))
    return "successful"


def _shard_pool(celery, job_id: str, me: str, queue: str | None, output) -> list:
    """The job's offer of sharded predictions (workers/pipelines/shards.py), as a callback; none when the
    pipelines cannot load here (the pipeline then fails with the reason)."""
    try:
        from workers.pipelines.shards import ShardPool
    except ModuleNotFoundError:
        return []
    settings = celery.settings
    queue = queue or GPU_QUEUE

    def send(folder: str, index: int) -> None:
        celery.send_task(RUN_SHARD, args=[job_id, folder, index], queue=queue, routing_key=queue)

    return [ShardPool(store=celery.job_store, job_id=job_id, worker=me, is_dead=make_is_dead(settings.orphan_after_s),
                      send=send, shard_pixels=settings.shard_pixels, cores=settings.worker_cores,
                      heartbeat_s=settings.heartbeat_interval_s, output=Path(output))]


@app.task(name=RUN_SHARD, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_shard(self, job_id: str, folder: str, index: int) -> str:
    """Run one shard of a job's sharded prediction, if nobody alive runs it and it is not written yet."""
    store = self.app.job_store
    if store is None:
        raise RuntimeError("the worker was started without a job store: use `geoadapt worker`")
    spec = store.job_spec(job_id)
    if spec is None or store.job_stopping(job_id):
        return "skipped"
    output = Path(spec["output"]).resolve()
    where = (output / folder).resolve()
    if not where.is_relative_to(output) or not where.is_dir():  # the message names a folder of the job's
        log.warning("job %s: no shard folder %s", job_id, folder)
        return "skipped"
    from workers.pipelines.shards import run_shard as run_one

    pools = _shard_pool(self.app, job_id, process_ident(), None, output)
    if not pools:
        return "skipped"
    outcome = run_one(pools[0], where, int(index))
    log.info("job %s: shard %s/%s %s", job_id, folder, index, outcome)
    return outcome


def _training_share(spec: JobSpec) -> float:
    """The share of the progress bar that training fills; predicting windows fills the rest, up to 99%."""
    if spec.type in ("predict", "suggest", "consensus"):
        return 0.0
    return 90.0 if spec.predicts_targets else 99.0


def _failed(store, job_id: str, me: str, e: Exception, *, output: Path | None) -> str:
    """Record a job's failure: a user's input (a typed error) as it says, anything else with its reason."""
    if isinstance(e, GeoadaptError):
        store.fail(job_id, me, e.code, str(e))
    else:  # a bug or an environment problem: the job fails, the worker lives on
        log.exception("job %s failed", job_id)
        store.fail(job_id, me, *failure_reason(e, str(output) if output is not None else None))
    return "failed"


def _drop_resume_state(store, job_id: str, output: str | None) -> None:
    """A job that succeeded never resumes: its checkpoints (tens of MB per training run) go, its bundle stays."""
    if not output:
        return
    try:
        dropped = drop_checkpoints(output)
        store.checkpoint(job_id, None)
    except Exception as e:  # the job has succeeded all the same; the files are only left behind
        log.warning("job %s: checkpoints not removed: %s", job_id, type(e).__name__)
        return
    if dropped:
        log.info("job %s: removed %d checkpoint folder(s)", job_id, len(dropped))


@app.task(name=DATASET_STATS, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def dataset_stats(self, dataset_id: str) -> str:
    """Per-band statistics of a registered dataset (one streaming pass), stored on its record."""
    store = self.app.job_store
    # marked as this process's, so the orphan sweep can tell a worker that died computing them
    paths = store.begin_dataset_stats(dataset_id, process_ident())
    if paths is None:  # gone, or done already
        return "skipped"
    try:
        stats = _band_stats(paths)
    except GeoadaptError as e:
        store.set_dataset_stats(dataset_id, {"status": "failed", "error": {"type": e.code, "message": str(e)}})
        return "failed"
    store.set_dataset_stats(dataset_id, {"status": "ok", **stats.to_dict()})
    return "ok"


@app.task(name=EXPORT_MODEL_ONNX, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def export_model_onnx(self, model_id: str) -> str:
    """A model's network as ONNX beside its weights (models.onnx_export), or why not: asked for by its download."""
    from core.bundle_manifest import bundle_dir_of
    from core.job_layout import output_dir
    from models.onnx_export import write_bundle_onnx

    bundle_dir = bundle_dir_of(output_dir(self.app.settings.job_dir(model_id)))
    if bundle_dir is None:  # deleted since it was asked for
        return "skipped"
    return "ok" if write_bundle_onnx(bundle_dir) is not None else "failed"


def _band_stats(paths: dict):
    from core.raster.scene import Scene
    from core.raster.stats import compute_stats

    with Scene.open(paths.get("bands") or [paths["image"]]) as scene:
        return compute_stats([scene])


# ---- worker lifecycle: store connections per process, liveness beat, orphan sweep ---------------

_beat_stop = threading.Event()
_name: list[str] = []
_beat_thread: list[threading.Thread] = []


@signals.worker_process_init.connect
def _after_fork(**_):
    if app.job_store is not None:
        app.job_store.after_fork()


def _worker_name(sender) -> str:
    return getattr(sender, "hostname", None) or f"celery@{socket.gethostname()}"


@signals.worker_ready.connect
def _on_ready(sender=None, **_):
    store, settings = app.job_store, app.settings
    if store is None:
        return
    name = _worker_name(sender)
    _name[:] = [name]
    queues = ",".join(sorted(q.name for q in app.amqp.queues.consume_from.values())) if app.amqp.queues else ""

    beat = threading.Thread(target=beat_loop, args=(store, settings, name, queues, _beat_stop), name="worker-beat",
                            daemon=True)
    _beat_thread[:] = [beat]
    beat.start()


def beat_loop(store, settings, name: str, queues: str, stop: threading.Event) -> None:
    """The worker's liveness beat every ``heartbeat_interval_s`` until ``stop``, and the orphan sweep at start and
    every ``orphan_after_s / 2`` (a worker on another machine may have died meanwhile). The sweep runs in a thread
    of its own, one at a time: its second look waits DELIVERY_SETTLE_S, and the beat must not."""
    last_sweep, sweeper = None, None
    while True:
        try:
            store.worker_beat(name, queues=queues, pid=os.getpid())
        except Exception as e:
            log.warning("worker heartbeat failed: %s", type(e).__name__)
        due = last_sweep is None or time.monotonic() - last_sweep >= settings.orphan_after_s / 2
        if due and (sweeper is None or not sweeper.is_alive()):
            last_sweep = time.monotonic()
            sweeper = threading.Thread(target=sweep_orphans, args=(store, settings), name="orphan-sweep", daemon=True)
            sweeper.start()
        if stop.wait(settings.heartbeat_interval_s):
            return


#: seconds a queued job's taken message is given to be claimed before the sweep counts it as dropped
DELIVERY_SETTLE_S = 5.0


def sweep_orphans(store, settings) -> list[str]:
    """Send again the jobs whose worker died (SIGKILL, OOM, power loss) and whose message will
    not come back soon (Redis: only after the visibility timeout; the SQL transport: never)."""
    sent = []
    try:
        for job_id, queue, worker in store.orphans(make_is_dead(settings.orphan_after_s)):
            log.warning("job %s lost its worker; sending it again to resume", job_id)
            app.send_task(RUN_JOB, args=[job_id], queue=queue, routing_key=queue)
            # accepted again: later sweeps do not send it twice while it waits in the queue
            store.requeued(job_id, worker)
            sent.append(job_id)
        if settings.embedded_broker:  # on Redis a dead worker's message comes back after the visibility timeout
            for dataset_id, worker in _orphaned_dataset_stats(store, settings):
                log.warning("statistics of dataset %s lost their worker; sending them again", dataset_id)
                app.send_task(DATASET_STATS, args=[dataset_id], queue=CPU_QUEUE, routing_key=CPU_QUEUE)
                store.requeued_dataset_stats(dataset_id, worker)
                sent.append(dataset_id)
        for task, task_id, queue in _dropped_deliveries(store, settings):
            log.warning("%s %s was taken from the queue by a worker that died before starting it; sending it "
                        "again", "job" if task == RUN_JOB else "statistics of dataset", task_id)
            app.send_task(task, args=[task_id], queue=queue, routing_key=queue)
            sent.append(task_id)
        if settings.embedded_broker:  # after the look above, which reads the taken messages
            purge_taken(settings.broker_url)
    except Exception as e:
        log.warning("orphan sweep failed: %s", type(e).__name__)
    return sent


def _orphaned_dataset_stats(store, settings) -> list[tuple[str, str]]:
    """(dataset id, worker) of dataset statistics being computed by a process that is gone (the embedded broker:
    its workers share this host, so the OS says)."""
    is_dead = make_is_dead(settings.orphan_after_s)
    return [(dataset_id, record.get("worker")) for dataset_id, record in store.unfinished_dataset_stats()
            if record.get("status") == "computing" and is_dead(record.get("worker"), None)]


def _dropped_deliveries(store, settings, settle_s: float = DELIVERY_SETTLE_S) -> list[tuple[str, str, str]]:
    """(task, job or dataset id, queue) of queued jobs and queued dataset statistics whose message the embedded
    broker handed to a worker, with none left waiting, and still not started ``settle_s`` later: the worker that
    took it died before starting it (workers.embedded_broker.task_messages). A live worker starts the work a few
    milliseconds after taking its message (prefetch 1: it takes one only for a free process), so a second look
    tells the two apart; a worker starting up, taking messages while it sweeps, would otherwise be seen as a dead
    one."""
    if not settings.embedded_broker:
        return []

    def pending_stats() -> list[tuple[str, str]]:
        return [(dataset_id, CPU_QUEUE) for dataset_id, record in store.unfinished_dataset_stats()
                if record.get("status") == "pending"]

    not_started = {RUN_JOB: store.unclaimed, DATASET_STATS: pending_stats}  # (id, queue) of work no worker began

    def dropped() -> set[tuple[str, str, str]]:
        out = set()
        for task, read in not_started.items():
            if not read():
                continue
            messages = task_messages(settings.broker_url, task)
            # the store read again after the messages: work started meanwhile no longer counts
            out |= {(task, task_id, queue) for task_id, queue in read()
                    if task_id in messages.taken and task_id not in messages.waiting}
        return out

    first = dropped()
    if not first:
        return []
    time.sleep(settle_s)
    return sorted(first & dropped())


@signals.worker_shutdown.connect
def _on_shutdown(sender=None, **_):
    record_stop(sender)


def record_stop(sender=None) -> None:
    """End the liveness beat and mark this worker stopped in the store. Celery's worker_shutdown signal calls it on
    a warm shutdown; a cold one (SIGQUIT: how `serve` stops its workers) sends no such signal, so the worker
    command calls it again once Celery has returned (a second call writes the same)."""
    _beat_stop.set()
    for beat in _beat_thread:  # a beat written after ours would mark the worker alive again
        beat.join(timeout=10)
    name = _name[0] if _name else _worker_name(sender) if sender is not None else None
    if app.job_store is not None and name is not None:  # None: never ready, so never recorded as alive
        try:
            app.job_store.worker_beat(name, queues="", pid=os.getpid(), stopped=True)
        except Exception:
            pass
