"""Task plumbing without a broker: the reporter on a real SQLite store, liveness, Celery config."""
from __future__ import annotations

import socket
import subprocess
import sys
import uuid

import pytest
from celery import Celery

from core import task_names
from service import queue as service_queue
from service.settings import Settings
from service.store import datasets, jobs, tokens
from service.store import workers as worker_rows
from service.store.db import session_scope
from service.store.for_workers import WorkerJobStore
from workers import celery_app, tasks


@pytest.fixture
def store(tmp_path):
    settings = Settings(data_dir=tmp_path, broker_url="memory://")
    settings.ensure_dirs()
    return WorkerJobStore(settings)


def _job(store, spec: dict | None = None) -> str:
    """A job put in the store as it is, without the API's checks (as one stored before a rule was added)."""
    with session_scope(store.sessions) as s:
        tok, _ = tokens.create_token(s)
        job, _ = jobs.create_job(s, job_id=uuid.uuid4(), owner_id=tok.id, spec=spec or {"type": "train"}, queue="gpu")
        return str(job.id)


def _row(store, job_id):
    with store.sessions() as s:
        return s.get(jobs.Job, uuid.UUID(job_id))


class _P:  # the fields of models.training.callbacks.Progress that the reporter reads
    def __init__(self, iteration, total, eta_s=None, stage="training"):
        self.iteration, self.total, self.eta_s, self.stage = iteration, total, eta_s, stage


def test_reporter_writes_progress_throttled_and_relays_cancel(store):
    job_id = _job(store)
    assert store.claim(job_id, "me", lambda ident, age: False)["attempts"] == 1
    rep = tasks.StoreReporter(store, job_id, "me", span=(0.0, 90.0), min_interval_s=3600)
    rep.on_log("computing band statistics")
    assert _row(store, job_id).stage == "preparing"
    rep.on_start(0, 100)
    rep.on_progress(_P(50, 100, eta_s=5.0))  # within the interval: not written
    row = _row(store, job_id)
    assert (row.stage, row.done, row.total, row.progress) == ("training", 0, 100, 0.0)
    rep.min_interval_s = 0
    rep.on_progress(_P(50, 100, eta_s=5.0))
    row = _row(store, job_id)
    assert (row.done, row.progress, row.eta_s) == (50, 45.0, 5.0) and row.heartbeat_at is not None
    rep.on_stage("predicting", 1, 2)
    assert _row(store, job_id).progress == pytest.approx(94.5)
    rep.on_progress(_P(60, 100))  # progress never goes backwards
    assert _row(store, job_id).progress == pytest.approx(94.5)
    rep.on_checkpoint(60, "/x/last.pth", "last")
    assert _row(store, job_id).checkpoint_path == "/x/last.pth"
    assert rep.should_stop() is False
    with session_scope(store.sessions) as s:
        jobs.request_cancel(s, s.get(jobs.Job, uuid.UUID(job_id)))
    assert rep.should_stop() is True


def test_a_loop_that_is_no_training_names_its_own_stage_at_once(store):
    """An adabn job's batches go through the same progress hooks; its stage shows from the first one on, not
    "training" (a changed stage is written within the throttle interval)."""
    job_id = _job(store)
    store.claim(job_id, "me", lambda ident, age: False)
    rep = tasks.StoreReporter(store, job_id, "me", min_interval_s=3600)
    rep.on_start(0, 10)
    rep.on_progress(_P(0, 10, stage="re-estimating batch-norm statistics"))
    assert (_row(store, job_id).stage, _row(store, job_id).total) == ("re-estimating batch-norm statistics", 10)
    rep.on_progress(_P(5, 10, stage="re-estimating batch-norm statistics"))  # same stage: throttled
    assert _row(store, job_id).done == 0


def test_liveness_of_the_process_recorded_on_a_job():
    is_dead = tasks.make_is_dead(orphan_after_s=60)
    assert not is_dead(tasks.process_ident(), 0.0)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert is_dead(f"{socket.gethostname()}:{gone.pid}:1", 0.0)
    host, pid, start = tasks.process_ident().rsplit(":", 2)
    assert is_dead(f"{host}:{pid}:{int(start or 0) + 1}", 0.0)  # same pid, another process start
    assert not is_dead("elsewhere:1:1", 10.0)  # another host: only a stale heartbeat says dead
    assert is_dead("elsewhere:1:1", 61.0)
    assert is_dead(None, None)


def test_api_and_workers_agree_on_names_and_reliability_settings(tmp_path):
    # the API sends by core's names (it imports no worker code): the tasks must be registered under them
    assert tasks.run_job.name == task_names.RUN_JOB and tasks.dataset_stats.name == task_names.DATASET_STATS
    s = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/0", job_soft_time_limit_s=100,
                 job_hard_time_limit_s=200)
    conf = celery_app.celery_config(s)
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_transport_options"]["visibility_timeout"] > conf["task_time_limit"] > conf["task_soft_time_limit"]
    assert {q.name for q in conf["task_queues"]} == {"gpu", "cpu"} == {q.name for q in service_queue.task_queues()}
    assert tasks.run_job.acks_late and tasks.run_job.reject_on_worker_lost
    embedded = celery_app.celery_config(Settings(data_dir=tmp_path))
    assert "visibility_timeout" not in embedded["broker_transport_options"]  # the SQL transport takes engine args



def test_workers_poll_the_embedded_broker_often_and_read_what_the_api_sends(tmp_path):
    """kombu's SQL transport sleeps a second whenever its queues are empty; the workers' transport looks ten times
    a second, on the same tables the API's stock transport writes to (a real SQLite broker file)."""
    s = Settings(data_dir=tmp_path)
    worker = Celery("worker", set_as_current=False)
    worker.conf.update(celery_app.celery_config(s))
    api = service_queue.make_producer(s)
    with api.connection_for_write() as sender, worker.connection_for_read() as receiver:
        assert sender.transport.polling_interval == 1.0  # the stock transport, which the API keeps
        assert receiver.transport.polling_interval == task_names.EMBEDDED_BROKER_POLL_S
        sender.SimpleQueue("probe").put({"job": 1})
        message = receiver.SimpleQueue("probe").get(timeout=5)
        assert message.payload == {"job": 1}
        message.ack()
    redis = celery_app.celery_config(Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/0"))
    assert redis["broker_url"] == "redis://127.0.0.1:6379/0" and "broker_transport" not in redis
    assert "polling_interval" not in redis["broker_transport_options"]


def test_the_workers_polling_interval_is_a_setting(tmp_path):
    # GEOADAPT_BROKER_POLL_S: the transport reads it; SQLAlchemy's create_engine, which refuses it, never sees it
    worker = Celery("worker", set_as_current=False)
    worker.conf.update(celery_app.celery_config(Settings(data_dir=tmp_path, broker_poll_s=0.5)))
    api = service_queue.make_producer(Settings(data_dir=tmp_path))
    with worker.connection_for_read() as receiver:  # first: kombu caches one engine per database
        assert receiver.transport.polling_interval == 0.5
        queue = receiver.SimpleQueue("probe")
        with api.connection_for_write() as sender:
            sender.SimpleQueue("probe").put({"job": 2})
        message = queue.get(timeout=5)
        assert message.payload == {"job": 2}
        message.ack()
    for bad in (0, 10):
        with pytest.raises(ValueError, match="broker_poll_s"):
            Settings(data_dir=tmp_path, broker_poll_s=bad)


def _spec_files(tmp_path, **fields) -> dict:
    for name in ("img.tif", "lab.tif", "tgt.tif"):
        (tmp_path / name).write_bytes(b"")
    return {"type": "train", "classes": [{"id": 1, "name": "a", "color": "#ff0000"}],
            "source": {"scenes": [{"image": str(tmp_path / "img.tif"), "labels": str(tmp_path / "lab.tif")}]},
            "output": str(tmp_path / "out"), **fields}


@pytest.fixture
def worker_app(store, tmp_path, monkeypatch):
    """The task's app with a store and settings, and a pipeline that records what it is given."""
    monkeypatch.setattr(celery_app.app, "job_store", store)
    monkeypatch.setattr(celery_app.app, "settings", Settings(data_dir=tmp_path, broker_url="memory://"))
    ran = []

    def pipeline(spec, callbacks, log):
        ran.append((spec, callbacks[0].span))
        return {"status": "finished"}

    monkeypatch.setattr(tasks, "_pipeline", lambda job_type: pipeline)
    return ran


def test_the_worker_refuses_a_stored_spec_that_breaks_a_rule_before_any_pipeline(store, tmp_path, worker_app):
    job_id = _job(store, _spec_files(tmp_path, method="st-dasegnet"))
    assert tasks.run_job(job_id) == "failed"
    row = _row(store, job_id)
    assert row.status == "failed" and row.error_type == "invalid_spec"
    assert row.error_message.startswith("method: a train job trains a plain segmentor"), row.error_message
    assert worker_app == []


@pytest.mark.parametrize("fields, trained", [
    ({}, 99.0),
    ({"type": "adapt", "method": "st-dasegnet", "target": {"scenes": [{"image": "tgt.tif"}]}}, 90.0),
    ({"type": "adapt", "method": "st-dasegnet", "target": {"scenes": [{"image": "tgt.tif"}]},
      "params": {"predict_targets": False}}, 99.0),
])
def test_the_worker_runs_the_validated_spec_with_the_share_training_fills(store, tmp_path, worker_app, fields,
                                                                          trained):
    data = _spec_files(tmp_path, **fields)
    if "target" in fields:
        data["target"] = {"scenes": [{"image": str(tmp_path / "tgt.tif")}]}
    job_id = _job(store, data)
    assert tasks.run_job(job_id) == "successful"
    [(spec, span)] = worker_app
    assert spec.type == data["type"] and spec.training_method == data.get("method", "source-only")
    assert span == (0.0, trained)


def _queued_on_the_embedded_broker(tmp_path, count: int):
    """The embedded settings, their job store, ``count`` jobs sent to the gpu queue by the API's producer (a real
    SQLite broker file), and a worker's Celery app configured as the workers configure it."""
    s = Settings(data_dir=tmp_path)
    s.ensure_dirs()
    store = WorkerJobStore(s)
    ids = [_job(store) for _ in range(count)]
    api = service_queue.make_producer(s)
    for job_id in ids:
        service_queue.enqueue(api, job_id, "gpu")
    worker = Celery("worker", set_as_current=False)
    worker.conf.update(celery_app.celery_config(s))
    return s, store, ids, worker


def test_a_taken_message_counts_as_dropped_only_if_its_job_stays_unclaimed(tmp_path):
    """Two queued jobs whose messages a worker took (a real SQLite broker): one is claimed during the sweep's
    second look, as a live worker claims what it takes; the other never is. Only the second is dropped."""
    import threading

    s, store, (claimed, dropped, _), worker = _queued_on_the_embedded_broker(tmp_path, 3)
    with worker.connection_for_read() as conn:
        queue = conn.SimpleQueue("gpu")
        taken = [queue.get(timeout=5), queue.get(timeout=5)]  # in the order sent; the third stays waiting
        assert [m.payload[0][0] for m in taken] == [claimed, dropped]
        threading.Timer(0.3, lambda: store.claim(claimed, "live", lambda ident, age: False)).start()
        assert tasks._dropped_deliveries(store, s, settle_s=1.0) == [("geoadapt.run_job", dropped, "gpu")]
    assert tasks._dropped_deliveries(store, Settings(data_dir=tmp_path, broker_url="memory://")) == []


def _dataset(store, stats: dict) -> str:
    """A dataset put in the store with this statistics record."""
    with session_scope(store.sessions) as s:
        tok, _ = tokens.create_token(s)
        ds = datasets.create_dataset(s, dataset_id=uuid.uuid4(), owner_id=tok.id, name="d", kind="bands",
                                     paths={"bands": ["b1.tif"]}, stats=stats)
        return str(ds.id)


def test_dataset_statistics_dropped_or_orphaned_on_the_embedded_broker_are_found(tmp_path):
    """Statistics whose message a worker took (a real SQLite broker) and never began count as dropped; statistics
    being computed by a process that is gone count as orphaned, not those of a live one; either way, once sent
    again, they wait as pending."""
    from core.task_names import CPU_QUEUE, DATASET_STATS

    s, store, _, worker = _queued_on_the_embedded_broker(tmp_path, 0)
    dropped, waiting = _dataset(store, {"status": "pending"}), _dataset(store, {"status": "pending"})
    api = service_queue.make_producer(s)
    for dataset_id in (dropped, waiting):
        service_queue.enqueue(api, dataset_id, CPU_QUEUE, task=DATASET_STATS)
    with worker.connection_for_read() as conn:
        assert conn.SimpleQueue(CPU_QUEUE).get(timeout=5).payload[0][0] == dropped
        assert tasks._dropped_deliveries(store, s, settle_s=0.2) == [(DATASET_STATS, dropped, CPU_QUEUE)]
        assert store.begin_dataset_stats(dropped, tasks.process_ident()) == {"bands": ["b1.tif"]}
        assert tasks._dropped_deliveries(store, s, settle_s=0.2) == []  # begun: no longer dropped

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead_ident = f"{socket.gethostname()}:{gone.pid}:1"
    orphan = _dataset(store, {"status": "computing", "worker": dead_ident})
    assert tasks._orphaned_dataset_stats(store, s) == [(orphan, dead_ident)]  # the live one (dropped) is not
    store.requeued_dataset_stats(orphan, dead_ident)
    assert dict(store.unfinished_dataset_stats())[orphan] == {"status": "pending"}
    store.set_dataset_stats(dropped, {"status": "ok"})
    assert store.begin_dataset_stats(dropped, "another") is None  # done: a message sent again is skipped


def test_taken_messages_are_purged_an_hour_after_they_were_taken(tmp_path):
    """kombu's SQL transport keeps every message it handed out (a real SQLite broker): those taken over an hour ago
    go; one taken just now, and one still waiting, stay."""
    import sqlite3

    from workers.embedded_broker import TAKEN_KEPT_S, task_messages, purge_taken

    s, _, (_, recent, waiting), worker = _queued_on_the_embedded_broker(tmp_path, 3)
    with worker.connection_for_read() as conn:
        queue = conn.SimpleQueue("gpu")
        for _ in range(2):
            queue.get(timeout=5).ack()
    db = sqlite3.connect(s.broker_url.removeprefix("sqla+sqlite:///"))
    stamps = [r[0] for r in db.execute("SELECT timestamp FROM kombu_message WHERE visible = 0 ORDER BY id")]
    sent = [r[0] for r in db.execute("SELECT timestamp FROM kombu_message WHERE visible = 1")]
    assert sent == [None] and None not in stamps  # stamped when taken (not when sent): what the purge counts from
    with db:  # the first one taken an hour and a minute ago
        db.execute("UPDATE kombu_message SET timestamp = datetime(timestamp, ?) WHERE id = "
                   "(SELECT min(id) FROM kombu_message)", (f"-{int(TAKEN_KEPT_S) + 60} seconds",))
    db.close()
    assert purge_taken(s.broker_url) == 1
    messages = task_messages(s.broker_url)
    assert messages.taken == {recent} and messages.waiting == {waiting}
    assert purge_taken("redis://127.0.0.1:6379/0") == 0


def test_the_worker_beat_goes_on_while_a_sweep_waits(store, monkeypatch, tmp_path):
    import threading
    import time

    # the sweep's second look sleeps DELIVERY_SETTLE_S; here a sweep that takes 1 s, beats every 0.05 s
    beats, sweeps = [], []
    real_beat = store.worker_beat

    def beat(*args, **kw):
        real_beat(*args, **kw)
        beats.append(time.monotonic())

    def slow_sweep(store, settings):
        sweeps.append(time.monotonic())
        time.sleep(1.0)

    monkeypatch.setattr(store, "worker_beat", beat)
    monkeypatch.setattr(tasks, "sweep_orphans", slow_sweep)
    # shorter than the service allows, so the test takes seconds (model_copy does not validate)
    settings = Settings(data_dir=tmp_path, broker_url="memory://").model_copy(
        update={"heartbeat_interval_s": 0.05, "orphan_after_s": 1})
    stop = threading.Event()
    loop = threading.Thread(target=tasks.beat_loop, args=(store, settings, "celery@test", "jobs", stop))
    loop.start()
    time.sleep(1.6)
    stop.set()
    loop.join(timeout=5)
    assert not loop.is_alive()
    gaps = [b - a for a, b in zip(beats, beats[1:])]
    assert len(beats) >= 10 and max(gaps) < 0.5  # the beat never waited for the sweep
    # one sweep at a time: the second starts only after the first has finished, though due every 0.5 s
    assert len(sweeps) >= 2 and all(b - a >= 1.0 for a, b in zip(sweeps, sweeps[1:]))
    with session_scope(store.sessions) as s:  # the beats reached the store
        assert [w.name for w in worker_rows.alive(s, within_s=60)] == ["celery@test"]
