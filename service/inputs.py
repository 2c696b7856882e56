"""Submit-time checks of client data, delegated to core.raster, so jobs do not fail late."""
from __future__ import annotations

import importlib
from pathlib import Path

from core.errors import UnreadableRasterError


def check_job_inputs(spec) -> dict | None:
    """Run core.raster.validate on a parsed JobSpec: typed errors (-> 422) or a report.

    None while the validation module is not installed in this build.
    """
    try:
        mod = importlib.import_module("core.raster.validate")
    except ModuleNotFoundError:
        return None
    return mod.validate_job_inputs(spec)


def describe_dataset(paths: dict) -> dict:
    """Open the image (stack) and labels of a dataset; report what a job spec will need."""
    from core.raster.scene import Scene

    files = [Path(paths["image"])] if paths.get("image") else [Path(p) for p in paths.get("bands") or []]
    for p in files + ([Path(paths["labels"])] if paths.get("labels") else []):
        if not p.is_file():
            raise UnreadableRasterError(f"file not found: {p.name}", field=_field_of(paths, p))
    with Scene.open(files) as scene:
        g = scene.grid
        report = {
            "bands": scene.count,
            "width": g.width,
            "height": g.height,
            "crs": g.crs.to_string() if g.crs else None,
            "res": list(g.res),
            "bounds": list(g.bounds),
            "georeferenced": g.crs is not None,
        }
    if paths.get("labels"):
        report["labels"] = _describe_labels(Path(paths["labels"]))
    return report


def _describe_labels(path: Path) -> dict:
    if path.suffix.lower() in (".geojson", ".json", ".gpkg", ".shp"):
        from core.raster.vector import read_vector

        layer = read_vector(path)
        return {"kind": "vector", "features": len(getattr(layer, "features", []) or [])}
    from core.raster.scene import open_raster

    with open_raster(path, what="labels") as ds:
        return {"kind": "raster", "width": ds.width, "height": ds.height,
                "crs": ds.crs.to_string() if ds.crs else None}


def _field_of(paths: dict, p: Path) -> str:
    if paths.get("image") and Path(paths["image"]) == p:
        return "image"
    if paths.get("labels") and Path(paths["labels"]) == p:
        return "labels"
    for i, b in enumerate(paths.get("bands") or []):
        if Path(b) == p:
            return f"bands.{i}"
    return ""
