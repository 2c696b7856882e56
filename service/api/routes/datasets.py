"""Datasets: register imagery by path (under an allowed root), by a STAC Item's assets or by upload; checked on
arrival.

A registered dataset's paths are what job specs then name; uploads live in the dataset's own
folder `<data_dir>/datasets/<id>/`, which only its owner's specs may reference.
"""
from __future__ import annotations

import logging
import re
import shutil
import uuid
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile

from core.errors import GeoadaptError, SpecError
from core.stac_items import band_files, check_common_names
from service.api import links
from service.api.server_paths import hide
from service.api.deps import BaseUrl, CurrentToken, PathPolicyDep, Producer, RateLimited, SessionDep, SettingsDep
from service.api.schemas import DatasetCreate, DatasetList, DatasetPublic, ErrorPublic, Link
from service.errors import PayloadTooLargeError
from service import usage
from service.inputs import describe_dataset
from core.task_names import CPU_QUEUE, DATASET_STATS
from service.queue import enqueue
from service.store import datasets as store
from core.files import atomic_writer
from service.store.tables import STATS_FAILED, STATS_PENDING, Dataset

log = logging.getLogger("geoadapt.api")
router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
_ERRORS = {401: {"model": ErrorPublic}, 404: {"model": ErrorPublic}}
_CHUNK = 1024 * 1024


def _queue_stats(session, producer, ds: Dataset) -> None:
    """Band statistics are a streaming pass over the data: a job for the cpu queue."""
    try:
        enqueue(producer, ds.id, CPU_QUEUE, task=DATASET_STATS)
        ds.stats = {"status": STATS_PENDING}
    except Exception as e:  # the dataset is registered all the same; only its statistics wait
        log.warning("could not queue statistics of dataset %s: %s", ds.id, type(e).__name__)
        ds.stats = {"status": STATS_FAILED, "error": {"type": "service_unavailable", "message": "queue unreachable"}}
    session.commit()


def to_public(ds: Dataset, base: str, data_dir) -> DatasetPublic:
    """The dataset as clients see it: an upload's files as datasets/<id>/<name>, which specs may name."""
    out = DatasetPublic.model_validate(ds)
    out.paths = hide(ds.paths, data_dir)
    if out.stats:  # which process computes them (host and pid) is the workers' business
        out.stats = {k: v for k, v in out.stats.items() if k != "worker"}
    out.links = [Link(href=links.dataset(base, ds.id), rel="self", type="application/json")]
    return out


def _confine(paths: dict, policy) -> dict:
    """Each client path through the path policy; problems named by field, all at once."""
    out, problems = {}, []
    for key, value in paths.items():
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        resolved = []
        for i, v in enumerate(items):
            field = f"{key}.{i}" if isinstance(value, list) else key
            try:
                resolved.append(str(policy(v)))
            except ValueError as e:
                problems.append({"field": field, "message": str(e)})
        out[key] = resolved if isinstance(value, list) else (resolved[0] if resolved else None)
    if problems:
        raise SpecError("; ".join(f"{p['field']}: {p['message']}" for p in problems), field=problems[0]["field"],
                        problems=problems)
    return out


def _stac_bands(body: DatasetCreate, policy) -> dict:
    """The STAC Item and the files of its assets that `bands` names by common name, each file confined like
    any client path; errors name the body's field (stac, bands.<i>)."""
    if body.image is not None:
        raise SpecError("give either 'stac' (with band common names in 'bands') or 'image', not both", field="image")
    try:
        names = check_common_names(body.bands)
    except ValueError as e:
        raise SpecError(str(e), field="bands") from None
    item = _confine({"stac": body.stac}, policy)["stac"]
    files = band_files(item, names, confine=policy)  # StacItemError: a 422 naming stac or bands.<i>
    return {"stac": item, "bands": [str(f) for f in files]}


@router.post("", status_code=201, response_model=DatasetPublic, dependencies=[RateLimited],
             responses={422: {"model": ErrorPublic}, **_ERRORS})
def register_dataset(body: DatasetCreate, response: Response, session: SessionDep, settings: SettingsDep,
                     token: CurrentToken, policy: PathPolicyDep, producer: Producer, base: BaseUrl) -> DatasetPublic:
    """Register files already on the server; 422 naming the field if a path or a file is bad."""
    if body.stac is not None:
        paths = {**_stac_bands(body, policy), **_confine({"labels": body.labels}, policy)}
    elif (body.image is None) == (body.bands is None):
        raise SpecError("give exactly one of 'image', 'bands' or 'stac' (with 'bands' naming common names)",
                        field="image")
    else:
        paths = _confine({"image": body.image, "bands": body.bands, "labels": body.labels}, policy)
    report = describe_dataset(paths)
    ds = store.create_dataset(session, dataset_id=uuid.uuid4(), owner_id=token.id, name=body.name, kind="path",
                              paths={k: v for k, v in paths.items() if v is not None}, report=report)
    _queue_stats(session, producer, ds)
    response.headers["Location"] = links.dataset(base, ds.id)
    return to_public(ds, base, settings.data_dir)


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_name(name: str | None, default: str) -> str:
    base = _SAFE.sub("_", (name or "").replace("\\", "/").rsplit("/", 1)[-1]).strip("._")
    return base[:100] or default


def _save(upload: UploadFile, dest, budget: list[int]) -> None:
    """Stream an upload to disk, counting bytes against the request's upload budget."""
    with atomic_writer(dest) as fh:
        while chunk := upload.file.read(_CHUNK):
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise PayloadTooLargeError("upload larger than the limit", field=dest.stem)
            fh.write(chunk)


@router.post("/upload", status_code=201, response_model=DatasetPublic, dependencies=[RateLimited],
             responses={413: {"model": ErrorPublic}, 422: {"model": ErrorPublic}, **_ERRORS})
def upload_dataset(
    name: Annotated[str, Form(min_length=1, max_length=128)],
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    token: CurrentToken,
    producer: Producer,
    base: BaseUrl,
    image: Annotated[UploadFile | None, File(description="one multi-band GeoTIFF")] = None,
    bands: Annotated[list[UploadFile] | None, File(description="single-band files, in order")] = None,
    labels: Annotated[UploadFile | None, File(description="label raster or vector file")] = None,
) -> DatasetPublic:
    """Upload imagery (multipart); stored in the dataset's folder, checked, then registered."""
    if (image is None) == (not bands):
        raise SpecError("upload exactly one of 'image' or 'bands'", field="image")
    files = [f for f in (image, *(bands or []), labels) if f is not None]
    usage.check_upload(session, settings, token.id, sum(f.size or 0 for f in files),
                       field="image" if image is not None else "bands")
    ds_id = uuid.uuid4()
    folder = settings.dataset_dir(ds_id)
    budget = [settings.max_upload_bytes]
    paths: dict = {}
    used: set[str] = set()

    def dest(upload: UploadFile, default: str):
        n = _safe_name(upload.filename, default)
        while n in used:
            n = "_" + n
        used.add(n)
        return folder / n

    try:
        if image is not None:
            p = dest(image, "image.tif")
            _save(image, p, budget)
            paths["image"] = str(p)
        else:
            paths["bands"] = []
            for i, b in enumerate(bands or []):
                p = dest(b, f"band{i + 1}.tif")
                _save(b, p, budget)
                paths["bands"].append(str(p))
        if labels is not None:
            p = dest(labels, "labels.tif")
            _save(labels, p, budget)
            paths["labels"] = str(p)
        report = describe_dataset(paths)
        ds = store.create_dataset(session, dataset_id=ds_id, owner_id=token.id, name=name, kind="upload",
                                  paths=paths, report=report)
    except (GeoadaptError, OSError, ValueError):
        shutil.rmtree(folder, ignore_errors=True)  # nothing half-registered stays behind
        raise
    _queue_stats(session, producer, ds)
    response.headers["Location"] = links.dataset(base, ds.id)
    return to_public(ds, base, settings.data_dir)


@router.get("", response_model=DatasetList, responses=_ERRORS)
def list_datasets(session: SessionDep, settings: SettingsDep, token: CurrentToken, base: BaseUrl,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                  offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> DatasetList:
    limit = min(limit, settings.max_page_size)
    rows, total = store.list_datasets(session, token, limit=limit, offset=offset)
    return DatasetList(datasets=[to_public(d, base, settings.data_dir) for d in rows], total=total, limit=limit,
                       offset=offset)


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=_ERRORS)
def get_dataset(dataset_id: uuid.UUID, session: SessionDep, settings: SettingsDep, token: CurrentToken,
                base: BaseUrl) -> DatasetPublic:
    return to_public(store.get_dataset(session, dataset_id, token), base, settings.data_dir)


@router.delete("/{dataset_id}", status_code=204, responses=_ERRORS)
def delete_dataset(dataset_id: uuid.UUID, session: SessionDep, settings: SettingsDep, token: CurrentToken) -> None:
    """Forget a dataset; an uploaded one's files are removed too (files named by path are not)."""
    ds = store.get_dataset(session, dataset_id, token)
    kind, ident = ds.kind, ds.id
    store.delete_dataset(session, ds)
    if kind == "upload":
        shutil.rmtree(settings.dataset_dir(ident), ignore_errors=True)
