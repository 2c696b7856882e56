"""Shard records of sharded predictions: planned once per prediction, claimed by one live process at a time
(the same optimistic rule as job claims), kept alive by heartbeats, marked done once their part is written.

    plan(job, part, n)        rows 0..n-1, pending (again: no change, so a resumed job keeps what is done;
                              fresh: a new plan of the part, earlier records dropped)
    claim(..., me, dead?)     pending, or running under a dead process -> running under me, attempts + 1
    beat(..., me)             heartbeat; says stop when the job is cancelled or ended, or I lost the claim
    finish / fail / release   done (with figures) | failed (with the error) | pending again (stopped)
"""
from __future__ import annotations

import uuid
from typing import Callable

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from service.store.tables import (
    FINAL_STATES,
    SHARD_DONE,
    SHARD_FAILED,
    SHARD_PENDING,
    SHARD_RUNNING,
    Job,
    JobShard,
    utcnow,
)


def plan(session: Session, job_id: uuid.UUID, part: str, n: int, *, fresh: bool = False) -> None:
    """Make sure shards 0..n-1 of ``part`` exist (a resumed coordinator keeps the records it finds);
    ``fresh``: a new plan, so records an earlier plan of the same part left go first."""
    if fresh:
        session.execute(delete(JobShard).where(JobShard.job_id == job_id, JobShard.part == part))
    have = set(session.scalars(select(JobShard.index).where(JobShard.job_id == job_id, JobShard.part == part)))
    for i in range(n):
        if i not in have:
            session.add(JobShard(job_id=job_id, part=part, index=i, status=SHARD_PENDING))
    session.commit()


def shards(session: Session, job_id: uuid.UUID, part: str) -> list[JobShard]:
    return list(session.scalars(
        select(JobShard).where(JobShard.job_id == job_id, JobShard.part == part).order_by(JobShard.index)))


def job_stopping(session: Session, job_id: uuid.UUID) -> bool:
    """Whether the shards of a job should stop: a cancel was asked for, or the job has ended (or is gone)."""
    row = session.execute(select(Job.status, Job.cancel_requested).where(Job.id == job_id)).first()
    return row is None or bool(row.cancel_requested) or row.status in FINAL_STATES


def claim(session: Session, job_id: uuid.UUID, part: str, index: int, worker: str,
          claimant_dead: Callable[[JobShard], bool]) -> JobShard | None:
    """Run shard ``index`` under ``worker``: when pending, or running under a process that is gone. None
    when it is done or failed, alive elsewhere, or the job is stopping."""
    rec = session.get(JobShard, (job_id, part, index))
    if rec is None or rec.status in (SHARD_DONE, SHARD_FAILED) or job_stopping(session, job_id):
        return None
    if rec.status == SHARD_RUNNING and not claimant_dead(rec):
        return None
    now = utcnow()
    # optimistic: attempts and status as read, so two processes cannot both claim it
    res = session.execute(
        update(JobShard)
        .where(JobShard.job_id == job_id, JobShard.part == part, JobShard.index == index,
               JobShard.attempts == rec.attempts, JobShard.status == rec.status)
        .values(status=SHARD_RUNNING, worker=worker, heartbeat_at=now, attempts=rec.attempts + 1, updated_at=now)
    )
    session.commit()
    if res.rowcount != 1:
        return None
    session.refresh(rec)
    return rec


def _mine(job_id: uuid.UUID, part: str, index: int, worker: str):
    return (JobShard.job_id == job_id, JobShard.part == part, JobShard.index == index, JobShard.worker == worker,
            JobShard.status == SHARD_RUNNING)


def beat(session: Session, job_id: uuid.UUID, part: str, index: int, worker: str) -> bool:
    """Record that ``worker`` still runs the shard; True when it should stop (cancel, job ended, claim lost)."""
    res = session.execute(update(JobShard).where(*_mine(job_id, part, index, worker)).values(heartbeat_at=utcnow()))
    session.commit()
    return res.rowcount != 1 or job_stopping(session, job_id)


def finish(session: Session, job_id: uuid.UUID, part: str, index: int, result: dict) -> bool:
    """The shard's part is written (by whichever run): done, with the figures of the run that wrote it."""
    res = session.execute(
        update(JobShard)
        .where(JobShard.job_id == job_id, JobShard.part == part, JobShard.index == index,
               JobShard.status != SHARD_DONE)
        .values(status=SHARD_DONE, result=result, updated_at=utcnow())
    )
    session.commit()
    return res.rowcount == 1


def fail(session: Session, job_id: uuid.UUID, part: str, index: int, worker: str, error: dict) -> bool:
    res = session.execute(update(JobShard).where(*_mine(job_id, part, index, worker))
                          .values(status=SHARD_FAILED, result={"error": error}, updated_at=utcnow()))
    session.commit()
    return res.rowcount == 1


def release(session: Session, job_id: uuid.UUID, part: str, index: int, worker: str) -> bool:
    """A run that stopped (cancel): the shard is pending again, for a resumed job to run."""
    res = session.execute(update(JobShard).where(*_mine(job_id, part, index, worker))
                          .values(status=SHARD_PENDING, worker=None, updated_at=utcnow()))
    session.commit()
    return res.rowcount == 1
