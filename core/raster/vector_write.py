"""Writing polygons with attributes as a GeoPackage layer (pyogrio) or GeoJSON, atomically.

The reader (core.raster.vector) parses GeoPackages itself; writing one by hand would mean the
R-tree, the metadata tables and the spatial reference rows, so the writer goes through GDAL's
GPKG driver via pyogrio (a small wheel with GDAL inside), imported only when writing.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def polygon_wkb(geom: dict) -> bytes:
    """ISO WKB (little endian) of a GeoJSON Polygon."""
    if geom.get("type") != "Polygon":
        raise ValueError(f"only polygons are written, got {geom.get('type')!r}")
    rings = geom["coordinates"]
    out = [struct.pack("<BII", 1, 3, len(rings))]
    for ring in rings:
        out.append(struct.pack("<I", len(ring)))
        out.extend(struct.pack("<dd", float(x), float(y)) for x, y, *_ in ring)
    return b"".join(out)


def _column(values: list) -> np.ndarray:
    """A field's values as a numpy array pyogrio maps to a GeoPackage type (None -> NaN / empty)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (bool, np.bool_)) for v in present):
        return np.array([bool(v) for v in values])
    if present and all(isinstance(v, (int, np.integer)) for v in present) and len(present) == len(values):
        return np.array(values, dtype=np.int64)
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in present):
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return np.array(["" if v is None else str(v) for v in values], dtype=object)


def write_gpkg(path: str | Path, features: Sequence[tuple[dict, dict]], crs: Any, *, layer: str) -> Path:
    """Write (polygon, properties) pairs as one GeoPackage layer; replaces ``path`` atomically.

    Every feature must have the same property names. ``crs``: a rasterio CRS or None.
    """
    from pyogrio.raw import write

    path = Path(path)
    names = list(features[0][1]) if features else []
    fields = [_column([p.get(n) for _, p in features]) for n in names]
    geoms = np.array([polygon_wkb(g) for g, _ in features], dtype=object)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".gpkg")
    os.close(fd)
    os.unlink(tmp)  # the driver creates the file itself
    try:
        with warnings.catch_warnings():
            # polygons of an image without a CRS are in its grid's own coordinates, on purpose: pyogrio's warning
            # that the layer has no projection would only alarm the user
            warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
            write(tmp, geoms, fields, names, layer=layer, driver="GPKG", geometry_type="Polygon",
                  crs=crs.to_wkt() if crs is not None else None)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_geojson(path: str | Path, collection: dict) -> Path:
    """Write a FeatureCollection as JSON; replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(collection))
    os.replace(tmp, path)
    return path
