"""Input imagery as map tiles: which image a caller may see, its render parameters, and the PNG, TileJSON,
info and point answers the imagery routes (service/api/routes/dataset_tiles.py) return.

    token -> dataset or job (owner) -> image files -> core.raster.reader.open_imagery (one reader per
                                                     file version per process)
    -> bands picked by `bidx` -> linear stretch `rescale` (default: the 2nd-98th percentile of each band)
    -> PNG: 1 band grey or 3 bands RGB, plus alpha where the data is missing (nodata transparent)
"""
from __future__ import annotations

import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlencode

import numpy as np
from fastapi import Response
from rasterio.errors import RasterioError
from rio_tiler.errors import RioTilerError, TileOutsideBounds
from rio_tiler.models import ImageData

from core.errors import SpecError, UnreadableRasterError
from core.raster.reader import ImageReader, open_imagery
from core.raster.zooms import raster_native_zoom
from service.errors import NotFoundError
from service.store import datasets as dataset_store
from service.store import jobs as job_store
from service.tiles.sources import get_tms, point_read

#: percentiles of the default stretch (per band, over a decimated read of the whole image)
STRETCH_PERCENTILES = (2, 98)
#: longest side of the decimated read the default stretch is computed from
STATS_MAX_SIZE = 1024


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


def default_bidx(reader: ImageReader) -> tuple[int, ...]:
    return (3, 2, 1) if reader.count >= 3 else (1,)


def check_bands(reader: ImageReader, bidx: tuple[int, ...]) -> None:
    bad = [b for b in bidx if not 1 <= b <= reader.count]
    if bad:
        raise SpecError(f"the dataset has bands 1..{reader.count}; no band {bad[0]}", field="bidx")


def stretch(reader: ImageReader) -> list[tuple[float, float]]:
    """The default stretch of every band: its 2nd and 98th percentiles."""
    return reader.percentiles(STRETCH_PERCENTILES, STATS_MAX_SIZE)


def render_png(img: ImageData, ranges: list[tuple[float, float]]) -> bytes:
    """Stretch each band linearly to 0-255 and encode; pixels without data become transparent."""
    if len(ranges) == 1 and img.count > 1:
        ranges = ranges * img.count
    img = img.rescale(in_range=tuple(ranges), out_range=((0, 255),), out_dtype="uint8")
    return img.render(add_mask=True, img_format="PNG")


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
    reader: ImageReader


def _reader(files: list[Path]) -> ImageReader:
    if not files:
        raise NotFoundError("the dataset has no image", field="id")
    with _reading():
        try:
            return open_imagery(files)
        except OSError:
            raise NotFoundError("the dataset's files are gone from the server", field="id") from None


def dataset_imagery(dataset_id: uuid.UUID, session, token, href: str) -> Imagery:
    """A registered dataset's image; ``href``: its URL, which the API builds (service.api.links)."""
    ds = dataset_store.get_dataset(session, dataset_id, token)
    paths = ds.paths or {}
    files = [Path(paths["image"])] if paths.get("image") else [Path(p) for p in paths.get("bands") or []]
    return Imagery(ds.name, files, href, bool(paths.get("labels")), _reader(files))


def scene_imagery(job_id: uuid.UUID, role: str, index: int, session, token, href: str) -> Imagery:
    """A scene of a job's spec: its paths were confined to the allowed roots when the job was submitted. ``href``:
    its URL, which the API builds (service.api.links)."""
    job = job_store.get_job(session, job_id, token)
    scenes = (((job.spec or {}).get(role) or {}).get("scenes") or [])
    if index >= len(scenes):
        raise NotFoundError(f"job {job.id} has no {role} scene {index}", field="index")
    sc = scenes[index]
    files = [Path(sc["image"])] if sc.get("image") else [Path(p) for p in sc.get("bands") or []]
    reader = _reader(files)
    name = f"{role} scene {index + 1} of job {str(job.id)[:8]} ({files[0].name if len(files) == 1 else f'{len(files)} band files'})"
    return Imagery(name, files, href, bool(sc.get("labels")), reader)


def _render_params(reader: ImageReader, bidx, rescale) -> tuple[tuple[int, ...], list[tuple[float, float]]]:
    p = RenderParams.parse(bidx, rescale)
    bands = p.bidx or default_bidx(reader)
    check_bands(reader, bands)
    if p.rescale:
        if len(p.rescale) not in (1, len(bands)):
            raise SpecError(f"give rescale once, or once per band ({len(bands)})", field="rescale")
        ranges = list(p.rescale)
    else:
        pct = stretch(reader)
        ranges = [pct[b - 1] for b in bands]
    return bands, ranges


def imagery_tile(im: Imagery, tms_id: str, z: int, x: int, y: int, bidx, rescale, scale: int = 1) -> Response:
    tms = get_tms(tms_id)
    if not tms.is_valid(x, y, z):
        raise NotFoundError(f"no tile {z}/{x}/{y} in {tms.id}", field="tile")
    with _reading():
        bands, ranges = _render_params(im.reader, bidx, rescale)
        try:
            img = im.reader.tile(x, y, z, tms, indexes=bands, tilesize=tms.matrix(z).tileWidth * scale)
        except TileOutsideBounds:
            raise NotFoundError(f"tile {z}/{x}/{y} is outside the dataset's bounds", field="tile") from None
        png = render_png(img, ranges)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


def imagery_tilejson(im: Imagery, tms_id: str, bidx, rescale, signed: str) -> dict:
    """TileJSON 3.0 of the imagery with these render parameters (the default stretch spelled out); `signed`:
    the signature its tile URLs carry (service/api/signed_urls.py)."""
    tms = get_tms(tms_id)
    with _reading():
        bands, ranges = _render_params(im.reader, bidx, rescale)
        with im.reader.tiler(tms) as r:
            w, s, e, n = r.get_geographic_bounds(tms.rasterio_geographic_crs)
            minzoom, maxzoom = int(r.minzoom), raster_native_zoom(r.dataset, tms)
    q = RenderParams(bands, tuple(ranges)).query()
    url = f"{im.href}/tiles/{tms.id}/{{z}}/{{x}}/{{y}}.png?{q}&{signed}"
    return {"tilejson": "3.0.0", "name": im.name, "version": "1.0.0", "scheme": "xyz", "tiles": [url],
            "minzoom": minzoom, "maxzoom": maxzoom, "bounds": [w, s, e, n],
            "center": [(w + e) / 2, (s + n) / 2, minzoom]}


def imagery_info(im: Imagery, tms_id: str) -> dict:
    """What a map needs to show the imagery: bands, default bands and stretch, bounds, zooms."""
    tms = get_tms(tms_id)
    reader = im.reader
    with _reading():
        with reader.tiler(tms) as r:
            geo = list(r.get_geographic_bounds(tms.rasterio_geographic_crs))
            minzoom, maxzoom = int(r.minzoom), raster_native_zoom(r.dataset, tms)
        percentiles = stretch(reader)
    names = [p.stem for p in im.files] if len(im.files) > 1 else [f"band {i + 1}" for i in range(reader.count)]
    return {"name": im.name, "href": im.href, "count": reader.count, "band_names": names, "dtype": reader.dtype,
            "nodata": reader.nodata, "crs": reader.crs, "bounds": reader.bounds, "geographic_bounds": geo,
            "tileMatrixSetId": tms.id, "minzoom": minzoom, "maxzoom": maxzoom,
            "default_bidx": list(default_bidx(reader)),
            "percentiles": {"p": list(STRETCH_PERCENTILES), "bands": [list(v) for v in percentiles]},
            "labelled": im.labelled}


def imagery_point(im: Imagery, lon: float, lat: float) -> dict:
    """The value of every band at a WGS84 point (None where there is no data)."""
    with _reading():
        pt = point_read(lambda: im.reader.point(lon, lat), lon, lat, "dataset")
    arr = pt.array
    mask = np.ma.getmaskarray(arr)
    values = [None if mask[i] else float(arr.data[i]) for i in range(arr.shape[0])]
    return {"coordinates": [lon, lat], "values": values}
