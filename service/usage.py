"""Storage a token uses (the files of its jobs' folders and of its uploaded datasets) against its quota.

Counted from disk when asked (GET /v1/usage; before an upload or a job submission while a quota is set),
so whatever a worker on any machine wrote is counted. Uploads that would pass the quota are refused
(413); once the quota is passed, new jobs are (507), since what a job will write is not known before it
runs. Datasets registered by path take no storage of the service and are not counted.
"""
from __future__ import annotations

import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.errors import StorageQuotaExceededError, UploadOverQuotaError
from service.settings import Settings
from service.store.tables import Dataset, Job


@dataclass
class Usage:
    jobs: int
    jobs_bytes: int
    uploads: int
    uploads_bytes: int
    #: 0: no quota
    quota_bytes: int

    @property
    def used_bytes(self) -> int:
        return self.jobs_bytes + self.uploads_bytes

    def as_dict(self) -> dict:
        return {**asdict(self), "used_bytes": self.used_bytes, "quota_bytes": self.quota_bytes or None}

    def said(self) -> str:
        """'1.2 MB used of 5.0 MB' for messages."""
        return f"{human(self.used_bytes)} used of {human(self.quota_bytes) if self.quota_bytes else 'no quota'}"


def folder_bytes(folder: Path) -> int:
    """Sizes of the regular files under a folder; links are not followed, a file gone meanwhile counts 0."""
    total = 0
    for p in folder.rglob("*"):
        try:
            st = p.lstat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


def token_usage(session: Session, settings: Settings, owner_id: str) -> Usage:
    jobs = list(session.scalars(select(Job.id).where(Job.owner_id == owner_id)))
    uploads = list(session.scalars(select(Dataset.id).where(Dataset.owner_id == owner_id, Dataset.kind == "upload")))
    return Usage(jobs=len(jobs), jobs_bytes=sum(folder_bytes(settings.job_dir(j)) for j in jobs),
                 uploads=len(uploads), uploads_bytes=sum(folder_bytes(settings.dataset_dir(d)) for d in uploads),
                 quota_bytes=settings.storage_quota_bytes)


def check_upload(session: Session, settings: Settings, owner_id: str, incoming: int, field: str) -> None:
    """UploadOverQuotaError (413) when ``incoming`` more bytes would take the token past its quota."""
    if not settings.storage_quota_bytes:
        return
    usage = token_usage(session, settings, owner_id)
    if usage.used_bytes + incoming > usage.quota_bytes:
        raise UploadOverQuotaError(
            f"this upload ({human(incoming)}) would pass this token's storage quota: {usage.said()}; "
            "delete ended jobs or uploaded datasets to free space", field=field)


def check_submit(session: Session, settings: Settings, owner_id: str) -> None:
    """StorageQuotaExceededError (507) once the token's jobs and uploads take its whole quota."""
    if not settings.storage_quota_bytes:
        return
    usage = token_usage(session, settings, owner_id)
    if usage.used_bytes >= usage.quota_bytes:
        raise StorageQuotaExceededError(
            f"this token's storage quota is used up ({usage.said()}): no new job until ended jobs or uploaded "
            "datasets are deleted (DELETE /v1/jobs/{id}, DELETE /v1/datasets/{id})")


def human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
