"""Job records: submit with idempotency, owner-scoped reads, cancel, and the worker-side updates."""
from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any, Callable

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.errors import ConflictError, NotFoundError
from service.store.tables import (
    ACCEPTED,
    DISMISSED,
    FAILED,
    FINAL_STATES,
    RUNNING,
    SUCCESSFUL,
    Job,
    Token,
    utcnow,
)


def body_hash(body: Any) -> str:
    """Hash of the request body as data (key order and whitespace do not matter)."""
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).hexdigest()


def _as_uuid(job_id: str | uuid.UUID) -> uuid.UUID:
    if isinstance(job_id, uuid.UUID):
        return job_id
    try:
        return uuid.UUID(str(job_id))
    except ValueError:
        raise NotFoundError(f"no job {job_id}") from None


def find_by_idempotency_key(session: Session, owner_id: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == key))


def check_idempotent(job: Job, digest: str) -> Job:
    if job.body_hash != digest:
        raise ConflictError(
            "this Idempotency-Key was already used with a different request body", field="Idempotency-Key"
        )
    return job


def create_job(
    session: Session,
    *,
    job_id: uuid.UUID,
    owner_id: str,
    spec: dict,
    queue: str,
    idempotency_key: str | None = None,
    digest: str | None = None,
) -> tuple[Job, bool]:
    """Insert a job; with an idempotency key already used by this owner return that job instead.

    Returns (job, created). Two concurrent submits with one key race on the unique constraint;
    the loser reads the winner's job.
    """
    if idempotency_key:
        existing = find_by_idempotency_key(session, owner_id, idempotency_key)
        if existing is not None:
            return check_idempotent(existing, digest or ""), False
    job = Job(
        id=job_id,
        owner_id=owner_id,
        type=spec["type"],
        method=spec.get("method") or "",
        spec=spec,
        queue=queue,
        idempotency_key=idempotency_key,
        body_hash=digest,
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        if idempotency_key:
            existing = find_by_idempotency_key(session, owner_id, idempotency_key)
            if existing is not None:
                return check_idempotent(existing, digest or ""), False
        raise
    return job, True


def _visible(stmt, viewer: Token):
    return stmt if viewer.admin else stmt.where(Job.owner_id == viewer.id)


def get_job(session: Session, job_id: str | uuid.UUID, viewer: Token) -> Job:
    """The job if the viewer may see it; otherwise NotFound (not 403: do not confirm it exists)."""
    job = session.get(Job, _as_uuid(job_id))
    if job is None or (not viewer.admin and job.owner_id != viewer.id):
        raise NotFoundError(f"no job {job_id}")
    return job


def list_jobs(
    session: Session,
    viewer: Token,
    *,
    status: str | None = None,
    type: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Job], int]:
    q = _visible(select(Job), viewer)
    if status:
        q = q.where(Job.status == status)
    if type:
        q = q.where(Job.type == type)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = session.scalars(q.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset))
    return list(rows), int(total)


def request_cancel(session: Session, job: Job) -> Job:
    """Dismiss a queued job at once; ask a running one to stop (the worker checkpoints and stops)."""
    if job.status in FINAL_STATES:
        raise ConflictError(f"job {job.id} is already {job.status}")
    now = utcnow()
    if job.status == ACCEPTED:
        # conditional: a worker may have claimed it a moment ago, then it is a running cancel
        res = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == ACCEPTED)
            .values(status=DISMISSED, cancel_requested=True, finished_at=now, updated_at=now,
                    message="dismissed before it started")
        )
        if res.rowcount == 1:
            session.commit()
            session.refresh(job)
            return job
    session.execute(update(Job).where(Job.id == job.id).values(cancel_requested=True, updated_at=now))
    session.commit()
    session.refresh(job)
    return job


# ---- worker side -----------------------------------------------------------------------------

def claim(
    session: Session,
    job_id: str | uuid.UUID,
    worker: str,
    *,
    previous_run_dead: Callable[[Job], bool],
    max_attempts: int = 5,
) -> Job | None:
    """Mark the job running under `worker`, or return None when it must not run here.

    It runs when accepted, or when running under a worker that is gone (killed mid-job: the
    message came back, or the orphan sweep sent it again). A duplicate delivery of a job that is
    alive elsewhere, or of a finished/dismissed one, returns None.
    """
    job = session.get(Job, _as_uuid(job_id))
    if job is None or job.status not in (ACCEPTED, RUNNING):
        return None
    if job.status == RUNNING and not previous_run_dead(job):
        return None
    now = utcnow()
    if job.attempts >= max_attempts:  # it kills its worker every time (memory, time limit): stop
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.attempts == job.attempts, Job.status == job.status)
            .values(status=FAILED, finished_at=now, updated_at=now, eta_s=None, error_type="worker_lost",
                    error_message=f"the worker running this job was lost {job.attempts} times (killed, out of "
                                  "memory or over the time limit); it is not started again")
        )
        session.commit()
        return None
    if job.cancel_requested:  # dismissed while queued, or while its dead worker ran it: do not run
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.attempts == job.attempts, Job.status == job.status)
            .values(status=DISMISSED, finished_at=now, updated_at=now, eta_s=None,
                    message="dismissed on request; the last checkpoint is kept")
        )
        session.commit()
        return None
    # optimistic: attempts must be what we read, so two workers cannot both claim it
    res = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.attempts == job.attempts, Job.status == job.status)
        .values(status=RUNNING, attempts=job.attempts + 1, worker=worker, heartbeat_at=now,
                started_at=job.started_at or now, updated_at=now, error_type=None, error_message=None)
    )
    session.commit()
    if res.rowcount != 1:
        return None
    session.refresh(job)
    return job


def heartbeat(session: Session, job_id: uuid.UUID, worker: str, **progress) -> bool:
    """Record liveness (and progress fields when given); return whether the run should stop:
    a cancel was requested, or this worker no longer owns the job (another took it over after
    its heartbeat went stale), so two runs never write the same job folder for long."""
    values = {"heartbeat_at": utcnow(), **progress}
    res = session.execute(
        update(Job).where(Job.id == job_id, Job.worker == worker, Job.status == RUNNING).values(**values)
    )
    session.commit()
    if res.rowcount != 1:
        return True
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def set_checkpoint(session: Session, job_id: uuid.UUID, path: str) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(checkpoint_path=path, updated_at=utcnow()))
    session.commit()


def _finish(session: Session, job_id: uuid.UUID, worker: str, **values) -> bool:
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker == worker, Job.status == RUNNING)
        .values(finished_at=now, updated_at=now, eta_s=None, **values)
    )
    session.commit()
    return res.rowcount == 1


def finish(session: Session, job_id: uuid.UUID, worker: str, results: dict) -> bool:
    return _finish(session, job_id, worker, status=SUCCESSFUL, progress=100.0, results=results,
                   stage="done")


def fail(session: Session, job_id: uuid.UUID, worker: str, error_type: str, message: str) -> bool:
    return _finish(session, job_id, worker, status=FAILED, error_type=error_type, error_message=message[:4000])


def dismiss(session: Session, job_id: uuid.UUID, worker: str, message: str = "dismissed on request") -> bool:
    return _finish(session, job_id, worker, status=DISMISSED, message=message)


def mark_requeued(session: Session, job_id: uuid.UUID, worker: str | None) -> bool:
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == RUNNING, Job.worker == worker)
        .values(status=ACCEPTED, worker=None, updated_at=now, eta_s=None,
                message="its worker was lost; queued again to resume from the last checkpoint")
    )
    session.commit()
    return res.rowcount == 1


def running_jobs(session: Session) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.status == RUNNING)))


def accepted_jobs(session: Session) -> list[Job]:
    """Jobs queued and not yet claimed by a worker."""
    return list(session.scalars(select(Job).where(Job.status == ACCEPTED)))
