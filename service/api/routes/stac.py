"""STAC: the caller's job results as a static catalog (catalog, a collection per job type, an item per predicted
scene) that STAC clients such as pystac read with the token's header; service/stac_catalog.py makes the objects."""
from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service import stac_catalog
from service.api.deps import BaseUrl, CurrentToken, SessionDep, SettingsDep
from service.api.schemas import ErrorPublic, JobType
from service.errors import NotFoundError
from service.result_ids import RESULT_SEP, result_id
from service.store import jobs as job_store
from service.store.tables import SUCCESSFUL

router = APIRouter(prefix="/v1/stac", tags=["stac"])
_ERRORS = {401: {"model": ErrorPublic}, 404: {"model": ErrorPublic}}
_JOB_TYPES = ("adapt", "train", "predict", "evaluate")
#: a static catalog lists everything; past this many jobs of one type, the newest
MAX_JOBS = 10_000


class GeoJSONResponse(JSONResponse):
    media_type = stac_catalog.GEOJSON


def _successful(session, token, job_type: str, limit: int = MAX_JOBS):
    rows, _ = job_store.list_jobs(session, token, status=SUCCESSFUL, type=job_type, limit=limit)
    return rows


@router.get("", response_class=JSONResponse, responses=_ERRORS, summary="STAC catalog of the caller's results")
def stac_root(session: SessionDep, token: CurrentToken, base: BaseUrl) -> JSONResponse:
    """A STAC Catalog: one child collection per job type the caller has successful jobs of."""
    types = [t for t in _JOB_TYPES if _successful(session, token, t, limit=1)]
    return JSONResponse(stac_catalog.catalog(base, types))


@router.get("/{job_type}", response_class=JSONResponse, responses=_ERRORS, summary="STAC collection of a job type")
def stac_collection(job_type: JobType, session: SessionDep, settings: SettingsDep, token: CurrentToken,
                    base: BaseUrl) -> JSONResponse:
    """A STAC Collection: an item link per predicted scene of the caller's successful jobs of this type."""
    items = stac_catalog.items_of(base, _successful(session, token, job_type), settings)
    return JSONResponse(stac_catalog.collection(base, job_type, items))


@router.get("/{job_type}/{item_id}", response_class=GeoJSONResponse, responses=_ERRORS,
            summary="STAC item of a predicted scene")
def stac_item(job_type: JobType, item_id: str, request: Request, session: SessionDep, settings: SettingsDep,
              token: CurrentToken, base: BaseUrl) -> GeoJSONResponse:
    """A STAC Item (id: the result id, `<job id>.<name>`): class and probability COGs and the model bundle as
    assets, downloadable with the token; the class map's tilejson as links (one signed, for header-less clients)."""
    ident, _, name = item_id.partition(RESULT_SEP)
    try:
        job_id = uuid.UUID(ident)
    except ValueError:
        raise NotFoundError(f"no STAC item {item_id!r}", field="item_id") from None
    job = job_store.get_job(session, job_id, token)
    scene = next((s for s in stac_catalog.predicted_scenes(settings.job_dir(job.id)) if s.name == name), None)
    if job.type != job_type or job.status != SUCCESSFUL or scene is None:
        raise NotFoundError(f"no STAC item {item_id!r} in collection {job_type}", field="item_id")
    signed = request.app.state.tile_signer.query("results", result_id(job.id, name), token.id)
    return GeoJSONResponse(stac_catalog.item(base, job, settings, scene, tilejson_signed=signed))
