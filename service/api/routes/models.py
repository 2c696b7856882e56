"""Models: the bundles of finished train/adapt jobs (a model's id is its job's id), and their network as ONNX.

The ONNX file is made once, on the first download that asks: the API sends the export to a worker (it never
loads torch) and answers 202 until the file, or the reason it could not be made, lies in the bundle."""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy import select

from core.bundle_manifest import ONNX, ONNX_FAILED
from core.errors import BundleError
from core.task_names import CPU_QUEUE, EXPORT_MODEL_ONNX
from core.job_layout import BUNDLE, PRETRAINED, output_dir
from service import results as job_results
from service.api import links
from service.api.server_paths import hide
from service.api.deps import BaseUrl, CurrentToken, Producer, SessionDep, SettingsDep
from service.api.schemas import ErrorPublic, Link, ModelList, ModelPublic
from service.errors import NotFoundError, ServiceUnavailableError
from service.queue import enqueue
from service.store import jobs as job_store
from service.store.tables import SUCCESSFUL, Job

router = APIRouter(prefix="/v1/models", tags=["models"])
_ERRORS = {401: {"model": ErrorPublic}, 404: {"model": ErrorPublic}}
_TRAINING = ("train", "adapt")
ONNX_MEDIA_TYPE = "application/onnx"
#: marks an export sent to a worker; sent again when older than this (a lost message, a dead worker)
ONNX_REQUESTED = ".model.onnx.requested"
ONNX_RESEND_S = 1800


def _public(job: Job, settings, base: str, *, full: bool) -> ModelPublic | None:
    desc = hide(job_results.describe(settings.job_dir(job.id)), settings.data_dir) if full else None
    bundle_dir = output_dir(settings.job_dir(job.id)) / BUNDLE
    if not bundle_dir.is_dir():
        return None
    spec = job.spec or {}
    model_links = [Link(href=links.model(base, job.id), rel="self", type="application/json"),
                   Link(href=links.job(base, job.id), rel="job", type="application/json")]
    model_links.append(Link(href=f"{links.model(base, job.id)}/onnx", rel="enclosure", type=ONNX_MEDIA_TYPE,
                            title="the network as ONNX, with QGIS Deepness metadata (202 while it is made)"))
    return ModelPublic(
        id=job.id, job_id=job.id, type=job.type, method=job.method,
        config=(spec.get("model") or {}).get("config"),
        classes=spec.get("classes") or [],
        created_at=job.finished_at or job.created_at,
        metrics=desc["metrics"] if desc else None,
        metadata=(desc["bundle"] or {}).get("metadata") if desc else None,
        links=model_links,
    )


def model_output_dir(session, settings, token, model_id: uuid.UUID) -> Path | None:
    """The output folder (bundle/ inside) of the caller's model ``model_id``: a successful train or
    adapt job of theirs that wrote a bundle; None for anything else, another token's job included."""
    try:
        job = job_store.get_job(session, model_id, token)
    except NotFoundError:
        return None
    out = output_dir(settings.job_dir(job.id))
    ok = job.status == SUCCESSFUL and job.type in _TRAINING and (out / BUNDLE).is_dir()
    return out if ok else None


def checkpoint_output_dir(session, settings, token, job_id: uuid.UUID) -> Path | None:
    """The output folder whose weights ``model.checkpoint: <job id>`` names: a successful pretrain job of the
    caller's that left pretrained weights, or one of their models (a train or adapt job's bundle); None else."""
    try:
        job = job_store.get_job(session, job_id, token)
    except NotFoundError:
        return None
    out = output_dir(settings.job_dir(job.id))
    if job.status == SUCCESSFUL and job.type == "pretrain" and (out / PRETRAINED).is_file():
        return out
    return model_output_dir(session, settings, token, job_id)


@router.get("", response_model=ModelList, responses=_ERRORS)
def list_models(session: SessionDep, settings: SettingsDep, token: CurrentToken, base: BaseUrl,
                limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> ModelList:
    q = select(Job).where(Job.status == SUCCESSFUL, Job.type.in_(_TRAINING))
    if not token.admin:
        q = q.where(Job.owner_id == token.id)
    rows = session.scalars(q.order_by(Job.created_at.desc(), Job.id))
    models = [m for j in rows if (m := _public(j, settings, base, full=False)) is not None]
    limit = min(limit, settings.max_page_size)
    return ModelList(models=models[offset: offset + limit], total=len(models))


@router.get("/{model_id}", response_model=ModelPublic, responses=_ERRORS)
def get_model(model_id: uuid.UUID, session: SessionDep, settings: SettingsDep, token: CurrentToken,
              base: BaseUrl) -> ModelPublic:
    job = job_store.get_job(session, model_id, token)
    m = _public(job, settings, base, full=True) if job.status == SUCCESSFUL and job.type in _TRAINING else None
    if m is None:
        raise NotFoundError(f"no model {model_id}")
    return m


@router.get("/{model_id}/onnx", response_class=FileResponse,
            responses={**_ERRORS, 202: {"description": "the export is under way; ask again after Retry-After"},
                       422: {"model": ErrorPublic}})
def get_model_onnx(model_id: uuid.UUID, session: SessionDep, settings: SettingsDep, token: CurrentToken,
                   producer: Producer, base: BaseUrl):
    """The model's network as ONNX (input: normalised windows; output: class probabilities; metadata for the
    QGIS Deepness plugin). The first request sends the export to a worker and answers 202 with Retry-After;
    later ones get the file, or 422 saying why the network could not be exported."""
    out = model_output_dir(session, settings, token, model_id)
    if out is None:
        raise NotFoundError(f"no model {model_id}")
    bundle = out / BUNDLE
    if (bundle / ONNX).is_file():
        return FileResponse(bundle / ONNX, media_type=ONNX_MEDIA_TYPE, filename=f"geoadapt-{model_id}.onnx")
    if (bundle / ONNX_FAILED).is_file():
        reason = hide((bundle / ONNX_FAILED).read_text(errors="replace")[:1000], settings.data_dir)
        raise BundleError(f"this model's network could not be exported to ONNX: {reason}")
    marker = bundle / ONNX_REQUESTED
    if not marker.is_file() or time.time() - marker.stat().st_mtime > ONNX_RESEND_S:
        try:
            enqueue(producer, model_id, CPU_QUEUE, task=EXPORT_MODEL_ONNX)
        except Exception:
            raise ServiceUnavailableError("the job queue (broker) is unreachable; retry later") from None
        marker.touch()
    href = f"{links.model(base, model_id)}/onnx"
    return JSONResponse({"status": "exporting", "message": "the network is being exported to ONNX; ask again",
                         "href": href}, status_code=202, headers={"Retry-After": "30", "Location": href})
