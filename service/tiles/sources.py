"""Predicted COGs as tile sources: result ids (service.result_ids), class tiles, info, points, class areas.

    GET .../tiles/{tms}/{z}/{x}/{y}.png
      result id -> (job, COG name) -> owner-scoped job -> COG path         (results.prediction_files rules)
      class_source(path, tms): CogSource over the COG's reader (core.raster.reader.open_imagery: one per
                               file version per process, its classes and zooms kept with it)
        .tile(): the reader's pooled handle warped onto the TMS CRS (nearest, built once)
                 -> rio-tiler Reader.tile (nearest) -> ClassPalette.png (class colours, nodata transparent)
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import morecantile
import numpy as np
from rasterio.warp import transform as transform_coords
from rasterio.windows import Window
from rio_tiler.errors import PointOutsideBounds, TileOutsideBounds

from core.job_layout import is_prediction, output_dir, probability_path_for
from core.raster.cog import PROB_NODATA, PROB_SCALE, ClassStyle, read_class_tags
from core.raster.reader import open_imagery, tile_matrix_set
from core.raster.warp import crs_name
from core.raster.zooms import raster_native_zoom
from core.tiles import ClassPalette
from service import results as job_results
from service.errors import NotFoundError

#: mean Earth radius (m), for the areas of pixels in geographic coordinates
_EARTH_RADIUS_M = 6_371_008.8


def find_cog(job_dir: Path, name: str) -> Path | None:
    """The predicted COG called ``name`` in a job's output (the name results.prediction_name gives it).

    The name maps back to a path directly ('--' separates folders); the scan of the whole output
    folder is only the fallback for names that do not (a file whose own name contains '--').
    """
    base = name.replace("--", "/")
    for suffix in (".tif", ".tiff", ".TIF", ".TIFF"):
        p = job_results.safe_file(job_dir, base + suffix)
        if p is not None:
            rel = p.relative_to(output_dir(job_dir).resolve())
            if is_prediction(rel) and job_results.prediction_name(rel) == name:
                return p
    return job_results.prediction_files(job_dir).get(name)


def get_tms(tms_id: str) -> morecantile.TileMatrixSet:
    """A tile matrix set by id (one kept per process); NotFound for an unknown id."""
    try:
        return tile_matrix_set(tms_id)
    except Exception:  # morecantile's InvalidIdentifier; any failure means the same to a client
        known = ", ".join(morecantile.tms.list())
        raise NotFoundError(f"unknown tile matrix set {tms_id!r}; known: {known}", field="tileMatrixSetId") from None


def classes_of(ds) -> list[ClassStyle]:
    """The classes a class COG records: its CLASSES tag (names, colours), else its colour table."""
    classes = read_class_tags(ds.tags())
    if classes:
        return classes
    try:
        cmap = ds.colormap(1)
    except ValueError:
        return []
    nodata = ds.nodata
    return [ClassStyle(int(v), f"class {v}", "#%02x%02x%02x" % tuple(rgba[:3]))
            for v, rgba in sorted(cmap.items()) if v != nodata and rgba[3] > 0 and any(rgba[:3])]


class CogSource:
    """One class COG seen through one tile matrix set: its classes, palette, bounds, zooms and tiles."""

    def __init__(self, path: Path, tms: morecantile.TileMatrixSet):
        self.path = Path(path)
        self.tms = tms
        self.reader = open_imagery([self.path])
        self.classes, self.nodata = self.reader.memo("classes", self._classes)
        self.palette = ClassPalette(self.classes)
        self.minzoom, self.maxzoom, self.geographic_bounds = self.reader.memo(("zooms", tms.id), self._zooms)

    def _classes(self) -> tuple[list[ClassStyle], Any]:
        with self.reader.dataset() as ds:
            if ds.count != 1 or ds.dtypes[0] not in ("uint8", "uint16"):
                raise NotFoundError(f"{self.path.name} is not a class map (one uint8/uint16 band)", field="id")
            classes, nodata = classes_of(ds), ds.nodata
        if not classes:
            raise NotFoundError(f"{self.path.name} records no classes (no CLASSES tag or colour table)", field="id")
        return classes, nodata

    def _zooms(self) -> tuple[int, int, tuple]:
        with self.reader.tiler(self.tms, warp=True) as r:
            return (int(r.minzoom), raster_native_zoom(r.dataset, self.tms),
                    tuple(r.get_geographic_bounds(self.tms.rasterio_geographic_crs)))

    def tile(self, x: int, y: int, z: int, scale: int = 1) -> bytes:
        """A paletted PNG of one tile (``scale`` x the TMS's tile size a side); NotFound when the tile
        does not touch the COG."""
        if not self.tms.is_valid(x, y, z):
            raise NotFoundError(f"no tile {z}/{x}/{y} in {self.tms.id}", field="tile")
        size = self.tms.matrix(z).tileWidth * scale if scale != 1 else None
        try:
            img = self.reader.tile(x, y, z, self.tms, tilesize=size, warp=True, resampling_method="nearest",
                                   reproject_method="nearest")
        except TileOutsideBounds:
            raise NotFoundError(f"tile {z}/{x}/{y} is outside the result's bounds", field="tile") from None
        arr = img.array
        return self.palette.png(arr.data[0], ~np.ma.getmaskarray(arr)[0])

    def class_of(self, value: Any) -> dict | None:
        for c in self.classes:
            if value is not None and c.id == value:
                return {"id": c.id, "name": c.name, "color": c.color}
        return None


def class_source(path: Path, tms: morecantile.TileMatrixSet) -> CogSource:
    """The class COG at ``path`` through ``tms`` (its reader, classes and zooms kept per file version)."""
    return CogSource(path, tms)


# ---- whole-file products: info, preview, point, class areas --------------------------------------

def info(path: Path, src: CogSource) -> dict:
    """rio-tiler's dataset info plus the classes, the WGS84 bounds and the zooms of the TMS."""
    with src.reader.tiler(src.tms) as r:
        out = r.info().model_dump(mode="json", exclude_none=True)
    out["classes"] = [{"id": c.id, "name": c.name, "color": c.color} for c in src.classes]
    out["geographic_bounds"] = list(src.geographic_bounds)
    out["tileMatrixSetId"] = src.tms.id
    out["minzoom"], out["maxzoom"] = src.minzoom, src.maxzoom
    return out


def preview(path: Path, src: CogSource, max_size: int) -> bytes:
    """The whole COG, its longest side at most ``max_size`` pixels (in the COG's own CRS, as TiTiler)."""
    with src.reader.tiler(src.tms) as r:
        img = r.preview(max_size=max_size, resampling_method="nearest")
    arr = img.array
    return src.palette.png(arr.data[0], ~np.ma.getmaskarray(arr)[0])


def point(path: Path, src: CogSource, lon: float, lat: float) -> dict:
    with src.reader.tiler(src.tms) as r:
        pt = point_read(lambda: r.point(lon, lat), lon, lat, "result")
    masked = bool(np.ma.getmaskarray(pt.array)[0])
    value = None if masked else int(pt.array.data[0])
    out = {"coordinates": [lon, lat], "values": [value], "band_names": list(pt.band_names),
           "class": src.class_of(value)}
    if value is not None:
        probs = _probabilities_at(path, lon, lat)
        if probs is not None:
            out["probabilities"] = probs
    return out


def _probabilities_at(class_path: Path, lon: float, lat: float) -> dict[str, float] | None:
    """Class name -> probability at a point, from the class COG's probability COG when it has one."""
    p = probability_path_for(class_path)
    if not p.is_file():
        return None
    with open_imagery([p]).dataset() as ds:
        xs, ys = transform_coords("EPSG:4326", ds.crs, [lon], [lat])
        row, col = ds.index(xs[0], ys[0])
        if not (0 <= row < ds.height and 0 <= col < ds.width):
            return None
        q = ds.read(window=Window(col, row, 1, 1))[:, 0, 0]
        names = [d or f"band {i + 1}" for i, d in enumerate(ds.descriptions)]
    if (q == PROB_NODATA).any():
        return None
    return {name: round(float(v) / PROB_SCALE, 4) for name, v in zip(names, q)}


def point_read(read: Callable[[], Any], lon: float, lat: float, what: str) -> Any:
    """``read()`` of a point; a point off the raster (outside its bounds, or outside its CRS's domain) is a
    404 naming ``what`` was asked (result, dataset), not a server error."""
    try:
        return read()
    except PointOutsideBounds:
        raise NotFoundError(f"point ({lon}, {lat}) is outside the {what}'s bounds", field="point") from None
    except Exception as e:
        if not point_outside_domain(e):
            raise
        raise NotFoundError(f"point ({lon}, {lat}) is outside the domain of the {what}'s CRS",
                            field="point") from None


def point_outside_domain(e: BaseException) -> bool:
    """GDAL/PROJ refusing to transform a lon/lat into a projected CRS ("Point outside of projection domain"
    for 0,0 into UTM 17N, "Reprojection failed" for 2e-308,2e-308): a point that is not on the raster, not
    a server error. GDAL's CPLE_* classes are not public, hence the module test."""
    text = str(e).lower()
    return type(e).__module__.startswith("rasterio") and any(w in text for w in ("domain", "reprojection", "transform"))


def _pixel_area_m2(ds) -> float | None:
    """Area of one pixel in m² for a projected CRS (None: geographic or no CRS, see class_areas)."""
    if ds.crs is None or ds.crs.is_geographic:
        return None
    t = ds.transform
    try:
        unit = float(ds.crs.linear_units_factor[1])
    except Exception:  # unusual units: assume metres rather than fail the statistics
        unit = 1.0
    return abs(t.a * t.e - t.b * t.d) * unit * unit


def _row_areas_geographic(ds) -> np.ndarray:
    """Area in m² of one pixel of each row, for north-up rasters in degrees (spherical Earth)."""
    t = ds.transform
    rows = np.arange(ds.height + 1, dtype=np.float64)
    lat = np.radians(np.clip(t.f + t.e * rows, -90.0, 90.0))
    dlon = math.radians(abs(t.a))
    return _EARTH_RADIUS_M**2 * dlon * np.abs(np.diff(np.sin(lat)))


def class_areas(path: Path, src: CogSource) -> dict:
    """Pixels and area of every class over the whole COG at full resolution (kept with its reader)."""
    return src.reader.memo("class_areas", lambda: _count_class_areas(src))


def _count_class_areas(src: CogSource) -> dict:
    """Streamed block by block."""
    with src.reader.dataset() as ds:
        nodata = ds.nodata
        size = 256 if ds.dtypes[0] == "uint8" else 65536
        counts = np.zeros(size, np.int64)
        areas = np.zeros(size, np.float64)
        px_area = _pixel_area_m2(ds)
        row_areas = _row_areas_geographic(ds) if (ds.crs is not None and ds.crs.is_geographic) else None
        for _, win in ds.block_windows(1):
            block = ds.read(1, window=win).ravel()
            counts += np.bincount(block, minlength=size)
            if row_areas is not None:
                r0 = int(win.row_off)
                per_row = np.repeat(row_areas[r0:r0 + int(win.height)], int(win.width))
                areas += np.bincount(block, weights=per_row, minlength=size)
        crs = crs_name(ds.crs)
        width, height = ds.width, ds.height
    if px_area is not None:
        areas = counts * px_area
    has_area = px_area is not None or row_areas is not None
    ids = {c.id for c in src.classes}
    valid_pixels = int(sum(counts[c] for c in ids if c < size))
    valid_area = float(sum(areas[c] for c in ids if c < size)) if has_area else None
    classes = []
    for c in src.classes:
        n = int(counts[c.id]) if c.id < size else 0
        a = float(areas[c.id]) if has_area and c.id < size else None
        classes.append({"id": c.id, "name": c.name, "color": c.color, "pixels": n,
                        "fraction": (n / valid_pixels) if valid_pixels else 0.0,
                        "area_m2": a, "area_km2": (a / 1e6) if a is not None else None})
    nodata_i = int(nodata) if nodata is not None else None
    other = {int(v): int(counts[v]) for v in np.flatnonzero(counts) if int(v) not in ids and int(v) != nodata_i}
    out = {
        "classes": classes,
        "valid_pixels": valid_pixels,
        "valid_area_m2": valid_area,
        "nodata_pixels": int(counts[nodata_i]) if nodata_i is not None and nodata_i < size else 0,
        "other_values": other,  # values that are neither a class nor nodata (should be empty)
        "pixels": width * height,
        "pixel_area_m2": px_area,
        "crs": crs,
    }
    return out
