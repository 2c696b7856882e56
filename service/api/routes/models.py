"""Models: the bundles of finished train/adapt jobs (a model's id is its job's id), and their network as ONNX
(written into the bundle by the worker that saved it: this API only serves the file)."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from sqlalchemy import select

from core.bundle_manifest import ONNX
from core.job_layout import BUNDLE, output_dir
from service import results as job_results
from service.api import links
from service.api.server_paths import hide
from service.api.deps import BaseUrl, CurrentToken, SessionDep, SettingsDep
from service.api.schemas import ErrorPublic, Link, ModelList, ModelPublic
from service.errors import NotFoundError
from service.store import jobs as job_store
from service.store.tables import SUCCESSFUL, Job

router = APIRouter(prefix="/v1/models", tags=["models"])
_ERRORS = {401: {"model": ErrorPublic}, 404: {"model": ErrorPublic}}
_TRAINING = ("train", "adapt")
ONNX_MEDIA_TYPE = "application/onnx"


def _public(job: Job, settings, base: str, *, full: bool) -> ModelPublic | None:
    desc = hide(job_results.describe(settings.job_dir(job.id)), settings.data_dir) if full else None
    bundle_dir = output_dir(settings.job_dir(job.id)) / BUNDLE
    if not bundle_dir.is_dir():
        return None
    spec = job.spec or {}
    model_links = [Link(href=links.model(base, job.id), rel="self", type="application/json"),
                   Link(href=links.job(base, job.id), rel="job", type="application/json")]
    if (bundle_dir / ONNX).is_file():
        model_links.append(Link(href=f"{links.model(base, job.id)}/onnx", rel="enclosure", type=ONNX_MEDIA_TYPE,
                                title="the network as ONNX, with QGIS Deepness metadata"))
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


@router.get("/{model_id}/onnx", response_class=FileResponse, responses=_ERRORS)
def get_model_onnx(model_id: uuid.UUID, session: SessionDep, settings: SettingsDep, token: CurrentToken) -> FileResponse:
    """The model's network as ONNX (input: normalised windows; output: class probabilities; metadata for the
    QGIS Deepness plugin), as its job's worker exported it beside the weights."""
    out = model_output_dir(session, settings, token, model_id)
    if out is None:
        raise NotFoundError(f"no model {model_id}")
    path = out / BUNDLE / ONNX
    if not path.is_file():
        raise NotFoundError(f"model {model_id} has no ONNX export (its worker could not export the network; "
                            "`geoadapt export` on the bundle says why)")
    return FileResponse(path, media_type=ONNX_MEDIA_TYPE, filename=f"geoadapt-{model_id}.onnx")
