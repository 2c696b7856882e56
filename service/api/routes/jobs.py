"""Jobs: submit (idempotent), status, list, cancel or delete, results, result files.

Submission is service.api.job_submission's (shared with the OGC API - Processes execution); a job
writes in its own folder, and its results are served from there (GET .../results, .../files/...).
"""
from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import FileResponse

from core.jobspec import JobSpec
from service import job_removal
from service import results as job_results
from service.api import links
from service.api import job_submission
from service.api.server_paths import hide
from service.api.deps import (
    BaseUrl,
    CurrentToken,
    RateLimited,
    SessionDep,
    SettingsDep,
)
from service.api.schemas import (
    ErrorPublic,
    FileEntry,
    JobError,
    JobList,
    JobPublic,
    JobStatus,
    JobType,
    Link,
    PredictionEntry,
    ResultsPublic,
)
from service.errors import ConflictError, NotFoundError
from service.result_ids import result_id
from service.store import jobs as store
from service.store.tables import FINAL_STATES, Job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_ERRORS = {401: {"model": ErrorPublic}, 404: {"model": ErrorPublic}}


def _spec_body_schema() -> dict:
    """OpenAPI body = the JobSpec schema, with `output` optional (the server sets it)."""
    schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    schema["required"] = [r for r in schema.get("required", []) if r != "output"]
    schema["properties"]["output"] = {"type": "string", "description": "ignored: jobs write to their own folder"}
    return schema


def job_body_components() -> dict:
    return JobSpec.model_json_schema(ref_template="#/components/schemas/{model}").get("$defs", {})


def to_public(j: Job, base: str, data_dir, *, with_spec: bool = True) -> JobPublic:
    """The job as clients see it: paths in the state folder relative to it (spec, message, error)."""
    out = JobPublic.model_validate(j)
    out.message = hide(j.message, data_dir) if j.message else j.message
    # a model, not a dict: assignment is not validated, and a dict makes every failed job's response warn
    out.error = JobError(type=j.error_type, message=hide(j.error_message or "", data_dir)) if j.error_type else None
    out.spec = hide(j.spec, data_dir) if with_spec else None
    out.links = links.job_links(base, j)
    return out


@router.post(
    "",
    status_code=201,
    response_model=JobPublic,
    responses={200: {"model": JobPublic, "description": "the job an earlier request with this Idempotency-Key created"},
               409: {"model": ErrorPublic}, 422: {"model": ErrorPublic}, 503: {"model": ErrorPublic},
               507: {"model": ErrorPublic, "description": "the token's storage quota is used up"}, **_ERRORS},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _spec_body_schema()}}}},
    dependencies=[RateLimited],
)
def submit_job(
    body: Annotated[dict[str, Any], Body()],
    response: Response,
    submit: job_submission.SubmitterDep,
    settings: SettingsDep,
    base: BaseUrl,
) -> JobPublic:
    """Validate the spec (paths confined to allowed roots, inputs checked), store it, enqueue it."""
    job, created = submit(body)
    if not created:
        response.status_code = 200
    response.headers["Location"] = links.job(base, job.id)
    return to_public(job, base, settings.data_dir)


@router.get("", response_model=JobList, responses=_ERRORS)
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    token: CurrentToken,
    base: BaseUrl,
    status: JobStatus | None = None,
    type: JobType | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> JobList:
    """The caller's jobs (an admin token sees all), newest first."""
    limit = min(limit, settings.max_page_size)
    rows, total = store.list_jobs(session, token, status=status, type=type, limit=limit, offset=offset)
    return JobList(
        jobs=[to_public(j, base, settings.data_dir, with_spec=False) for j in rows], total=total, limit=limit,
        offset=offset,
        links=links.jobs_page(base, offset, limit, total, status=status, type=type),
    )


@router.get("/{job_id}", response_model=JobPublic, responses=_ERRORS)
def get_job(job_id: uuid.UUID, session: SessionDep, settings: SettingsDep, token: CurrentToken,
            base: BaseUrl) -> JobPublic:
    return to_public(store.get_job(session, job_id, token), base, settings.data_dir)


@router.delete(
    "/{job_id}",
    response_model=JobPublic,
    responses={200: {"model": JobPublic, "description": "a queued job dismissed, or a running one asked to stop"},
               204: {"description": "an ended job deleted, with its files and its model"},
               409: {"model": ErrorPublic}, **_ERRORS},
)
def delete_job(job_id: uuid.UUID, request: Request, session: SessionDep, settings: SettingsDep, token: CurrentToken,
               base: BaseUrl):
    """Dismiss a queued job, or ask a running one to stop (it checkpoints, then becomes dismissed): 200 with
    the job. Delete an ended job (successful, failed, dismissed) with its files, its record and its model:
    204; 409 naming the job that uses its model while one queued or running does."""
    job = store.get_job(session, job_id, token)
    if job.status not in FINAL_STATES:
        return to_public(store.request_cancel(session, job), base, settings.data_dir)
    job_removal.delete_ended_job(session, settings, job, writes=request.app.state.store_writes)
    return Response(status_code=204)


@router.get("/{job_id}/results", response_model=ResultsPublic, responses={409: {"model": ErrorPublic}, **_ERRORS})
def get_results(job_id: uuid.UUID, request: Request, session: SessionDep, settings: SettingsDep, token: CurrentToken,
                base: BaseUrl) -> ResultsPublic:
    """Bundle, metrics, report and one entry per predicted COG with download and tile links."""
    job = store.get_job(session, job_id, token)
    if job.status != "successful":
        raise ConflictError(f"job {job.id} is {job.status}: results exist once it is successful")
    desc = hide(job_results.describe(settings.job_dir(job.id)), settings.data_dir)  # metrics name the bundle
    jid = job.id
    signer = request.app.state.tile_signer
    if desc["bundle"]:
        desc["bundle"]["links"] = {"model": links.model(base, jid)}
    if desc["report"]:
        desc["report"]["links"] = {"download": links.job_file(base, jid, desc["report"]["path"])}
    if desc["pretrained"]:
        desc["pretrained"]["links"] = {"download": links.job_file(base, jid, desc["pretrained"]["path"])}
    return ResultsPublic(
        job_id=jid,
        status=job.status,
        bundle=desc["bundle"],
        pretrained=desc["pretrained"],
        metrics=desc["metrics"],
        report=desc["report"],
        predictions=[
            PredictionEntry(**p, links=links.result_links(
                base, jid, p["path"], p["name"], p["kind"],
                signed=signer.query("results", result_id(jid, p["name"]), token.id)))
            for p in desc["predictions"]
        ],
        files=[FileEntry(name=f["path"], size=f["size"], links={"download": links.job_file(base, jid, f["path"])})
               for f in desc["files"]],
        links=[Link(href=f"{links.job(base, jid)}/results", rel="self", type="application/json"),
               Link(href=links.job(base, jid), rel="up", type="application/json")],
    )


@router.get("/{job_id}/files/{path:path}", response_class=FileResponse, responses=_ERRORS)
def get_file(job_id: uuid.UUID, path: str, session: SessionDep, settings: SettingsDep, token: CurrentToken):
    """One file of the job's output (COG, bundle file, report); supports HTTP range requests."""
    job = store.get_job(session, job_id, token)
    p = job_results.safe_file(settings.job_dir(job.id), path)
    if p is None:
        raise NotFoundError(f"no file {path!r} in the results of job {job.id}", field="path")
    media = "image/tiff" if p.suffix.lower() in (".tif", ".tiff") else None
    return FileResponse(p, media_type=media, filename=p.name)
