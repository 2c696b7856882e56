"""Deleting an ended job: its record, its folder (with the model bundle in it) and its model's cached tiles.

    refuse (409) while an accepted or running job's spec names a bundle in this job's folder, or a
    dataset is registered on files in it
    one store transaction: delete the record -> rename jobs/<id> to jobs/.deleting-<id> -> commit
    then remove the renamed folder and the model's tile cache

Until the commit the API shows the whole job; after it, none of it: the record is gone, and the folder
is no longer at the job's path. A crash between the rename and the commit leaves a renamed folder
whose record is still there: `recover_interrupted` (run at start) renames it back. A crash after the
commit leaves a renamed folder with no record, which it removes. (Run by a process starting while
another deletes, it may undo a rename just before that commit: the deleting process then removes the
folder at the job's path as well.)
"""
from __future__ import annotations

import logging
import os
import shutil
import uuid
from contextlib import nullcontext
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.errors import ConflictError, NotFoundError
from service.settings import Settings
from service.store.tables import ACCEPTED, FINAL_STATES, RUNNING, Dataset, Job

log = logging.getLogger("geoadapt.api")

#: prefix of a job folder being deleted (not a job id, so neither the path policy nor the results see it)
DELETING = ".deleting-"


def jobs_using_model(session: Session, job_dir: Path) -> list[Job]:
    """Accepted or running jobs whose spec names a bundle inside ``job_dir`` (its model, or files in it)."""
    folder = job_dir.resolve()
    active = session.scalars(select(Job).where(Job.status.in_((ACCEPTED, RUNNING))))
    return [j for j in active if (j.spec or {}).get("bundle") and Path(j.spec["bundle"]).is_relative_to(folder)]


def datasets_in(session: Session, job_dir: Path) -> list[Dataset]:
    """Datasets registered by path on files inside ``job_dir`` (a job's COG registered as imagery)."""
    folder = job_dir.resolve()

    def inside(paths: dict) -> bool:
        files = [paths.get("image"), paths.get("labels"), *(paths.get("bands") or [])]
        return any(f and Path(f).is_relative_to(folder) for f in files)

    return [d for d in session.scalars(select(Dataset).where(Dataset.kind == "path")) if inside(d.paths or {})]


def _refuse_if_used(session: Session, job: Job, job_dir: Path) -> None:
    users = jobs_using_model(session, job_dir)
    if users:
        names = ", ".join(f"{u.id} ({u.status})" for u in users[:5])
        raise ConflictError(f"job {job.id} cannot be deleted: its model is used by job {names}; "
                            "delete it once that job has ended", field="job_id")
    registered = datasets_in(session, job_dir)
    if registered:
        names = ", ".join(f"{d.id} ({d.name})" for d in registered[:5])
        raise ConflictError(f"job {job.id} cannot be deleted: dataset {names} is registered on its files; "
                            "delete that dataset first", field="job_id")


def delete_ended_job(session: Session, settings: Settings, job: Job, writes=None) -> None:
    """Delete an ended job's record, files and model; ConflictError while another job uses its model.

    ``writes``: the app's lock around SQLite writes (see service.store.db.local_writer_locks)."""
    if job.status not in FINAL_STATES:
        raise ConflictError(f"job {job.id} is {job.status}: only an ended job can be deleted", field="job_id")
    job_dir = settings.job_dir(job.id)
    _refuse_if_used(session, job, job_dir)
    trash = job_dir.with_name(f"{DELETING}{job.id}")
    job_id = job.id
    with writes if writes is not None else nullcontext():
        res = session.execute(delete(Job).where(Job.id == job_id, Job.status.in_(FINAL_STATES)))
        if res.rowcount != 1:
            session.rollback()
            raise NotFoundError(f"no job {job_id}")
        try:
            _refuse_if_used(session, job, job_dir)  # a job submitted since the first look
            moved = _rename(job_dir, trash)
        except BaseException:
            session.rollback()
            raise
        try:
            session.commit()
        except BaseException:
            session.rollback()
            if moved:
                _rename(trash, job_dir)
            raise
    # the job's own path too: another process starting up may have taken the rename for a crash's and
    # undone it a moment before the commit (a folder no record names any more; nothing shows it)
    for d in (trash, job_dir, model_tiles_dir(settings, job_id)):
        shutil.rmtree(d, ignore_errors=True)
    log.info("job %s deleted with its files", job_id)


def model_tiles_dir(settings: Settings, model_id) -> Path:
    """Where live tile inference caches a model's tiles (service.tiles.cache.tile_path's first levels)."""
    return settings.data_dir / "tiles" / "models" / str(model_id)


def recover_interrupted(session: Session, settings: Settings) -> list[str]:
    """Finish or undo deletions a crash interrupted: a renamed folder whose record exists goes back, one
    whose record is gone is removed. Returns what was done, for the log."""
    done = []
    if not settings.jobs_dir.is_dir():
        return done
    for trash in settings.jobs_dir.iterdir():
        if not trash.name.startswith(DELETING):
            continue
        try:
            job_id = uuid.UUID(trash.name[len(DELETING):])
        except ValueError:
            continue
        if session.get(Job, job_id) is not None:
            if _rename(trash, settings.job_dir(job_id)):
                done.append(f"restored {job_id}")
        else:
            shutil.rmtree(trash, ignore_errors=True)
            shutil.rmtree(model_tiles_dir(settings, job_id), ignore_errors=True)
            done.append(f"removed {job_id}")
    return done


def _rename(src: Path, dst: Path) -> bool:
    """Rename a folder; False when there is none (a job whose folder was never written)."""
    try:
        os.rename(src, dst)
    except FileNotFoundError:
        return False
    return True

