"""A token's job results as a static STAC catalog (STAC 1.0.0), built from the job store and the job folders.

    /v1/stac                    Catalog     one child per job type the caller has successful jobs of
    /v1/stac/{type}             Collection  one item link per predicted scene of those jobs; extent over them
    /v1/stac/{type}/{item id}   Item        one predicted scene: its class COG, its probabilities COG, the
                                            model bundle's files as assets; its tilejson as a link

Items carry the projection, raster, classification and file extensions; every href is an API URL that the
caller's token opens (downloads through GET /v1/jobs/{id}/files/...). Nothing is stored: each answer is
made from what the jobs left on disk, and the COG headers it reads are cached by file identity.
"""
from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path

from core.bundle_manifest import MANIFEST, bundle_dir_of
from core.job_layout import BUNDLE, output_dir, prediction_kind, probability_path_for
from core.lru import LRU
from core.raster.cog import PROB_NODATA, PROB_SCALE, ClassStyle, read_class_tags
from service import results as job_results
from service.api import links
from service.result_ids import result_id

log = logging.getLogger("geoadapt.api")

STAC_VERSION = "1.0.0"
#: the extension schemas items name (tests/service/stac_schemas holds these versions)
PROJECTION = "https://stac-extensions.github.io/projection/v1.1.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
CLASSIFICATION = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
FILE = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
ITEM_EXTENSIONS = [PROJECTION, RASTER, CLASSIFICATION, FILE]

CATALOG_ID = "geoadapt"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
JSON, GEOJSON = "application/json", "application/geo+json"
WORLD = [-180.0, -90.0, 180.0, 90.0]


# ---- what a COG's header says -------------------------------------------------------------------------

@dataclass(frozen=True)
class CogInfo:
    """The header facts an item reports of one COG."""

    epsg: int | None
    wkt2: str | None
    shape: tuple[int, int]
    transform: list[float]
    bounds: list[float]  # in the COG's CRS
    bbox: list[float] | None  # WGS84; None without a CRS
    res: float
    dtype: str
    count: int
    nodata: float | None
    classes: list[ClassStyle]
    size: int


def _read_cog(path: Path, size: int) -> CogInfo:
    import rasterio
    from rasterio.warp import transform_bounds

    with rasterio.open(path) as ds:
        crs = ds.crs
        bbox = list(transform_bounds(crs, "EPSG:4326", *ds.bounds, densify_pts=21)) if crs else None
        return CogInfo(
            epsg=crs.to_epsg() if crs else None, wkt2=crs.to_wkt() if crs else None,
            shape=(ds.height, ds.width), transform=list(ds.transform)[:6], bounds=list(ds.bounds), bbox=bbox,
            res=float(ds.res[0]), dtype=ds.dtypes[0], count=ds.count, nodata=ds.nodata,
            classes=read_class_tags(ds.tags()), size=size,
        )


#: COG headers by file identity (a rewritten file is read again)
_cogs = LRU(512)


def cog_info(path: Path) -> CogInfo:
    st = os.stat(path)
    return _cogs.get(f"{path}|{st.st_mtime_ns}|{st.st_size}|{st.st_ino}", lambda: _read_cog(path, st.st_size))


# ---- a job's predicted scenes and its model -------------------------------------------------------------

@dataclass(frozen=True)
class Scene:
    """One predicted scene of a job: its name among the job's results, its class COG and probabilities twin."""

    name: str
    classes: Path
    probabilities: Path | None


def predicted_scenes(job_dir: Path) -> list[Scene]:
    preds = job_results.prediction_files(job_dir)
    scenes = []
    for name, p in preds.items():
        if prediction_kind(p) != "classes":  # probabilities are a scene's twin; a disagreement map no scene
            continue
        twin = probability_path_for(p)
        scenes.append(Scene(name, p, twin if twin.is_file() else None))
    return scenes


def _bundle_of(job, settings) -> tuple[uuid.UUID, Path, Path] | None:
    """(the job whose files hold it, that job's output folder, the bundle folder) of the model a job made or
    ran; None when no API URL serves it (a bundle outside the service's job folders, or a zip)."""
    own = output_dir(settings.job_dir(job.id))
    if (own / BUNDLE / MANIFEST).is_file():
        return job.id, own, own / BUNDLE
    named = (job.spec or {}).get("bundle")
    folder = bundle_dir_of(named) if named else None
    jobs_dir = settings.job_dir(job.id).parent.resolve()
    if folder is None or not folder.resolve().is_relative_to(jobs_dir):
        return None
    try:
        model_job = uuid.UUID(folder.resolve().relative_to(jobs_dir).parts[0])
    except ValueError:
        return None
    model_out = output_dir(settings.job_dir(model_job)).resolve()
    return (model_job, model_out, folder.resolve()) if folder.resolve().is_relative_to(model_out) else None


def _when(j) -> str:
    t = j.finished_at or j.created_at
    t = t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)  # SQLite gives them back naive
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- STAC objects ---------------------------------------------------------------------------------------

def _link(rel: str, href: str, media: str = JSON, title: str | None = None) -> dict:
    out = {"rel": rel, "href": href, "type": media}
    return {**out, "title": title} if title else out


def _classes(styles: list[ClassStyle], spec_classes: list[dict]) -> list[dict]:
    """classification:classes of a class COG: what its tags record, else the job's classes."""
    styles = styles or [ClassStyle.of(c) for c in spec_classes]
    return [{"value": c.id, "name": c.name, "description": c.name, "color_hint": c.color.lstrip("#").upper()}
            for c in styles]


def item(base: str, job, settings, scene: Scene, tilejson_signed: str | None = None) -> dict:
    """The STAC Item of one predicted scene of a successful job."""
    out = output_dir(settings.job_dir(job.id))
    info = cog_info(scene.classes)
    classes = _classes(info.classes, (job.spec or {}).get("classes") or [])

    def download(p: Path, job_id=job.id, folder: Path = out) -> str:
        return links.job_file(base, job_id, p.relative_to(folder).as_posix())

    assets = {"classes": {
        "href": download(scene.classes), "type": COG, "title": "class map", "roles": ["data"],
        "classification:classes": classes, "file:size": info.size,
        "raster:bands": [{"data_type": info.dtype, "nodata": info.nodata, "spatial_resolution": info.res}],
    }}
    if scene.probabilities is not None:
        probs = cog_info(scene.probabilities)
        assets["probabilities"] = {
            "href": download(scene.probabilities), "type": COG, "roles": ["data"], "file:size": probs.size,
            "title": f"class probabilities (p x {PROB_SCALE}), one band per class in the order of the classes",
            "raster:bands": [{"data_type": probs.dtype, "nodata": PROB_NODATA, "scale": 1 / PROB_SCALE,
                              "offset": 0, "spatial_resolution": probs.res} for _ in range(probs.count)],
        }
    model = _bundle_of(job, settings)
    if model is not None:
        model_job, model_out, folder = model
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        for p in files:
            assets["bundle" if p.name == MANIFEST else f"bundle-{p.stem}"] = {
                "href": download(p, model_job, model_out),
                "type": JSON if p.suffix == ".json" else "application/octet-stream",
                "title": f"model bundle: {p.name}", "roles": ["metadata"] if p.name == MANIFEST else ["model"],
                "file:size": p.stat().st_size,
            }
    props = {
        "datetime": _when(job), "created": _when(job), "title": f"{scene.name} ({job.type} job {job.id})",
        "proj:epsg": info.epsg, "proj:shape": list(info.shape), "proj:transform": info.transform,
        "proj:bbox": info.bounds,
    }
    if info.epsg is None and info.wkt2:
        props["proj:wkt2"] = info.wkt2
    tilejson = links.result_links(base, job.id, scene.classes.relative_to(out).as_posix(), scene.name)["tilejson"]
    item_links = [
        _link("self", links.stac_item(base, job.type, job.id, scene.name), GEOJSON),
        _link("root", links.stac_catalog(base)),
        _link("parent", links.stac_collection(base, job.type)),
        _link("collection", links.stac_collection(base, job.type)),
        _link("tilejson", tilejson, title="map tiles of the class map (TileJSON; the token's header opens it)"),
        _link("via", f"{links.job(base, job.id)}/results", title="the job's results"),
    ]
    if tilejson_signed:
        item_links.append(_link("tilejson", f"{tilejson}?{tilejson_signed}",
                                title="map tiles of the class map (TileJSON; opens without a header until it expires)"))
    footprint = {}
    if info.bbox is not None:
        w, s, e, n = info.bbox
        footprint = {"bbox": info.bbox,
                     "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}}
    return {
        "type": "Feature", "stac_version": STAC_VERSION, "stac_extensions": ITEM_EXTENSIONS,
        "id": result_id(job.id, scene.name), "collection": job.type,
        "geometry": footprint.get("geometry"), **({"bbox": footprint["bbox"]} if footprint else {}),
        "properties": props, "assets": assets, "links": item_links,
    }


def items_of(base: str, jobs, settings) -> list[dict]:
    """The items of every predicted scene of ``jobs``; a COG that cannot be read is left out (and logged), so
    one damaged file does not hide the rest."""
    from rasterio.errors import RasterioError

    out = []
    for job in jobs:
        for scene in predicted_scenes(settings.job_dir(job.id)):
            try:
                out.append(item(base, job, settings, scene))
            except (RasterioError, OSError) as e:
                log.warning("STAC item of %s in job %s left out: %s", scene.name, job.id, type(e).__name__)
    return out


def collection(base: str, job_type: str, items: list[dict]) -> dict:
    """The collection of one job type: links to its items, the extent they cover."""
    boxes = [i["bbox"] for i in items if i.get("bbox")]
    bbox = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
            max(b[3] for b in boxes)] if boxes else WORLD
    times = sorted(i["properties"]["datetime"] for i in items)
    return {
        "type": "Collection", "stac_version": STAC_VERSION, "stac_extensions": [], "id": job_type,
        "title": f"{job_type} jobs", "license": "proprietary",
        "description": f"Predicted scenes of the caller's successful {job_type} jobs: class maps, probabilities and "
                       "the model that made them.",
        "extent": {"spatial": {"bbox": [bbox]},
                   "temporal": {"interval": [[times[0], times[-1]] if times else [None, None]]}},
        "links": [
            _link("self", links.stac_collection(base, job_type)),
            _link("root", links.stac_catalog(base)),
            _link("parent", links.stac_catalog(base)),
            *(_link("item", next(lk["href"] for lk in i["links"] if lk["rel"] == "self"), GEOJSON) for i in items),
        ],
    }


def catalog(base: str, job_types: list[str]) -> dict:
    return {
        "type": "Catalog", "stac_version": STAC_VERSION, "stac_extensions": [], "id": CATALOG_ID,
        "title": "geoadapt results",
        "description": "The caller's job results: one collection per job type, one item per predicted scene.",
        "links": [
            _link("self", links.stac_catalog(base)),
            _link("root", links.stac_catalog(base)),
            *(_link("child", links.stac_collection(base, t), title=f"{t} jobs") for t in job_types),
        ],
    }
