"""Input imagery as map tiles, TiTiler-style: /v1/datasets/{id}/tiles/{tms}/{z}/{x}/{y}.png?bidx=3,2,1&rescale=0,255,
and the same for a scene a job names: /v1/jobs/{id}/scenes/{source|target|validation}/{i}/tiles/... (so a job
submitted with paths, not datasets, still shows its imagery). Owner-scoped: another token's ids answer 404.

    token -> dataset or job (owner) -> image files -> ImagerySource
      one multi-band file           -> rio-tiler Reader on the file
      band files on one pixel grid  -> rio-tiler Reader on an in-memory VRT stacking them (one warp
                                       for all bands: a third of the time of one Reader per band)
      band files on different grids -> one Reader per selected band, stacked after the warp
    -> bands picked by `bidx` -> linear stretch `rescale` (default: the 2nd-98th percentile of each band)
    -> PNG: 1 band grey or 3 bands RGB, plus alpha where the data is missing (nodata transparent)
"""
from __future__ import annotations

import threading
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Iterator, Literal
from urllib.parse import urlencode
from xml.sax.saxutils import escape

import morecantile
import numpy as np
import rasterio
from rasterio.enums import Resampling
from fastapi import APIRouter, Path as PathParam, Query, Request, Response
from rasterio.errors import RasterioError
from rio_tiler.errors import PointOutsideBounds, RioTilerError, TileOutsideBounds
from rio_tiler.io import Reader
from rio_tiler.models import ImageData

from core.errors import SpecError, UnreadableRasterError
from core.lru import LRU
from core.raster.warp import crs_name
from core.raster.zooms import raster_native_zoom
from service.api import links
from service.api.deps import BaseUrl, CurrentToken, DatasetTileToken, SceneTileToken, SessionDep
from service.api.signed_urls import tiles_query
from service.api.schemas import ErrorPublic
from service.errors import NotFoundError
from service.store import datasets as dataset_store
from service.store import jobs as job_store
from service.tiles.sources import point_outside_domain

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

#: percentiles of the default stretch (per band, over a decimated read of the whole image)
STRETCH_PERCENTILES = (2, 98)
#: longest side of the decimated read the default stretch is computed from
STATS_MAX_SIZE = 1024
#: images kept open-able with their statistics (keyed by file versions)
MAX_SOURCES = 32


@dataclass(frozen=True)
class RenderParams:
    """The query parameters of an imagery tile, parsed and checked (field names as the client sent them)."""

    bidx: tuple[int, ...] | None
    rescale: tuple[tuple[float, float], ...] | None

    @classmethod
    def parse(cls, bidx: list[str] | None, rescale: list[str] | None) -> "RenderParams":
        idx = None
        if bidx:
            try:
                idx = tuple(int(v) for item in bidx for v in item.split(",") if v.strip())
            except ValueError:
                raise SpecError(f"bidx must be band numbers, got {','.join(bidx)!r}", field="bidx") from None
            if len(idx) not in (1, 3):
                raise SpecError(f"bidx selects 1 band (grey) or 3 (RGB), got {len(idx)}", field="bidx")
        ranges = None
        if rescale:
            out = []
            for item in rescale:
                parts = [p for p in item.split(",") if p.strip()]
                try:
                    lo, hi = (float(p) for p in parts)
                except ValueError:
                    raise SpecError(f"rescale must be 'min,max', got {item!r}", field="rescale") from None
                if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
                    raise SpecError(f"rescale needs finite min < max, got {item!r}", field="rescale")
                out.append((lo, hi))
            ranges = tuple(out)
        return cls(idx, ranges)

    def query(self) -> str:
        q: list[tuple[str, str]] = []
        if self.bidx:
            q.append(("bidx", ",".join(map(str, self.bidx))))
        for lo, hi in self.rescale or ():
            q.append(("rescale", f"{lo:g},{hi:g}"))
        return urlencode(q)


def _same_grid(files: list[Path]) -> bool:
    grids = set()
    for p in files:
        with rasterio.open(p) as ds:
            grids.add((ds.width, ds.height, tuple(ds.transform), ds.crs.to_wkt() if ds.crs else None))
    return len(grids) == 1


_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "float32": "Float32", "float64": "Float64"}


def stack_vrt(files: list[Path]) -> str:
    """VRT XML stacking single-band files of one pixel grid (GDAL opens the XML text itself)."""
    with rasterio.open(files[0]) as ds:
        w, h, crs, gt = ds.width, ds.height, ds.crs, ds.transform.to_gdal()
    head = [f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}">']
    if crs is not None:
        head.append(f"<SRS>{escape(crs.to_wkt())}</SRS>")
    head.append(f"<GeoTransform>{', '.join(repr(float(v)) for v in gt)}</GeoTransform>")
    kinds = []
    for p in files:
        with rasterio.open(p) as ds:
            kinds.append((ds.dtypes[0], ds.nodata))
    # one type for the stack (GDAL reads a VRT's bands into one array), wide enough for every file
    dtype = _GDAL_TYPES.get(np.result_type(*[k[0] for k in kinds]).name, "Float64")
    bands = []
    for i, (p, (_, nodata)) in enumerate(zip(files, kinds), start=1):
        # each file keeps its own nodata value (NC: -99999 in float bands, -32768 in an int16 one)
        nd = f"<NoDataValue>{nodata!r}</NoDataValue>" if nodata is not None else ""
        bands.append(f'<VRTRasterBand dataType="{dtype}" band="{i}">{nd}<SimpleSource>'
                     f'<SourceFilename relativeToVRT="0">{escape(str(Path(p).resolve()))}</SourceFilename>'
                     f"<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>")
    return "".join(head + bands + ["</VRTDataset>"])


class ImagerySource:
    """A dataset's image (one file or a band stack) as rio-tiler readers, with its default stretch."""

    def __init__(self, files: list[Path]):
        if not files:
            raise NotFoundError("the dataset has no image", field="id")
        self.files = files
        if len(files) == 1:
            self.stacked: str | None = str(files[0])
        else:
            self.stacked = stack_vrt(files) if _same_grid(files) else None
        with self._reader(0) as r:
            self.count = len(files) if self.stacked is None or len(files) > 1 else r.dataset.count
            self.dtype = r.dataset.dtypes[0]
            self.nodata = r.dataset.nodata
            self.crs = crs_name(r.dataset.crs)
            self.bounds = list(r.bounds)
        self._percentiles: list[tuple[float, float]] | None = None
        self._lock = threading.Lock()

    @contextmanager
    def _reader(self, band: int, tms: morecantile.TileMatrixSet | None = None) -> Iterator[Reader]:
        """A reader of the stack (`band` ignored) or of one band file (0-based) when not stackable."""
        src = self.stacked if self.stacked is not None else str(self.files[band])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rio-tiler's "no overviews" note on small images
            with Reader(src, tms=tms or morecantile.tms.get(links.DEFAULT_TMS)) as r:
                yield r

    def check_bands(self, bidx: tuple[int, ...]) -> None:
        bad = [b for b in bidx if not 1 <= b <= self.count]
        if bad:
            raise SpecError(f"the dataset has bands 1..{self.count}; no band {bad[0]}", field="bidx")

    def default_bidx(self) -> tuple[int, ...]:
        return (3, 2, 1) if self.count >= 3 else (1,)

    def percentiles(self) -> list[tuple[float, float]]:
        """(p2, p98) of every band over a decimated read of the whole image (computed once).

        Each band with its own mask: in a stack a band may lack data where the others have it
        (NC's int16 band 7 marks pixels -32768 that the float bands fill), which rio-tiler's
        dataset-wide mask would count as values.
        """
        with self._lock:
            if self._percentiles is None:
                sources = [self.stacked] if self.stacked is not None else [str(p) for p in self.files]
                out: list[tuple[float, float]] = []
                for src in sources:
                    with rasterio.open(src) as ds:
                        f = max(1.0, max(ds.width, ds.height) / STATS_MAX_SIZE)
                        shape = (max(1, round(ds.height / f)), max(1, round(ds.width / f)))
                        for b in range(1, ds.count + 1):
                            a = ds.read(b, out_shape=shape, masked=True, resampling=Resampling.nearest)
                            v = a.compressed().astype(np.float64)
                            v = v[np.isfinite(v)]
                            lo, hi = (np.percentile(v, STRETCH_PERCENTILES) if v.size else (0.0, 1.0))
                            out.append((float(lo), float(hi) if hi > lo else float(lo) + 1.0))
                self._percentiles = out
            return self._percentiles

    def read_tile(self, x: int, y: int, z: int, tms: morecantile.TileMatrixSet, bidx: tuple[int, ...],
                  tilesize: int) -> ImageData:
        try:
            if self.stacked is not None:
                with self._reader(0, tms) as r:
                    return r.tile(x, y, z, tilesize=tilesize, indexes=bidx)
            parts = []
            for b in bidx:
                with self._reader(b - 1, tms) as r:
                    parts.append(r.tile(x, y, z, tilesize=tilesize, indexes=1))
            return ImageData.create_from_list(parts)
        except TileOutsideBounds:
            raise NotFoundError(f"tile {z}/{x}/{y} is outside the dataset's bounds", field="tile") from None

    def point(self, lon: float, lat: float) -> list[float | None]:
        try:
            if self.stacked is not None:
                with self._reader(0) as r:
                    pts = [r.point(lon, lat)]
            else:
                pts = []
                for i in range(self.count):
                    with self._reader(i) as r:
                        pts.append(r.point(lon, lat, indexes=1))
        except PointOutsideBounds:
            raise NotFoundError(f"point ({lon}, {lat}) is outside the dataset's bounds", field="point") from None
        except Exception as e:
            if not point_outside_domain(e):
                raise
            raise NotFoundError(f"point ({lon}, {lat}) is outside the domain of the dataset's CRS",
                                field="point") from None
        values: list[float | None] = []
        for pt in pts:
            arr = pt.array
            mask = np.ma.getmaskarray(arr)
            values += [None if mask[i] else float(arr.data[i]) for i in range(arr.shape[0])]
        return values


def render_png(img: ImageData, ranges: list[tuple[float, float]]) -> bytes:
    """Stretch each band linearly to 0-255 and encode; pixels without data become transparent."""
    if len(ranges) == 1 and img.count > 1:
        ranges = ranges * img.count
    img = img.rescale(in_range=tuple(ranges), out_range=((0, 255),), out_dtype="uint8")
    return img.render(add_mask=True, img_format="PNG")


# ---- sources, cached by the version of their files -------------------------------------------------

#: sources hold no open files (readers open per request): evicting one needs no close
_sources = LRU(MAX_SOURCES)


def _image_files(ds) -> list[Path]:
    paths = ds.paths or {}
    return [Path(paths["image"])] if paths.get("image") else [Path(p) for p in paths.get("bands") or []]


def get_source(files: list[Path]) -> ImagerySource:
    try:
        key = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    except OSError:
        raise NotFoundError("the dataset's files are gone from the server", field="id") from None
    return _sources.get(key, lambda: ImagerySource(files))


def _tms(tms_id: str) -> morecantile.TileMatrixSet:
    try:
        return morecantile.tms.get(tms_id)
    except Exception:  # morecantile's InvalidIdentifier; any failure means the same to a client
        raise NotFoundError(f"unknown tile matrix set {tms_id!r}; known: {', '.join(morecantile.tms.list())}",
                            field="tileMatrixSetId") from None


@contextmanager
def _reading() -> Iterator[None]:
    """A file that changed on disk since its registration (truncated, replaced) is the client's 422, not a 500."""
    try:
        yield
    except (RasterioError, RioTilerError) as e:
        raise UnreadableRasterError(f"the imagery cannot be read any more: {e}", field="id") from None


@dataclass
class Imagery:
    """Imagery the caller may see: a registered dataset's image, or one scene that a job of theirs names."""

    name: str
    files: list[Path]
    href: str        # the URL the tile paths hang from
    labelled: bool
    src: ImagerySource


def _dataset_imagery(dataset_id: uuid.UUID, session, token, base: str) -> Imagery:
    ds = dataset_store.get_dataset(session, dataset_id, token)
    files = _image_files(ds)
    with _reading():
        src = get_source(files)
    return Imagery(ds.name, files, links.dataset(base, ds.id), bool((ds.paths or {}).get("labels")), src)


def _scene_imagery(job_id: uuid.UUID, role: str, index: int, session, token, base: str) -> Imagery:
    """A scene of a job's spec: its paths were confined to the allowed roots when the job was submitted."""
    job = job_store.get_job(session, job_id, token)
    scenes = (((job.spec or {}).get(role) or {}).get("scenes") or [])
    if index >= len(scenes):
        raise NotFoundError(f"job {job.id} has no {role} scene {index}", field="index")
    sc = scenes[index]
    files = [Path(sc["image"])] if sc.get("image") else [Path(p) for p in sc.get("bands") or []]
    with _reading():
        src = get_source(files)
    name = f"{role} scene {index + 1} of job {str(job.id)[:8]} ({files[0].name if len(files) == 1 else f'{len(files)} band files'})"
    return Imagery(name, files, f"{links.job(base, job.id)}/scenes/{role}/{index}", bool(sc.get("labels")), src)


def _render_params(src: ImagerySource, bidx, rescale) -> tuple[tuple[int, ...], list[tuple[float, float]]]:
    p = RenderParams.parse(bidx, rescale)
    bands = p.bidx or src.default_bidx()
    src.check_bands(bands)
    if p.rescale:
        if len(p.rescale) not in (1, len(bands)):
            raise SpecError(f"give rescale once, or once per band ({len(bands)})", field="rescale")
        ranges = list(p.rescale)
    else:
        pct = src.percentiles()
        ranges = [pct[b - 1] for b in bands]
    return bands, ranges


def tile_png(im: Imagery, tms_id: str, z: int, x: int, y: int, bidx, rescale, scale: int = 1) -> Response:
    tms = _tms(tms_id)
    if not tms.is_valid(x, y, z):
        raise NotFoundError(f"no tile {z}/{x}/{y} in {tms.id}", field="tile")
    with _reading():
        bands, ranges = _render_params(im.src, bidx, rescale)
        img = im.src.read_tile(x, y, z, tms, bands, tms.matrix(z).tileWidth * scale)
        png = render_png(img, ranges)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


def tilejson(im: Imagery, tms_id: str, bidx, rescale, signed: str) -> dict:
    """TileJSON 3.0 of the imagery with these render parameters (the default stretch spelled out); `signed`:
    the signature its tile URLs carry (service/api/signed_urls.py)."""
    tms = _tms(tms_id)
    with _reading():
        bands, ranges = _render_params(im.src, bidx, rescale)
        with im.src._reader(0, tms) as r:
            w, s, e, n = r.get_geographic_bounds(tms.rasterio_geographic_crs)
            minzoom, maxzoom = int(r.minzoom), raster_native_zoom(r.dataset, tms)
    q = RenderParams(bands, tuple(ranges)).query()
    url = f"{im.href}/tiles/{tms.id}/{{z}}/{{x}}/{{y}}.png?{q}&{signed}"
    return {"tilejson": "3.0.0", "name": im.name, "version": "1.0.0", "scheme": "xyz", "tiles": [url],
            "minzoom": minzoom, "maxzoom": maxzoom, "bounds": [w, s, e, n],
            "center": [(w + e) / 2, (s + n) / 2, minzoom]}


def info(im: Imagery, tms_id: str) -> dict:
    """What a map needs to show the imagery: bands, default bands and stretch, bounds, zooms."""
    tms = _tms(tms_id)
    src = im.src
    with _reading(), src._reader(0, tms) as r:
        geo = list(r.get_geographic_bounds(tms.rasterio_geographic_crs))
        minzoom, maxzoom = int(r.minzoom), raster_native_zoom(r.dataset, tms)
        percentiles = src.percentiles()
    names = [p.stem for p in im.files] if len(im.files) > 1 else [f"band {i + 1}" for i in range(src.count)]
    return {"name": im.name, "href": im.href, "count": src.count, "band_names": names, "dtype": src.dtype,
            "nodata": src.nodata, "crs": src.crs, "bounds": src.bounds, "geographic_bounds": geo,
            "tileMatrixSetId": tms.id, "minzoom": minzoom, "maxzoom": maxzoom,
            "default_bidx": list(src.default_bidx()),
            "percentiles": {"p": list(STRETCH_PERCENTILES), "bands": [list(v) for v in percentiles]},
            "labelled": im.labelled}


def point(im: Imagery, lon: float, lat: float) -> dict:
    with _reading():
        values = im.src.point(lon, lat)
    return {"coordinates": [lon, lat], "values": values}


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


@router.get(_DS + "/tiles/{tileMatrixSetId}/{z}/{x}/{y}@{scale}x.png", response_class=Response, responses=_PNG,
            summary="A dataset imagery tile at a scale (256 px x scale)")
def dataset_tile_scaled(dataset_id: DatasetId, tms_id: TmsId, z: Z, x: XY, y: XY, scale: Scale, session: SessionDep,
                        token: DatasetTileToken, base: BaseUrl, bidx: BidxQuery = None,
                        rescale: RescaleQuery = None) -> Response:
    return tile_png(_dataset_imagery(dataset_id, session, token, base), tms_id, z, x, y, bidx, rescale, scale)


@router.get(_DS + "/tiles/{tileMatrixSetId}/{z}/{x}/{y}.png", response_class=Response, responses=_PNG,
            summary="A dataset imagery tile")
def dataset_tile(dataset_id: DatasetId, tms_id: TmsId, z: Z, x: XY, y: XY, session: SessionDep, token: DatasetTileToken,
                 base: BaseUrl, bidx: BidxQuery = None, rescale: RescaleQuery = None) -> Response:
    """Bands `bidx` of the dataset's image, stretched linearly by `rescale`, as grey or RGB."""
    return tile_png(_dataset_imagery(dataset_id, session, token, base), tms_id, z, x, y, bidx, rescale)


@router.get(_DS + "/{tileMatrixSetId}/tilejson.json", responses=_ERRORS, summary="TileJSON of a dataset's imagery")
def dataset_tilejson(dataset_id: DatasetId, tms_id: TmsId, request: Request, session: SessionDep,
                     token: DatasetTileToken, base: BaseUrl, bidx: BidxQuery = None,
                     rescale: RescaleQuery = None) -> dict:
    im = _dataset_imagery(dataset_id, session, token, base)
    return tilejson(im, tms_id, bidx, rescale, tiles_query(request, "datasets", str(dataset_id), token.id))


@router.get(_DS + "/info", responses=_ERRORS, summary="Bands, default stretch, bounds and zooms of a dataset")
def dataset_info(dataset_id: DatasetId, session: SessionDep, token: CurrentToken, base: BaseUrl,
                 tms_id: TmsQuery = links.DEFAULT_TMS) -> dict:
    im = _dataset_imagery(dataset_id, session, token, base)
    return {"id": str(dataset_id), **info(im, tms_id)}


@router.get(_DS + "/point/{lon},{lat}", responses=_ERRORS, summary="Band values of a dataset at a point")
def dataset_point(dataset_id: DatasetId, lon: Lon, lat: Lat, session: SessionDep, token: CurrentToken,
                  base: BaseUrl) -> dict:
    """The value of every band at a WGS84 longitude/latitude (null where there is no data)."""
    return point(_dataset_imagery(dataset_id, session, token, base), lon, lat)


@router.get(_SC + "/tiles/{tileMatrixSetId}/{z}/{x}/{y}.png", response_class=Response, responses=_PNG,
            summary="An imagery tile of a job's scene")
def scene_tile(job_id: JobId, role: Role, index: Index, tms_id: TmsId, z: Z, x: XY, y: XY, session: SessionDep,
               token: SceneTileToken, base: BaseUrl, bidx: BidxQuery = None, rescale: RescaleQuery = None) -> Response:
    """A scene named in a job's spec (e.g. the target it mapped), registered as a dataset or not."""
    return tile_png(_scene_imagery(job_id, role, index, session, token, base), tms_id, z, x, y, bidx, rescale)


@router.get(_SC + "/{tileMatrixSetId}/tilejson.json", responses=_ERRORS, summary="TileJSON of a job's scene")
def scene_tilejson(job_id: JobId, role: Role, index: Index, tms_id: TmsId, request: Request, session: SessionDep,
                   token: SceneTileToken, base: BaseUrl, bidx: BidxQuery = None,
                   rescale: RescaleQuery = None) -> dict:
    im = _scene_imagery(job_id, role, index, session, token, base)
    return tilejson(im, tms_id, bidx, rescale, tiles_query(request, "scenes", f"{job_id}/{role}/{index}", token.id))


@router.get(_SC + "/info", responses=_ERRORS, summary="Bands, default stretch, bounds and zooms of a job's scene")
def scene_info(job_id: JobId, role: Role, index: Index, session: SessionDep, token: CurrentToken, base: BaseUrl,
               tms_id: TmsQuery = links.DEFAULT_TMS) -> dict:
    return info(_scene_imagery(job_id, role, index, session, token, base), tms_id)


@router.get(_SC + "/point/{lon},{lat}", responses=_ERRORS, summary="Band values of a job's scene at a point")
def scene_point(job_id: JobId, role: Role, index: Index, lon: Lon, lat: Lat, session: SessionDep,
                token: CurrentToken, base: BaseUrl) -> dict:
    return point(_scene_imagery(job_id, role, index, session, token, base), lon, lat)
