"""Request/response schemas per entity: XCreate (what clients send), XPublic (what they get back)."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["accepted", "running", "successful", "failed", "dismissed"]
JobType = Literal["adapt", "train", "predict", "evaluate", "suggest", "consensus", "pretrain"]


class Link(BaseModel):
    href: str
    rel: str
    type: str | None = None
    title: str | None = None


class ErrorItem(BaseModel):
    field: str
    message: str


class ErrorPublic(BaseModel):
    """Every 4xx/5xx body: a machine-readable type and one entry per problem."""

    type: str
    detail: list[ErrorItem]
    request_id: str | None = Field(default=None, description="500s only: the id the server's log files it under")


class JobError(BaseModel):
    type: str
    message: str


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    type: str
    method: str
    status: JobStatus
    progress: float = Field(description="0-100")
    stage: str | None = None
    done: int | None = Field(default=None, description="iterations or windows done in this stage")
    total: int | None = Field(default=None, description="iterations or windows in this stage")
    eta_s: float | None = Field(default=None, description="seconds left, estimated")
    message: str | None = None
    cancel_requested: bool = False
    attempts: int = 0
    created_at: datetime
    started_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    error: JobError | None = None
    spec: dict[str, Any] | None = None
    links: list[Link] = Field(default_factory=list)


class JobList(BaseModel):
    jobs: list[JobPublic]
    total: int
    limit: int
    offset: int
    links: list[Link] = Field(default_factory=list)


class FileEntry(BaseModel):
    name: str
    size: int
    links: dict[str, str]


class PredictionEntry(BaseModel):
    """One predicted COG and where to fetch it as a file or as map tiles."""

    name: str
    path: str
    kind: str = Field(description="classes | probabilities | disagreement (a consensus job's, float in [0, 1])")
    links: dict[str, str]


class ResultsPublic(BaseModel):
    job_id: uuid.UUID
    status: JobStatus
    bundle: dict[str, Any] | None = None
    pretrained: dict[str, Any] | None = Field(
        default=None, description="a pretrain job's weights (path, record, download link): model.checkpoint of a "
        "later job names them by this job's id")
    metrics: dict[str, Any] | None = None
    report: dict[str, Any] | None = None
    predictions: list[PredictionEntry] = Field(default_factory=list)
    files: list[FileEntry] = Field(default_factory=list)
    links: list[Link] = Field(default_factory=list)


class DatasetCreate(BaseModel):
    """Imagery already on the server, under an allowed root."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    image: str | None = Field(default=None, description="one multi-band raster")
    bands: list[str] | None = Field(default=None, min_length=1, max_length=64,
                                    description="single-band files, in order; with 'stac', the common names of the "
                                    "item's bands to register (red, green, blue, nir, swir16, swir22, pan, ...)")
    stac: str | None = Field(default=None, description="a STAC Item (local JSON file) whose single-band assets "
                             "'bands' chooses by common name")
    labels: str | None = Field(default=None, description="label raster or vector file")


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    kind: str
    paths: dict[str, Any]
    report: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None
    created_at: datetime
    links: list[Link] = Field(default_factory=list)


class DatasetList(BaseModel):
    datasets: list[DatasetPublic]
    total: int
    limit: int
    offset: int


class ModelPublic(BaseModel):
    """A model bundle produced by a finished train/adapt job (its id is the job's id)."""

    id: uuid.UUID
    job_id: uuid.UUID
    type: str
    method: str
    config: str | None = None
    classes: list[dict[str, Any]] = Field(default_factory=list)
    created_at: datetime
    metrics: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    links: list[Link] = Field(default_factory=list)


class ModelList(BaseModel):
    models: list[ModelPublic]
    total: int


class ComponentHealth(BaseModel):
    ok: bool
    detail: str | None = None


class HealthPublic(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    version: str
    api: ComponentHealth
    job_store: ComponentHealth
    broker: ComponentHealth
    workers: ComponentHealth


class UsagePublic(BaseModel):
    """Storage the token's jobs and uploads take on the server (files on disk), and its quota."""

    used_bytes: int = Field(description="jobs_bytes + uploads_bytes")
    quota_bytes: int | None = Field(description="the per-token quota; null: none")
    jobs: int
    jobs_bytes: int = Field(description="the files of the token's job folders (results, bundles, checkpoints)")
    uploads: int
    uploads_bytes: int = Field(description="the files of the token's uploaded datasets")
