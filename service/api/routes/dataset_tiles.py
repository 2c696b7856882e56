"""Input imagery as map tiles, TiTiler-style: /v1/datasets/{id}/tiles/{tms}/{z}/{x}/{y}.png?bidx=3,2,1&rescale=0,255,
and the same for a scene a job names: /v1/jobs/{id}/scenes/{source|target|validation}/{i}/tiles/... (so a job
submitted with paths, not datasets, still shows its imagery). Owner-scoped: another token's ids answer 404.
Routing only: service/tiles/imagery.py finds the imagery and renders it (through core.raster.reader).
"""
from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Path as PathParam, Query, Request, Response

from service.api import links
from service.api.deps import BaseUrl, CurrentToken, DatasetTileToken, SceneTileToken, SessionDep
from service.api.signed_urls import tiles_query
from service.api.schemas import ErrorPublic
from service.tiles.imagery import (
    Imagery,
    dataset_imagery,
    imagery_info,
    imagery_point,
    imagery_tile,
    imagery_tilejson,
    scene_imagery,
)

router = APIRouter(tags=["imagery tiles"])

_ERRORS = {401: {"model": ErrorPublic}, 404: {"model": ErrorPublic}, 422: {"model": ErrorPublic}}
_PNG = {200: {"content": {"image/png": {}}, "description": "a PNG (grey or RGB, nodata transparent)"}, **_ERRORS}
TmsId = Annotated[str, PathParam(alias="tileMatrixSetId", description="a morecantile TMS id, e.g. WebMercatorQuad")]
Z = Annotated[int, PathParam(ge=0, le=30)]
XY = Annotated[int, PathParam(ge=0)]
BidxQuery = Annotated[list[str] | None, Query(
    description="1-based band indexes, comma-separated or repeated (1 or 3 bands); default 3,2,1 or 1")]
RescaleQuery = Annotated[list[str] | None, Query(
    description="min,max of the linear stretch; once for every band or once per band; default the 2-98 percentiles")]

# ---- routes: /v1/datasets/{id}/... and /v1/jobs/{id}/scenes/{role}/{index}/... ------------------------

DatasetId = Annotated[uuid.UUID, PathParam(description="a registered dataset")]
JobId = Annotated[uuid.UUID, PathParam(description="a job whose spec names the scene")]
Role = Annotated[Literal["source", "target", "validation"], PathParam(description="the domain the scene is in")]
Index = Annotated[int, PathParam(ge=0, le=10_000, description="0-based position of the scene in its domain")]
Lon = Annotated[float, PathParam(ge=-180, le=180)]
Lat = Annotated[float, PathParam(ge=-90, le=90)]
Scale = Annotated[int, PathParam(ge=1, le=4)]
TmsQuery = Annotated[str, Query(alias="tileMatrixSetId")]
_DS = "/v1/datasets/{dataset_id}"
_SC = "/v1/jobs/{job_id}/scenes/{role}/{index}"


def _dataset(dataset_id: uuid.UUID, session, token, base: str) -> Imagery:
    return dataset_imagery(dataset_id, session, token, links.dataset(base, dataset_id))


def _scene(job_id: uuid.UUID, role: str, index: int, session, token, base: str) -> Imagery:
    return scene_imagery(job_id, role, index, session, token, links.scene(base, job_id, role, index))


@router.get(_DS + "/tiles/{tileMatrixSetId}/{z}/{x}/{y}@{scale}x.png", response_class=Response, responses=_PNG,
            summary="A dataset imagery tile at a scale (256 px x scale)")
def dataset_tile_scaled(dataset_id: DatasetId, tms_id: TmsId, z: Z, x: XY, y: XY, scale: Scale, session: SessionDep,
                        token: DatasetTileToken, base: BaseUrl, bidx: BidxQuery = None,
                        rescale: RescaleQuery = None) -> Response:
    return imagery_tile(_dataset(dataset_id, session, token, base), tms_id, z, x, y, bidx, rescale, scale)


@router.get(_DS + "/tiles/{tileMatrixSetId}/{z}/{x}/{y}.png", response_class=Response, responses=_PNG,
            summary="A dataset imagery tile")
def dataset_tile(dataset_id: DatasetId, tms_id: TmsId, z: Z, x: XY, y: XY, session: SessionDep, token: DatasetTileToken,
                 base: BaseUrl, bidx: BidxQuery = None, rescale: RescaleQuery = None) -> Response:
    """Bands `bidx` of the dataset's image, stretched linearly by `rescale`, as grey or RGB."""
    return imagery_tile(_dataset(dataset_id, session, token, base), tms_id, z, x, y, bidx, rescale)


@router.get(_DS + "/{tileMatrixSetId}/tilejson.json", responses=_ERRORS, summary="TileJSON of a dataset's imagery")
def dataset_tilejson(dataset_id: DatasetId, tms_id: TmsId, request: Request, session: SessionDep,
                     token: DatasetTileToken, base: BaseUrl, bidx: BidxQuery = None,
                     rescale: RescaleQuery = None) -> dict:
    im = _dataset(dataset_id, session, token, base)
    return imagery_tilejson(im, tms_id, bidx, rescale, tiles_query(request, "datasets", str(dataset_id), token.id))


@router.get(_DS + "/info", responses=_ERRORS, summary="Bands, default stretch, bounds and zooms of a dataset")
def dataset_info(dataset_id: DatasetId, session: SessionDep, token: CurrentToken, base: BaseUrl,
                 tms_id: TmsQuery = links.DEFAULT_TMS) -> dict:
    im = _dataset(dataset_id, session, token, base)
    return {"id": str(dataset_id), **imagery_info(im, tms_id)}


@router.get(_DS + "/point/{lon},{lat}", responses=_ERRORS, summary="Band values of a dataset at a point")
def dataset_point(dataset_id: DatasetId, lon: Lon, lat: Lat, session: SessionDep, token: CurrentToken,
                  base: BaseUrl) -> dict:
    """The value of every band at a WGS84 longitude/latitude (null where there is no data)."""
    return imagery_point(_dataset(dataset_id, session, token, base), lon, lat)


@router.get(_SC + "/tiles/{tileMatrixSetId}/{z}/{x}/{y}.png", response_class=Response, responses=_PNG,
            summary="An imagery tile of a job's scene")
def scene_tile(job_id: JobId, role: Role, index: Index, tms_id: TmsId, z: Z, x: XY, y: XY, session: SessionDep,
               token: SceneTileToken, base: BaseUrl, bidx: BidxQuery = None, rescale: RescaleQuery = None) -> Response:
    """A scene named in a job's spec (e.g. the target it mapped), registered as a dataset or not."""
    return imagery_tile(_scene(job_id, role, index, session, token, base), tms_id, z, x, y, bidx, rescale)


@router.get(_SC + "/{tileMatrixSetId}/tilejson.json", responses=_ERRORS, summary="TileJSON of a job's scene")
def scene_tilejson(job_id: JobId, role: Role, index: Index, tms_id: TmsId, request: Request, session: SessionDep,
                   token: SceneTileToken, base: BaseUrl, bidx: BidxQuery = None,
                   rescale: RescaleQuery = None) -> dict:
    im = _scene(job_id, role, index, session, token, base)
    return imagery_tilejson(im, tms_id, bidx, rescale, tiles_query(request, "scenes", f"{job_id}/{role}/{index}", token.id))


@router.get(_SC + "/info", responses=_ERRORS, summary="Bands, default stretch, bounds and zooms of a job's scene")
def scene_info(job_id: JobId, role: Role, index: Index, session: SessionDep, token: CurrentToken, base: BaseUrl,
               tms_id: TmsQuery = links.DEFAULT_TMS) -> dict:
    return imagery_info(_scene(job_id, role, index, session, token, base), tms_id)


@router.get(_SC + "/point/{lon},{lat}", responses=_ERRORS, summary="Band values of a job's scene at a point")
def scene_point(job_id: JobId, role: Role, index: Index, lon: Lon, lat: Lat, session: SessionDep,
                token: CurrentToken, base: BaseUrl) -> dict:
    return imagery_point(_scene(job_id, role, index, session, token, base), lon, lat)
