"""Map tiles, TiTiler-compatible paths: predicted COGs (/v1/results/{id}/...) and live tile inference
(/v1/models/{id}/tiles/...?dataset=...). Both owner-scoped like jobs: another token's ids answer 404.

    results: token -> job (owner, successful) -> COG -> sources.class_source -> rio-tiler -> paletted PNG
    models:  token -> job with a bundle + dataset (owner) -> cache.lookup(key) -> hit: the PNG from disk
                                                                             -> miss: TileClient.render
             (Celery "tiles" queue, workers/tile_tasks.py predicts and writes the cache) -> the PNG
"""
from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Path as PathParam, Query, Request, Response
from fastapi.responses import JSONResponse

from core.bundle_manifest import MANIFEST, WEIGHTS
from core.errors import RasterError
from core.raster.reader import open_imagery
from core.job_layout import BUNDLE, output_dir
from core.raster.zooms import raster_native_zoom
from service.api import errors, links
from service.api.deps import BaseUrl, CurrentToken, ModelTileToken, ResultTileToken, SessionDep, SettingsDep
from service.api.signed_urls import tiles_query
from service.api.schemas import ErrorPublic
from service.errors import NotFoundError, ServiceUnavailableError
from service.result_ids import parse_result_id
from service.store import datasets as dataset_store
from service.store import jobs as job_store
from service.store.tables import SUCCESSFUL, Job
from service.tiles import cache, sources
from service.tiles.queue import TileClient

log = logging.getLogger("geoadapt.api")
router = APIRouter(tags=["tiles"])

_ERRORS = {401: {"model": ErrorPublic}, 404: {"model": ErrorPublic}}
_PNG = {200: {"content": {"image/png": {}}, "description": "a paletted PNG: class colours, nodata transparent"},
        **_ERRORS}
TmsId = Annotated[str, PathParam(alias="tileMatrixSetId", description="a morecantile TMS id, e.g. WebMercatorQuad")]
Z = Annotated[int, PathParam(ge=0, le=30)]
XY = Annotated[int, PathParam(ge=0)]


@dataclass(frozen=True)
class TileOptions:
    """How live tile inference runs (the app may replace them: app.state.tile_options)."""

    timeout_s: float = 60.0  # how long a request waits for a tile worker
    window: int = 256  # model window (image pixels); windows overlap by half and are hann-blended
    zoom_out_levels: int = 1  # live inference down to the image's native zoom minus this


def _options(request: Request) -> TileOptions:
    return getattr(request.app.state, "tile_options", None) or TileOptions()


_client_lock = threading.Lock()


def _tile_client(request: Request) -> TileClient:
    state = request.app.state
    client = getattr(state, "tile_client", None)
    if client is None:
        with _client_lock:
            client = getattr(state, "tile_client", None)
            if client is None:
                client = state.tile_client = TileClient(state.settings)
    return client


def _png(content: bytes, max_age: int) -> Response:
    return Response(content=content, media_type="image/png", headers={"Cache-Control": f"private, max-age={max_age}"})


# ---- results: tiles over finished prediction COGs ---------------------------------------------------

def _result_cog(rid: str, session, settings, token) -> Path:
    job_id, name = parse_result_id(rid)
    job = job_store.get_job(session, job_id, token)  # another owner's job: NotFound, as for jobs
    if job.status != SUCCESSFUL:
        raise NotFoundError(f"job {job.id} is {job.status}: its results are not ready", field="id")
    path = sources.find_cog(settings.job_dir(job.id), name)
    if path is None:
        raise NotFoundError(f"no predicted COG {name!r} in the results of job {job.id}", field="id")
    return path


def _result_source(rid: str, tms_id: str, session, settings, token) -> tuple[Path, sources.CogSource]:
    path = _result_cog(rid, session, settings, token)
    tms = sources.get_tms(tms_id)
    try:
        return path, sources.class_source(path, tms)
    except OSError:  # FileNotFoundError, or GDAL's (rasterio's RasterioIOError is one)
        if path.exists():
            raise
        # deleted (its job with it) between finding it and opening it: gone, as for a later request
        raise NotFoundError(f"no result {rid!r}: it was deleted", field="id") from None


@router.get("/v1/results/{result_id}/tiles/{tileMatrixSetId}/{z}/{x}/{y}@{scale}x.png", response_class=Response,
            responses=_PNG, summary="A result tile at a scale (256 px x scale)")
def result_tile_scaled(result_id: str, tms_id: TmsId, z: Z, x: XY, y: XY, session: SessionDep, settings: SettingsDep,
                       token: ResultTileToken, scale: Annotated[int, PathParam(ge=1, le=4)]) -> Response:
    _, src = _result_source(result_id, tms_id, session, settings, token)
    return _png(src.tile(x, y, z, scale=scale), 300)


@router.get("/v1/results/{result_id}/tiles/{tileMatrixSetId}/{z}/{x}/{y}.png", response_class=Response,
            responses=_PNG, summary="A result tile")
def result_tile(result_id: str, tms_id: TmsId, z: Z, x: XY, y: XY, session: SessionDep, settings: SettingsDep,
                token: ResultTileToken) -> Response:
    """One tile of a predicted class COG: each class in its colour, nodata and outside transparent."""
    _, src = _result_source(result_id, tms_id, session, settings, token)
    return _png(src.tile(x, y, z), 300)


@router.get("/v1/results/{result_id}/{tileMatrixSetId}/tilejson.json", responses=_ERRORS)
def result_tilejson(result_id: str, tms_id: TmsId, request: Request, session: SessionDep, settings: SettingsDep,
                    token: ResultTileToken, base: BaseUrl, minzoom: Annotated[int | None, Query(ge=0, le=30)] = None,
                    maxzoom: Annotated[int | None, Query(ge=0, le=30)] = None) -> dict:
    """TileJSON 3.0 of a predicted COG (bounds in the TMS's geographic CRS, zooms from its resolution);
    its `tiles` URL is signed, so clients that cannot send a header open it."""
    _, src = _result_source(result_id, tms_id, session, settings, token)
    job_id, name = parse_result_id(result_id)
    signed = tiles_query(request, "results", result_id, token.id)
    url = f"{links.result(base, job_id, name)}/tiles/{src.tms.id}/{{z}}/{{x}}/{{y}}.png?{signed}"
    return _tilejson(name, url, src.geographic_bounds, src.minzoom if minzoom is None else minzoom,
                     src.maxzoom if maxzoom is None else maxzoom)


def _tilejson(name: str, url: str, bounds, minzoom: int, maxzoom: int) -> dict:
    w, s, e, n = bounds
    return {"tilejson": "3.0.0", "name": name, "version": "1.0.0", "scheme": "xyz", "tiles": [url],
            "minzoom": minzoom, "maxzoom": maxzoom, "bounds": [w, s, e, n],
            "center": [(w + e) / 2, (s + n) / 2, minzoom]}


@router.get("/v1/results/{result_id}/info", responses=_ERRORS)
def result_info(result_id: str, session: SessionDep, settings: SettingsDep, token: CurrentToken,
                tms_id: Annotated[str, Query(alias="tileMatrixSetId")] = links.DEFAULT_TMS) -> dict:
    """rio-tiler's dataset info (bounds, CRS, size, overviews, nodata) plus classes, zooms and WGS84 bounds."""
    path, src = _result_source(result_id, tms_id, session, settings, token)
    return sources.info(path, src)


@router.get("/v1/results/{result_id}/statistics", responses=_ERRORS)
def result_statistics(result_id: str, session: SessionDep, settings: SettingsDep, token: CurrentToken) -> dict:
    """Pixels, area and fraction of every class over the whole COG at full resolution."""
    path, src = _result_source(result_id, links.DEFAULT_TMS, session, settings, token)
    return sources.class_areas(path, src)


@router.get("/v1/results/{result_id}/preview.png", response_class=Response, responses=_PNG)
@router.get("/v1/results/{result_id}/preview", response_class=Response, responses=_PNG, include_in_schema=False)
def result_preview(result_id: str, session: SessionDep, settings: SettingsDep, token: CurrentToken,
                   max_size: Annotated[int, Query(ge=16, le=4096)] = 1024) -> Response:
    """The whole class map as one image, its longest side at most max_size pixels (in the COG's CRS)."""
    path, src = _result_source(result_id, links.DEFAULT_TMS, session, settings, token)
    return _png(sources.preview(path, src, max_size), 300)


@router.get("/v1/results/{result_id}/point/{lon},{lat}", responses=_ERRORS)
def result_point(result_id: str, lon: Annotated[float, PathParam(ge=-180, le=180)],
                 lat: Annotated[float, PathParam(ge=-90, le=90)], session: SessionDep, settings: SettingsDep,
                 token: CurrentToken) -> dict:
    """The class at a WGS84 longitude/latitude."""
    path, src = _result_source(result_id, links.DEFAULT_TMS, session, settings, token)
    return sources.point(path, src, lon, lat)


# ---- models: live tile inference on a registered dataset --------------------------------------------

_MODEL_TYPES = ("train", "adapt")


def _bundle_dir(job: Job, settings) -> Path:
    d = output_dir(settings.job_dir(job.id)) / BUNDLE
    if job.status != SUCCESSFUL or job.type not in _MODEL_TYPES or not (d / MANIFEST).is_file():
        raise NotFoundError(f"no model {job.id}", field="id")
    return d


def _image_files(ds) -> list[str]:
    paths = ds.paths or {}
    return [paths["image"]] if paths.get("image") else list(paths.get("bands") or [])


@router.get("/v1/models/{model_id}/tiles/{tileMatrixSetId}/{z}/{x}/{y}.png", response_class=Response,
            responses={**_PNG, 422: {"model": ErrorPublic}, 503: {"model": ErrorPublic}},
            summary="Live tile inference")
def model_tile(model_id: uuid.UUID, tms_id: TmsId, z: Z, x: XY, y: XY, request: Request, session: SessionDep,
               settings: SettingsDep, token: ModelTileToken,
               dataset: Annotated[uuid.UUID, Query(description="id of a registered dataset to run the model on")]):
    """The model's classes on one tile of a registered image: predicted from model windows around the tile
    (context beyond its edges, hann-blended on one pixel lattice, so neighbouring tiles join without
    seams), cached on disk, coloured like result tiles."""
    job = job_store.get_job(session, model_id, token)
    bundle = _bundle_dir(job, settings)
    ds = dataset_store.get_dataset(session, dataset, token)
    tms = sources.get_tms(tms_id)
    if not tms.is_valid(x, y, z):
        raise NotFoundError(f"no tile {z}/{x}/{y} in {tms.id}", field="tile")
    opts = _options(request)
    images = _image_files(ds)
    options = {"window": opts.window, "zoom_out_levels": opts.zoom_out_levels}
    version = cache.tile_version([bundle / MANIFEST, bundle / WEIGHTS], map(Path, images), options)
    path = cache.tile_path(settings.data_dir, job.id, ds.id, tms.id, version, z, x, y)
    hit = cache.lookup(path)
    if hit is None:
        req = {"bundle": str(bundle), "version": version, "images": images, "tms": tms.id, "z": z, "x": x, "y": y,
               "out": str(path), **options}
        try:
            status = _tile_client(request).render(req, opts.timeout_s)
        except TimeoutError as e:
            raise ServiceUnavailableError(f"{e}; is a worker consuming the 'tiles' queue?") from None
        except Exception as e:  # the broker or the result backend is down
            log.warning("tile request failed: %s", type(e).__name__)
            raise ServiceUnavailableError("the tile queue (broker) is unreachable; retry later") from None
        hit = _answer(status, path)
    if hit is False:
        raise NotFoundError(f"no data from dataset {ds.id} in tile {z}/{x}/{y}", field="tile")
    if isinstance(hit, JSONResponse):
        return hit
    return _png(hit, 3600)


def _answer(status: dict, path: Path):
    """The worker's status as the tile bytes, False (no data), or an error."""
    kind = status.get("status")
    if kind == "ok":
        got = cache.lookup(path)
        if got is not None:
            return got
        kind, status = "failed", {"message": "the tile worker reported a tile that is not in the cache "
                                             "(do the API and the workers share the data dir?)"}
    if kind in ("empty", "out_of_range"):
        if kind == "out_of_range":
            raise NotFoundError(status.get("message") or "zoom out of range for live inference", field="z")
        return False
    if kind == "error":
        e = RasterError(status.get("message") or "the tile could not be computed", field=status.get("field"))
        e.code = status.get("type") or e.code
        raise e
    body = errors.error_body("tile_failed", [{"field": "", "message": status.get("message") or "tile worker failed"}])
    return JSONResponse(body, status_code=502)


@router.get("/v1/models/{model_id}/{tileMatrixSetId}/tilejson.json", responses=_ERRORS)
def model_tilejson(model_id: uuid.UUID, tms_id: TmsId, request: Request, session: SessionDep, settings: SettingsDep,
                   token: ModelTileToken, base: BaseUrl,
                   dataset: Annotated[uuid.UUID, Query(description="id of a registered dataset")]) -> dict:
    """TileJSON of live tile inference over a dataset (zooms: its native resolution down by a few levels)."""
    job = job_store.get_job(session, model_id, token)
    _bundle_dir(job, settings)
    ds = dataset_store.get_dataset(session, dataset, token)
    tms = sources.get_tms(tms_id)
    images = _image_files(ds)
    if not images:
        raise NotFoundError(f"dataset {ds.id} has no image", field="dataset")
    with open_imagery([Path(images[0])]).tiler(tms) as r:
        bounds = r.get_geographic_bounds(tms.rasterio_geographic_crs)
        maxzoom = raster_native_zoom(r.dataset, tms)
    minzoom = max(tms.minzoom, maxzoom - _options(request).zoom_out_levels)
    signed = tiles_query(request, "models", f"{job.id}/{ds.id}", token.id)
    url = f"{links.model_tiles(base, job.id, ds.id, tms.id)}&{signed}"
    return _tilejson(f"{job.id} on {ds.name}", url, bounds, minzoom, maxzoom)
