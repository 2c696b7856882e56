"""A small vector reader for labels and AOIs: GeoJSON via json, GeoPackage via sqlite3 + WKB parsing.

Returns GeoJSON-like geometry dicts (2-D coordinates) with their properties and the layer's CRS, which
is all ``rasterio.features`` and ``rasterio.warp.transform_geom`` need. No GDAL vector bindings.
"""
from __future__ import annotations

import json
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path

from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform_geom

from core.errors import MissingCRSError, UnreadableRasterError
from core.raster.warp import crs_label

WGS84 = CRS.from_epsg(4326)


@dataclass
class VectorLayer:
    features: list[tuple[dict, dict]]  # (geometry, properties)
    crs: CRS | None
    path: str = "<inline>"

    def to_crs(self, crs: CRS) -> list[tuple[dict, dict]]:
        """Features reprojected into ``crs`` (the layer must have a CRS)."""
        if self.crs is None:
            raise MissingCRSError(f"vector data {self.path} has no CRS, so it cannot be placed on the image")
        if self.crs == crs:
            return self.features
        try:
            return [(transform_geom(self.crs, crs, g), p) for g, p in self.features]
        except Exception:  # GDAL's CPLE_* errors (not public classes): e.g. an engineering (LOCAL_CS) image CRS
            raise MissingCRSError(
                f"vector data {self.path} cannot be placed on the image: no transformation from "
                f"{crs_label(self.crs)} to {crs_label(crs)}"
            ) from None


def read_vector(source: str | Path | dict) -> VectorLayer:
    """Read polygons (or any geometries) from a GeoJSON dict/file or a GeoPackage file."""
    if isinstance(source, dict):
        return _from_geojson(source, "<inline>")
    path = Path(source)
    if not path.exists():
        raise UnreadableRasterError(f"vector file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"SQLite format 3"):
        return _read_gpkg(path)
    try:
        obj = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnreadableRasterError(f"{path.name} is neither GeoJSON nor a GeoPackage: {e}") from None
    return _from_geojson(obj, path.name)


# GeoJSON -------------------------------------------------------------------------------------------
def _from_geojson(obj: dict, name: str) -> VectorLayer:
    if not isinstance(obj, dict) or "type" not in obj:
        raise UnreadableRasterError(f"{name}: not a GeoJSON object (no 'type')")
    crs = WGS84  # RFC 7946; the legacy 'crs' member is honoured because QGIS/GDAL still write it
    legacy = obj.get("crs")
    if isinstance(legacy, dict):
        crs_name = (legacy.get("properties") or {}).get("name")
        if crs_name:
            try:
                crs = CRS.from_user_input(crs_name)
            except CRSError:
                raise UnreadableRasterError(f"{name}: unknown CRS {crs_name!r}") from None
    t = obj["type"]
    if t == "FeatureCollection":
        feats = [(f.get("geometry"), f.get("properties") or {}) for f in obj.get("features", [])]
    elif t == "Feature":
        feats = [(obj.get("geometry"), obj.get("properties") or {})]
    else:
        feats = [(obj, {})]
    feats = [(g, p) for g, p in feats if g]
    return VectorLayer(feats, crs, name)


# GeoPackage ----------------------------------------------------------------------------------------
def _read_gpkg(path: Path) -> VectorLayer:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise UnreadableRasterError(f"cannot open GeoPackage {path.name}: {e}") from None
    try:
        rows = con.execute("SELECT table_name, column_name, srs_id FROM gpkg_geometry_columns").fetchall()
        if not rows:
            raise UnreadableRasterError(f"GeoPackage {path.name} has no vector layer")
        table, geom_col, srs_id = rows[0]  # the first layer: labels come one layer per file
        crs = _gpkg_crs(con, srs_id)
        cur = con.execute(f'SELECT * FROM "{table}"')
        cols = [d[0] for d in cur.description]
        gi = cols.index(geom_col)
        feats = []
        for row in cur:
            geom = parse_gpkg_geometry(row[gi]) if row[gi] is not None else None
            if geom is None:
                continue
            props = {c: v for i, (c, v) in enumerate(zip(cols, row)) if i != gi}
            feats.append((geom, props))
    except sqlite3.Error as e:
        raise UnreadableRasterError(f"GeoPackage {path.name} is not readable: {e}") from None
    finally:
        con.close()
    return VectorLayer(feats, crs, path.name)


def _gpkg_crs(con, srs_id: int) -> CRS | None:
    if srs_id is None or srs_id <= 0:  # -1 / 0: undefined cartesian / geographic
        return None
    row = con.execute(
        "SELECT organization, organization_coordsys_id, definition FROM gpkg_spatial_ref_sys WHERE srs_id=?",
        (srs_id,),
    ).fetchone()
    if row is None:
        return None
    org, code, definition = row
    try:
        if org and org.upper() == "EPSG" and code:
            return CRS.from_epsg(int(code))
        if definition and definition.strip().lower() != "undefined":
            return CRS.from_wkt(definition)
    except CRSError:
        return None
    return None


def parse_gpkg_geometry(blob: bytes) -> dict | None:
    """GeoPackage binary (GP header + WKB) -> GeoJSON geometry dict; None for an empty geometry."""
    blob = bytes(blob)
    if blob[:2] != b"GP":
        return parse_wkb(blob)  # some writers store bare WKB
    flags = blob[3]
    if flags & 0b10000:
        return None
    env = (flags >> 1) & 0b111
    env_len = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}.get(env)
    if env_len is None:
        raise UnreadableRasterError("GeoPackage geometry has an invalid envelope code")
    return parse_wkb(blob[8 + env_len :])


_GEOJSON_TYPES = {
    1: "Point",
    2: "LineString",
    3: "Polygon",
    4: "MultiPoint",
    5: "MultiLineString",
    6: "MultiPolygon",
    7: "GeometryCollection",
}


def parse_wkb(buf: bytes) -> dict:
    """Well-known binary (ISO or EWKB-style Z/M flags) -> GeoJSON geometry dict with x, y only."""
    geom, _ = _wkb(memoryview(buf), 0)
    return geom


def _wkb(buf, pos: int):
    order = "<" if buf[pos] == 1 else ">"
    (code,) = struct.unpack_from(order + "I", buf, pos + 1)
    pos += 5
    has_z = bool(code & 0x80000000)
    has_m = bool(code & 0x40000000)
    if code & 0x20000000:  # EWKB SRID: skip it
        pos += 4
    code &= 0x0FFFFFFF
    base, iso = code % 1000, code // 1000
    has_z = has_z or iso in (1, 3)
    has_m = has_m or iso in (2, 3)
    ndim = 2 + has_z + has_m
    if base not in _GEOJSON_TYPES:
        raise UnreadableRasterError(f"unsupported WKB geometry type {code}")

    def points(p):
        (n,) = struct.unpack_from(order + "I", buf, p)
        p += 4
        vals = struct.unpack_from(order + "d" * (n * ndim), buf, p)
        return [[vals[i * ndim], vals[i * ndim + 1]] for i in range(n)], p + 8 * n * ndim

    def rings(p):
        (n,) = struct.unpack_from(order + "I", buf, p)
        p += 4
        out = []
        for _ in range(n):
            r, p = points(p)
            out.append(r)
        return out, p

    t = _GEOJSON_TYPES[base]
    if base == 1:
        vals = struct.unpack_from(order + "d" * ndim, buf, pos)
        return {"type": t, "coordinates": [vals[0], vals[1]]}, pos + 8 * ndim
    if base == 2:
        c, pos = points(pos)
        return {"type": t, "coordinates": c}, pos
    if base == 3:
        c, pos = rings(pos)
        return {"type": t, "coordinates": c}, pos
    (n,) = struct.unpack_from(order + "I", buf, pos)
    pos += 4
    parts = []
    for _ in range(n):
        g, pos = _wkb(buf, pos)
        parts.append(g)
    if base == 7:
        return {"type": t, "geometries": parts}, pos
    return {"type": t, "coordinates": [g["coordinates"] for g in parts]}, pos


def geometry_bounds(geom: dict) -> tuple[float, float, float, float]:
    """(minx, miny, maxx, maxy) of a GeoJSON geometry."""
    xs: list[float] = []
    ys: list[float] = []

    def walk(c):
        if isinstance(c, (list, tuple)) and c and isinstance(c[0], (int, float)):
            xs.append(c[0])
            ys.append(c[1])
        elif isinstance(c, (list, tuple)):
            for x in c:
                walk(x)

    if geom["type"] == "GeometryCollection":
        bs = [geometry_bounds(g) for g in geom["geometries"]]
        return (min(b[0] for b in bs), min(b[1] for b in bs), max(b[2] for b in bs), max(b[3] for b in bs))
    walk(geom["coordinates"])
    if not xs:
        return (0.0, 0.0, 0.0, 0.0)
    return (min(xs), min(ys), max(xs), max(ys))
