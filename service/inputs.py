"""Submit-time checks of client data, delegated to core.raster, so jobs do not fail late.

Before GDAL opens anything a client named, the file's first bytes must be those of a
self-contained image (TIFF, PNG, JPEG, JPEG 2000) or of vector labels (GeoJSON, GeoPackage):
formats that point GDAL at other files or URLs (VRT, WMS/WMTS/STAC descriptions, ...) would let a
client read outside the allowed roots or make the server fetch URLs on its network.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from core.bundle_manifest import BundleManifest, check_same_classes
from core.errors import (
    ConfigError,
    GeoadaptError,
    NoBatchNormError,
    RasterError,
    UnreadableRasterError,
)
from core.lru import LRU
from core.overrides import apply_overrides

#: leading bytes of the raster formats a client may send or name
_RASTER_MAGIC = (
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "BigTIFF"), (b"MM\x00+", "BigTIFF"),
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
)
_VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg")
#: keys of model.overrides the pipeline reads as file paths or URLs; model.checkpoint is the confined way
_PATH_OVERRIDES = {"checkpoint", "load_from", "resume_from", "pretrained", "init_cfg"}
#: keys that make mmengine import modules: refused here already, before a worker resolves the config
#: (which refuses every key nothing reads: models/overrides.py)
_IMPORT_OVERRIDES = {"custom_imports", "_base_"}


def raster_format(path: Path) -> str | None:
    """The image format that the file's first bytes announce, or None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return None
    return next((name for magic, name in _RASTER_MAGIC if head.startswith(magic)), None)


def check_client_file(path: Path, field: str, *, labels: bool = False) -> None:
    """Refuse a file that is missing or not a self-contained image (or vector labels)."""
    if path.is_dir():
        expected = "a GeoTIFF or a vector labels file" if labels else "a GeoTIFF"
        raise UnreadableRasterError(f"{path.name} is a folder; expected {expected}", field=field)
    if not path.is_file():
        raise UnreadableRasterError(f"file not found: {path.name}", field=field)
    if raster_format(path) is not None:
        return
    if labels and path.suffix.lower() in _VECTOR_SUFFIXES:
        return  # read by core.raster.vector as JSON or SQLite, never by GDAL
    raise UnreadableRasterError(
        f"{path.name} is not a GeoTIFF/PNG/JPEG/JPEG 2000 image (formats that refer to other files or URLs, "
        "such as VRT, are not accepted)", field=field)


def check_scene_files(spec) -> None:
    """check_client_file on every image, band and labels file of a parsed JobSpec."""
    for domain in ("source", "target", "validation"):
        d = getattr(spec, domain, None)
        for i, scene in enumerate(d.scenes if d is not None else []):
            f = f"{domain}.scenes.{i}"
            if scene.image is not None:
                check_client_file(Path(scene.image), f"{f}.image")
            for j, b in enumerate(scene.bands or []):
                check_client_file(Path(b), f"{f}.bands.{j}")
            if scene.labels is not None:
                check_client_file(Path(scene.labels), f"{f}.labels", labels=True)
            if scene.label_windows is not None:
                check_client_file(Path(scene.label_windows), f"{f}.label_windows", labels=True)


def known_configs() -> list[str]:
    """Names of the shipped model configs (the leaves of the configs package), found without importing it."""
    found = importlib.util.find_spec("configs")
    folders = list(found.submodule_search_locations or []) if found else []
    return sorted({p.stem for d in folders for p in Path(d).glob("*.py") if not p.name.startswith("_")})


def check_model(spec, override_catalogue: Path | None = None) -> None:
    """model.config must name a shipped config (a config file would be Python run by the worker), and
    model.overrides may not name files or URLs (they would bypass the allowed roots), nor keys that no
    part of the model reads (judged with the catalogue the workers write; without one, when the job starts)."""
    name = spec.model.config
    known = known_configs()
    if name not in known:
        raise ConfigError(f"unknown model config {name!r}; known: {', '.join(known)}", field="model.config")

    def walk(value, where: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                last = str(k).split(".")[-1]
                if last in _PATH_OVERRIDES:
                    raise ConfigError(f"{k!r} cannot be overridden (use model.checkpoint for pretrained weights)",
                                      field=f"{where}.{k}")
                if _IMPORT_OVERRIDES & set(str(k).split(".")):
                    raise ConfigError(f"{k!r} cannot be overridden: no part of the model reads it",
                                      field=f"{where}.{k}")
                if last == "type" and isinstance(v, str) and "." in v:  # the registry would import and call it
                    raise ConfigError(f"a type is a registered module name, never a dotted path: {v!r}",
                                      field=f"{where}.{k}")
                walk(v, f"{where}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where}.{i}")
        elif isinstance(value, str) and ("/" in value or "\\" in value or value.startswith("~")):
            raise ConfigError("override values may not name files or URLs", field=where)

    walk(spec.model.overrides, "model.overrides")
    catalogue = _catalogue(override_catalogue) if override_catalogue is not None else None
    # the catalogue holds a config per method that builds a model from it: predict, evaluate, adabn and
    # label-shift jobs (whose training method is None, adabn or label-shift) find none
    config = ((catalogue or {}).get("configs") or {}).get(name, {}).get(spec.training_method)
    if config is not None:
        apply_overrides(config, spec.model.overrides, catalogue["modules"])


#: the parsed catalogue by file identity: a worker that starts rewrites it
_catalogues = LRU(2)


def _catalogue(path: Path) -> dict | None:
    try:
        st = path.stat()
    except OSError:
        return None

    def read() -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    return _catalogues.get(f"{path}|{st.st_mtime_ns}|{st.st_size}|{st.st_ino}", read)


def check_adabn_model(manifest: BundleManifest, named: str, class_ids: list[int]) -> None:
    """AdaBN re-estimates batch-norm statistics: refuse a model with none (``named``: the bundle as the
    client named it; bundles written before the manifest counted them are left to the worker's check),
    and a job whose classes are not the model's (AdaBN changes no class)."""
    if manifest.batchnorm_layers == 0:
        raise NoBatchNormError(f"{named} ({manifest.config_name})")
    check_same_classes(class_ids, manifest.class_ids)


def model_id_of(value) -> uuid.UUID | None:
    """A job spec's ``bundle`` given as a model id (the id of a train or adapt job), or None for a path."""
    if not isinstance(value, str):
        return None
    try:
        ident = uuid.UUID(value)
    except ValueError:
        return None
    return ident if str(ident) == value.lower() else None


def check_job_inputs(spec, bundle_as_given: str | None = None, override_catalogue: Path | None = None
                     ) -> dict | None:
    """Run the service's own checks, then core.raster.validate on a parsed JobSpec: typed errors
    (-> 4xx) or a report. The report is None while the validation module is not installed.
    ``bundle_as_given``: the spec's bundle as the client wrote it (a path or a model id), for messages."""
    check_model(spec, override_catalogue)
    check_scene_files(spec)
    expected = None
    if spec.bundle is not None:
        manifest = BundleManifest.read(spec.bundle)
        expected = manifest.band_count
        if spec.training_method == "adabn":
            check_adabn_model(manifest, bundle_as_given or str(spec.bundle), spec.class_ids)
        elif spec.training_method == "label-shift":
            check_same_classes(spec.class_ids, manifest.class_ids)
    try:
        mod = importlib.import_module("core.raster.validate")
    except ModuleNotFoundError:
        return None

    def validate() -> dict:
        with gdal_errors_as_data_errors():
            return mod.validate_job_inputs(spec, expected_bands=expected)

    report = _validated.get(_validation_key(spec, expected), validate)  # a failure raises, nothing is kept
    return json.loads(json.dumps(report))  # the caller's own copy


#: reports of inputs that passed validation. Validation reads every block of every scene: many jobs on the
#: same files (a batch of predict jobs, a client retrying) would otherwise pay it on every submit. Only
#: passing reports are kept, and the key holds each file's size, mtime and inode, so a changed file is
#: validated again.
_validated = LRU(512)


def _validation_key(spec, expected_bands: int | None) -> str:
    """What validation depends on: the spec (but the job's own output folder), the model's band count and
    every input file's identity (size, mtime, inode)."""
    h = hashlib.sha256()
    data = {k: v for k, v in spec.to_jsonable().items() if k != "output"}
    h.update(json.dumps([data, expected_bands], sort_keys=True, default=str).encode())
    for domain in ("source", "target", "validation"):
        d = getattr(spec, domain, None)
        if d is None:
            continue
        aoi = d.region.aoi if d.region is not None and isinstance(d.region.aoi, Path) else None
        for scene in d.scenes:
            for f in (scene.image, *(scene.bands or []), scene.labels, scene.label_windows, aoi):
                if f is None:
                    continue
                try:
                    st = os.stat(f)
                    h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}\n".encode())
                except OSError:
                    h.update(f"{f}|missing\n".encode())
    return h.hexdigest()


@contextmanager
def gdal_errors_as_data_errors(field: str | None = None) -> Iterator[None]:
    """A GDAL/PROJ error that core did not type while reading the client's files is still a problem
    with those files: a 422 naming it, not a 500."""
    try:
        yield
    except GeoadaptError:
        raise
    except Exception as e:
        if not type(e).__module__.startswith("rasterio"):
            raise
        from core.raster.scene import gdal_message

        raise RasterError(f"GDAL could not read the data: {gdal_message(e)[:200]}", field=field) from None


def describe_dataset(paths: dict) -> dict:
    """Open the image (stack) and labels of a dataset; report what a job spec will need."""
    from core.raster.scene import Scene
    from core.raster.warp import crs_name

    files = [Path(paths["image"])] if paths.get("image") else [Path(p) for p in paths.get("bands") or []]
    for p in files:
        check_client_file(p, _field_of(paths, p))
    if paths.get("labels"):
        check_client_file(Path(paths["labels"]), "labels", labels=True)
    try:
        with gdal_errors_as_data_errors(), Scene.open(files) as scene:
            g = scene.grid
            _read_last_block(scene, files)
            report = {
                "bands": scene.count,
                "width": g.width,
                "height": g.height,
                "crs": crs_name(g.crs),
                "res": list(g.res),
                "bounds": list(g.bounds),
                "georeferenced": g.crs is not None,
            }
    except GeoadaptError as e:
        e.field = e.field or ("image" if paths.get("image") else "bands")
        raise
    if paths.get("labels"):
        try:
            with gdal_errors_as_data_errors():
                report["labels"] = _describe_labels(Path(paths["labels"]))
        except GeoadaptError as e:
            e.field = e.field or "labels"
            raise
    return report


def _read_last_block(scene, files: list[Path]) -> None:
    """A truncated TIFF loses its last blocks: read the block holding the last pixel (cheap; the job's
    own check reads every block). Other formats decode sequentially, so this would cost a full read."""
    from rasterio.windows import Window

    if not all(raster_format(p) in ("TIFF", "BigTIFF") for p in files):
        return
    g = scene.grid
    scene.read(Window(g.width - 1, g.height - 1, 1, 1))


def _describe_labels(path: Path) -> dict:
    if path.suffix.lower() in (".geojson", ".json", ".gpkg", ".shp"):
        from core.raster.vector import read_vector

        layer = read_vector(path)
        return {"kind": "vector", "features": len(getattr(layer, "features", []) or [])}
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    from core.raster.scene import open_raster, read_problem
    from core.raster.warp import crs_name

    with open_raster(path, what="labels") as ds:
        if raster_format(path) in ("TIFF", "BigTIFF"):
            try:
                ds.read(1, window=Window(ds.width - 1, ds.height - 1, 1, 1))
            except RasterioError as e:
                raise UnreadableRasterError(f"cannot read pixels of labels {path.name}: {read_problem(e)}",
                                            field="labels") from None
        return {"kind": "raster", "width": ds.width, "height": ds.height,
                "crs": crs_name(ds.crs)}


def _field_of(paths: dict, p: Path) -> str:
    if paths.get("image") and Path(paths["image"]) == p:
        return "image"
    if paths.get("labels") and Path(paths["labels"]) == p:
        return "labels"
    for i, b in enumerate(paths.get("bands") or []):
        if Path(b) == p:
            return f"bands.{i}"
    return ""

