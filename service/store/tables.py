"""Tables of the job store: tokens, jobs, datasets, workers, the shards of sharded predictions (portable between
SQLite and PostgreSQL)."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: job states, OGC API - Processes names
ACCEPTED, RUNNING, SUCCESSFUL, FAILED, DISMISSED = "accepted", "running", "successful", "failed", "dismissed"
JOB_STATES = (ACCEPTED, RUNNING, SUCCESSFUL, FAILED, DISMISSED)
FINAL_STATES = (SUCCESSFUL, FAILED, DISMISSED)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Token(Base):
    """An API token; only its sha256 is stored. `id` is the public prefix embedded in the token."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128), default="")
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


class Job(Base):
    __tablename__ = "jobs"
    # one idempotency key per owner: the same key from two tokens are two different requests
    __table_args__ = (UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idem"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[str] = mapped_column(String(16), ForeignKey("tokens.id"), index=True)
    type: Mapped[str] = mapped_column(String(16), index=True)
    method: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    queue: Mapped[str] = mapped_column(String(16), default="gpu")

    status: Mapped[str] = mapped_column(String(16), default=ACCEPTED, index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str | None] = mapped_column(String(64), default=None)
    done: Mapped[int | None] = mapped_column(Integer, default=None)
    total: Mapped[int | None] = mapped_column(Integer, default=None)
    eta_s: Mapped[float | None] = mapped_column(Float, default=None)
    message: Mapped[str | None] = mapped_column(Text, default=None)

    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)

    error_type: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)

    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    body_hash: Mapped[str | None] = mapped_column(String(64), default=None)

    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    checkpoint_path: Mapped[str | None] = mapped_column(Text, default=None)
    results: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    #: how many times a worker started it (a resume after a lost worker counts)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: "host:pid:start" of the process running it, to tell a dead worker from a live one
    worker: Mapped[str | None] = mapped_column(String(255), default=None)


class Dataset(Base):
    """Imagery registered by path (under an allowed root) or uploaded, with its validation report."""

    __tablename__ = "datasets"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[str] = mapped_column(String(16), ForeignKey("tokens.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))  # path | upload
    paths: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"image"|"bands", "labels"?}
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WorkerRecord(Base):
    """A worker's heartbeat, so /health can say whether any worker is alive on any broker."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    queues: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    stopped: Mapped[bool] = mapped_column(Boolean, default=False)


#: shard states: waiting for a worker, being run by one, its part written
SHARD_PENDING, SHARD_RUNNING, SHARD_DONE, SHARD_FAILED = "pending", "running", "done", "failed"
#: a dataset's statistics record (Dataset.stats["status"]): queued, being computed by a worker, done, failed
STATS_PENDING, STATS_COMPUTING, STATS_OK, STATS_FAILED = "pending", "computing", "ok", "failed"


class JobShard(Base):
    """One shard of a sharded prediction of a job (workers/pipelines/shards.py): who runs it, and whether its
    part is written. ``part`` names the prediction it belongs to (a job may predict several scenes)."""

    __tablename__ = "job_shards"

    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    part: Mapped[str] = mapped_column(String(255), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=SHARD_PENDING)
    #: "host:pid:start" of the process running it (as Job.worker)
    worker: Mapped[str | None] = mapped_column(String(255), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    #: how many runs started it; more than one means a run was lost (its worker killed) and it ran again
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: the run's figures (models.inference.shards.ShardResult), or its error {type, message}
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
