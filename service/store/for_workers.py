"""The job store as workers see it: a small object the worker entry point hands to the Celery app.

Workers never import the service (layering); `geoadapt worker` builds this adapter from the
settings and injects it, so tasks talk to the store only through these methods.
"""
from __future__ import annotations

import os
import threading
import uuid
from typing import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.store import jobs, shards, workers
from service.store.db import init_db, make_engine, session_factory, session_scope
from service.store.tables import STATS_COMPUTING, STATS_OK, STATS_PENDING, Dataset, Job


class _ForkGuard:
    """SQLite keeps its lock state in process memory: a process forked while this one is inside a
    store transaction (the pool process Celery starts in place of a dead one, while the main process
    writes its heartbeat) inherits a lock nobody will release, and cannot write the store for its whole
    life ("database is locked"). So sessions hold this lock, and every fork waits for it."""

    def __init__(self):
        self.lock = threading.RLock()
        os.register_at_fork(before=lambda: self.lock.acquire(), after_in_parent=lambda: self.lock.release(),
                            after_in_child=self._fresh)

    def _fresh(self) -> None:
        self.lock = threading.RLock()


_GUARD = _ForkGuard()


class _ForkSafeSession(Session):
    """A session that holds the fork guard from its creation to its close (SQLite stores only)."""

    def __init__(self, *args, **kw):
        lock = _GUARD.lock
        lock.acquire()
        self._fork_guard = lock
        super().__init__(*args, **kw)

    def close(self) -> None:
        try:
            super().close()
        finally:
            lock = self.__dict__.pop("_fork_guard", None)
            if lock is not None:
                lock.release()


class WorkerJobStore:
    def __init__(self, settings):
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        init_db(self.engine)
        if self.engine.dialect.name == "sqlite":
            self.sessions = sessionmaker(self.engine, expire_on_commit=False, class_=_ForkSafeSession)
        else:
            self.sessions = session_factory(self.engine)

    def after_fork(self) -> None:
        """A forked pool process must not share the parent's database connections."""
        self.engine.dispose(close=False)

    # jobs --------------------------------------------------------------------------------------
    def claim(self, job_id: str, worker: str, is_dead: Callable[[str | None, float | None], bool]) -> dict | None:
        """The job's spec if this process should run it now (see jobs.claim), else None."""

        def previous_run_dead(job: Job) -> bool:
            age = None
            if job.heartbeat_at is not None:
                age = (jobs.utcnow() - job.heartbeat_at).total_seconds()
            return is_dead(job.worker, age)

        with session_scope(self.sessions) as s:
            job = jobs.claim(s, job_id, worker, previous_run_dead=previous_run_dead,
                             max_attempts=self.settings.max_attempts)
            if job is None:
                return None
            return {"spec": job.spec, "attempts": job.attempts, "checkpoint": job.checkpoint_path,
                    "job_dir": str(self.settings.job_dir(job.id)), "queue": job.queue}

    def report(self, job_id: str, worker: str, **fields) -> bool:
        """Write progress fields (and the heartbeat); return whether a cancel was requested."""
        allowed = {"progress", "stage", "done", "total", "eta_s", "message"}
        values = {k: v for k, v in fields.items() if k in allowed}
        with session_scope(self.sessions) as s:
            return jobs.heartbeat(s, uuid.UUID(job_id), worker, **values)

    def checkpoint(self, job_id: str, path: str) -> None:
        with session_scope(self.sessions) as s:
            jobs.set_checkpoint(s, uuid.UUID(job_id), path)

    def succeed(self, job_id: str, worker: str, results: dict) -> bool:
        with session_scope(self.sessions) as s:
            return jobs.finish(s, uuid.UUID(job_id), worker, results)

    def fail(self, job_id: str, worker: str, error_type: str, message: str) -> bool:
        with session_scope(self.sessions) as s:
            return jobs.fail(s, uuid.UUID(job_id), worker, error_type, message)

    def dismiss(self, job_id: str, worker: str, message: str) -> bool:
        with session_scope(self.sessions) as s:
            return jobs.dismiss(s, uuid.UUID(job_id), worker, message)

    def orphans(self, is_dead: Callable[[str | None, float | None], bool]) -> list[tuple[str, str, str | None]]:
        """(job id, queue, worker) of running jobs whose worker is gone: to be sent again."""
        out = []
        with session_scope(self.sessions) as s:
            for job in jobs.running_jobs(s):
                age = (jobs.utcnow() - job.heartbeat_at).total_seconds() if job.heartbeat_at else None
                if is_dead(job.worker, age):
                    out.append((str(job.id), job.queue, job.worker))
        return out

    def unclaimed(self) -> list[tuple[str, str]]:
        """(job id, queue) of queued jobs that no worker has claimed yet."""
        with session_scope(self.sessions) as s:
            return [(str(job.id), job.queue) for job in jobs.accepted_jobs(s)]

    def requeued(self, job_id: str, worker: str | None) -> None:
        """After sending an orphan again: back to accepted, unless a worker already claimed it."""
        with session_scope(self.sessions) as s:
            jobs.mark_requeued(s, uuid.UUID(job_id), worker)

    def job_spec(self, job_id: str) -> dict | None:
        """A job's stored spec (shard tasks read what the job predicts from it), None if it is gone."""
        with self.sessions() as s:
            job = s.get(Job, uuid.UUID(job_id))
            return dict(job.spec) if job is not None else None

    # shards of sharded predictions (service/store/shards.py) -------------------------------------
    def plan_shards(self, job_id: str, part: str, n: int, *, fresh: bool = False) -> None:
        with session_scope(self.sessions) as s:
            shards.plan(s, uuid.UUID(job_id), part, n, fresh=fresh)

    def shards(self, job_id: str, part: str) -> list[dict]:
        """Each shard's index, status, worker, heartbeat age (s), attempts and result."""
        now = jobs.utcnow()
        with self.sessions() as s:
            return [{"index": r.index, "status": r.status, "worker": r.worker, "attempts": r.attempts,
                     "heartbeat_age_s": (now - r.heartbeat_at).total_seconds() if r.heartbeat_at else None,
                     "result": r.result} for r in shards.shards(s, uuid.UUID(job_id), part)]

    def claim_shard(self, job_id: str, part: str, index: int, worker: str,
                    is_dead: Callable[[str | None, float | None], bool]) -> int | None:
        """Claim a shard (see shards.claim); returns this run's attempt number, or None."""

        def claimant_dead(rec) -> bool:
            age = (jobs.utcnow() - rec.heartbeat_at).total_seconds() if rec.heartbeat_at else None
            return is_dead(rec.worker, age)

        with session_scope(self.sessions) as s:
            rec = shards.claim(s, uuid.UUID(job_id), part, index, worker, claimant_dead)
            return rec.attempts if rec is not None else None

    def shard_beat(self, job_id: str, part: str, index: int, worker: str) -> bool:
        """Heartbeat of a shard run; True when it should stop."""
        with session_scope(self.sessions) as s:
            return shards.beat(s, uuid.UUID(job_id), part, index, worker)

    def shard_done(self, job_id: str, part: str, index: int, result: dict) -> bool:
        with session_scope(self.sessions) as s:
            return shards.finish(s, uuid.UUID(job_id), part, index, result)

    def shard_failed(self, job_id: str, part: str, index: int, worker: str, error: dict) -> bool:
        with session_scope(self.sessions) as s:
            return shards.fail(s, uuid.UUID(job_id), part, index, worker, error)

    def shard_released(self, job_id: str, part: str, index: int, worker: str) -> bool:
        with session_scope(self.sessions) as s:
            return shards.release(s, uuid.UUID(job_id), part, index, worker)

    def job_stopping(self, job_id: str) -> bool:
        with self.sessions() as s:
            return shards.job_stopping(s, uuid.UUID(job_id))

    # datasets ----------------------------------------------------------------------------------
    def begin_dataset_stats(self, dataset_id: str, worker: str) -> dict | None:
        """The dataset's paths, its statistics now marked as computed by ``worker``; None if the dataset is gone or
        its statistics are done (a message sent again after they were)."""
        with session_scope(self.sessions) as s:
            ds = s.get(Dataset, uuid.UUID(dataset_id))
            if ds is None or (ds.stats or {}).get("status") == STATS_OK:
                return None
            ds.stats = {"status": STATS_COMPUTING, "worker": worker}
            return dict(ds.paths)

    def requeued_dataset_stats(self, dataset_id: str, worker: str | None) -> None:
        """After sending a dataset's statistics again: pending, unless another worker took them meanwhile."""
        with session_scope(self.sessions) as s:
            ds = s.get(Dataset, uuid.UUID(dataset_id))
            if ds is not None and (ds.stats or {}).get("worker") == worker:
                ds.stats = {"status": STATS_PENDING}

    def unfinished_dataset_stats(self) -> list[tuple[str, dict]]:
        """(dataset id, statistics record) of the datasets whose statistics are queued or being computed."""
        with self.sessions() as s:
            return [(str(ds.id), dict(ds.stats)) for ds in s.scalars(select(Dataset))
                    if (ds.stats or {}).get("status") in (STATS_PENDING, STATS_COMPUTING)]

    def set_dataset_stats(self, dataset_id: str, stats: dict) -> None:
        with session_scope(self.sessions) as s:
            ds = s.get(Dataset, uuid.UUID(dataset_id))
            if ds is not None:
                ds.stats = stats

    # workers -----------------------------------------------------------------------------------
    def worker_beat(self, name: str, *, queues: str, pid: int, stopped: bool = False) -> None:
        with session_scope(self.sessions) as s:
            workers.beat(s, name, queues=queues, pid=pid, stopped=stopped)
