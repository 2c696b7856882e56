"""Worker heartbeats in the job store: the broker-independent answer to "is any worker alive?"."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.store.tables import WorkerRecord, utcnow


def beat(session: Session, name: str, *, queues: str, pid: int, stopped: bool = False) -> None:
    rec = session.get(WorkerRecord, name)
    now = utcnow()
    if rec is None:
        rec = WorkerRecord(name=name, queues=queues, pid=pid, started_at=now)
        session.add(rec)
    elif rec.pid != pid or rec.stopped:
        rec.started_at = now  # the same node name started again
    rec.queues, rec.pid, rec.last_seen, rec.stopped = queues, pid, now, stopped
    session.commit()


def alive(session: Session, within_s: float) -> list[WorkerRecord]:
    since = utcnow() - timedelta(seconds=within_s)
    return list(session.scalars(
        select(WorkerRecord).where(WorkerRecord.last_seen >= since, WorkerRecord.stopped.is_(False))
    ))
