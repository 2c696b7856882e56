"""OGC API - Processes (Part 1: Core) under /ogcapi: landing page, conformance, processes, execution, jobs
and their results, for clients that speak the standard (OWSLib, QGIS plugins, workflow engines).

The same store, tokens and isolation as /v1, which stays: an execution is a job submission through
service.api.job_submission, and a job is one record whichever door it came in by. The catalogue is
service.ogc_processes'. Errors leave as OGC exceptions (RFC 7807: type, title, status, detail) through
OgcRoute, with the standard's exception types where it names one.

    POST /ogcapi/processes/{id}/execution   inputs + the type and method the id names
      -> job_submission.submit -> 201, Location: /ogcapi/jobs/{job id}, statusInfo
    GET  /ogcapi/jobs/{job id}              statusInfo (accepted|running|successful|failed|dismissed, progress)
    GET  /ogcapi/jobs/{job id}/results      bundle, metrics, report, class and probability COG links

Execution is asynchronous only: `Prefer: respond-async`, or no preference (the standard's default mode for
an async-only process), makes a job; a request that prefers a synchronous answer is refused.
"""
from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from core.errors import GeoadaptError, SpecError
from service import ogc_processes
from service import results as job_results
from service.api import errors, job_submission, links
from service.api.deps import (
    BaseUrl,
    CurrentToken,
    RateLimited,
    SessionDep,
    SettingsDep,
)
from service.api.routes.health import _version
from service.api.schemas import JobStatus
from service.api.server_paths import hide
from service.errors import NotFoundError
from service.store import jobs as store
from service.store.tables import ACCEPTED, DISMISSED, FAILED, RUNNING, Job

_EXCEPTIONS = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0/"
NO_SUCH_PROCESS = _EXCEPTIONS + "no-such-process"
NO_SUCH_JOB = _EXCEPTIONS + "no-such-job"
RESULT_NOT_READY = _EXCEPTIONS + "result-not-ready"
RESULT_NOT_AVAILABLE = _EXCEPTIONS + "result-not-available"
INVALID_QUERY = _EXCEPTIONS + "invalid-query-parameter-value"
#: ours: the standard names no type for it
SYNC_NOT_SUPPORTED = "sync_execution_not_supported"

_REL = "http://www.opengis.net/def/rel/ogc/1.0/"
CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/ogc-process-description",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/json",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/job-list",
]
_JSON = "application/json"
_REPORT_TYPES = {".json": _JSON, ".html": "text/html", ".md": "text/markdown"}


class OgcException(Exception):
    """An answer in the standard's words: its exception type, an HTTP status, what is wrong."""

    def __init__(self, status: int, type_: str, detail: str):
        super().__init__(detail)
        self.status, self.type, self.detail = status, type_, detail


def _exception(request: Request, status: int, type_: str, detail: str, headers: dict | None = None,
               **extra) -> JSONResponse:
    body = {"type": type_, "title": HTTPStatus(status).phrase, "status": status, "detail": detail,
            "instance": request.url.path, **extra}
    return JSONResponse(body, status_code=status, headers=headers)


def _ogc_status(status: int) -> int:
    # the standard answers a request it cannot run with 400 where /v1 says 422
    return 400 if status == 422 else status


class OgcRoute(APIRoute):
    """A route whose errors, its dependencies' included (no token, bad query), leave as OGC exceptions;
    the status of a domain error is still the one table's (service.api.errors)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def answer_in_ogc_terms(request: Request) -> Response:
            try:
                return await handler(request)
            except OgcException as e:
                return _exception(request, e.status, e.type, e.detail)
            except GeoadaptError as e:
                extra = {"problems": e.problems} if isinstance(e, SpecError) else {}
                return _exception(request, _ogc_status(errors.status_for(e)), e.code, str(e),
                                  errors.error_headers(request, e), **extra)
            except RequestValidationError as e:
                problems = [{"field": ".".join(str(p) for p in err.get("loc", ())[1:]), "message": err.get("msg", "")}
                            for err in e.errors()]
                in_query = any(err.get("loc", ("",))[0] == "query" for err in e.errors())
                return _exception(request, 400, INVALID_QUERY if in_query else "invalid_request",
                                  "; ".join(f"{p['field']}: {p['message']}" for p in problems), problems=problems)

        return answer_in_ogc_terms


router = APIRouter(prefix="/ogcapi", tags=["OGC API - Processes"], route_class=OgcRoute)

_EXCEPTION_DOC = {"description": "an OGC exception", "content": {_JSON: {"schema": {
    "type": "object", "required": ["type"],
    "properties": {k: {"type": "integer" if k == "status" else "string"}
                   for k in ("type", "title", "status", "detail", "instance")}}}}}
_EXECUTE_BODY = {"required": True, "content": {_JSON: {"schema": {
    "type": "object",
    "properties": {
        "inputs": {"type": "object", "description": "the job spec's fields less type and method (an `output` is "
                                                    "ignored, as in /v1: jobs write to their own folder)"},
        "outputs": {"type": "object", "description": "ignored: a job's results hold every output it made"},
        "response": {"type": "string", "enum": ["document", "raw"]},
    },
}}}}


def _link(href: str, rel: str, title: str | None = None, type_: str = _JSON) -> dict[str, str]:
    return {"href": href, "rel": rel, "type": type_, **({"title": title} if title else {})}


# ---- the service and its processes ---------------------------------------------------------------------

@router.get("", summary="OGC API landing page")
@router.get("/", include_in_schema=False)
def landing_page(base: BaseUrl) -> dict:
    root = links.ogc(base)
    return {
        "title": "geoadapt: OGC API - Processes",
        "description": "Domain adaptation, training, prediction and evaluation of segmentation models for "
                       "remote-sensing imagery, as asynchronous processes. Jobs need a bearer token.",
        "links": [
            _link(root, "self", "this document"),
            _link(f"{base}/openapi.json", "service-desc", "the API definition",
                  "application/vnd.oai.openapi+json;version=3.0"),
            _link(f"{base}/docs", "service-doc", "the API documentation", "text/html"),
            _link(f"{root}/conformance", _REL + "conformance", "conformance classes"),
            _link(f"{root}/processes", _REL + "processes", "the processes"),
            _link(f"{root}/jobs", _REL + "job-list", "your jobs"),
        ],
    }


@router.get("/conformance")
def conformance() -> dict:
    return {"conformsTo": CONFORMANCE}


def _kind(process_id: str) -> tuple[str, str | None]:
    kind = ogc_processes.job_kind(process_id)
    if kind is None:
        raise OgcException(404, NO_SUCH_PROCESS, f"no process {process_id!r}; the processes are "
                                                 f"{', '.join(ogc_processes.process_ids())}")
    return kind


def _process_links(base: str, pid: str) -> list[dict]:
    href = links.ogc_process(base, pid)
    return [_link(href, "self", "process description"), _link(f"{href}/execution", _REL + "execute", "execute")]


@router.get("/processes")
def list_processes(base: BaseUrl) -> dict:
    """One process per job type and method (core.jobspec.METHODS_OF_TYPE)."""
    version = _version()
    return {"processes": [{**ogc_processes.summary(pid, version), "links": _process_links(base, pid)}
                          for pid in ogc_processes.process_ids()],
            "links": [_link(f"{links.ogc(base)}/processes", "self")]}


@router.get("/processes/{process_id}", responses={404: _EXCEPTION_DOC})
def describe_process(process_id: str, base: BaseUrl) -> dict:
    """Inputs (the job spec's fields, with their schemas) and outputs of one process."""
    _kind(process_id)
    return {**ogc_processes.description(process_id, _version()), "links": _process_links(base, process_id)}


# ---- execution -----------------------------------------------------------------------------------------

def _preferences(prefer: str | None) -> set[str]:
    """The names of the preferences a Prefer header (RFC 7240) states: `respond-async`, `wait`, ..."""
    return {item.split(";")[0].split("=")[0].strip().lower() for item in (prefer or "").split(",")} - {""}


#: preferences that ask for a synchronous answer: `respond-sync` (OWSLib's word), `wait` without respond-async
_SYNC = {"respond-sync", "wait"}


def _qualified(value: Any) -> Any:
    """An input given as a qualified value ({"value": ..., "mediaType": ...}) is its value."""
    if isinstance(value, dict) and "value" in value and set(value) <= {"value", "mediaType", "encoding", "schema"}:
        return value["value"]
    return value


def _spec_of(body: dict[str, Any], pid: str, job_type: str, method: str | None) -> dict[str, Any]:
    """The job spec an execute request stands for: its inputs, and the type and method the process id names
    (an `output` among the inputs goes the way of /v1's: the submission replaces it with the job's folder)."""
    unknown = sorted(set(body) - {"inputs", "outputs", "response"})
    if unknown:
        raise SpecError(f"not a member of an execute request here: {', '.join(unknown)} (callbacks are not "
                        "supported: poll the job)", field=unknown[0])
    inputs = body.get("inputs") or {}
    if not isinstance(inputs, dict):
        raise SpecError("inputs must be an object: input id -> value", field="inputs")
    for name in ("type", "method"):
        if name in inputs:
            raise SpecError(f"not an input of process {pid}: its id names the job's type and method",
                            field=f"inputs.{name}")
    spec = {name: _qualified(value) for name, value in inputs.items()}
    spec["type"] = job_type
    if method is not None:
        spec["method"] = method
    return spec


@router.post(
    "/processes/{process_id}/execution",
    status_code=201,
    dependencies=[RateLimited],
    responses={200: {"description": "the job an earlier request with this Idempotency-Key created"},
               400: _EXCEPTION_DOC, 401: _EXCEPTION_DOC, 404: _EXCEPTION_DOC, 409: _EXCEPTION_DOC,
               503: _EXCEPTION_DOC, 507: _EXCEPTION_DOC},
    openapi_extra={"requestBody": _EXECUTE_BODY},
)
def execute(
    process_id: str,
    body: Annotated[dict[str, Any], Body()],
    response: Response,
    submit: job_submission.SubmitterDep,
    settings: SettingsDep,
    base: BaseUrl,
    prefer: Annotated[str | None, Header(alias="Prefer", max_length=1000)] = None,
) -> dict:
    """Submit a job of the process's type and method; 201 with Location and the job's statusInfo."""
    job_type, method = _kind(process_id)
    preferences = _preferences(prefer)
    if "respond-async" not in preferences and preferences & _SYNC:
        raise OgcException(400, SYNC_NOT_SUPPORTED, f"process {process_id} runs asynchronously only (jobs take "
                           "minutes to hours): send 'Prefer: respond-async', then poll the job's Location")
    job, created = submit(_spec_of(body, process_id, job_type, method))
    if not created:
        response.status_code = 200
    response.headers["Location"] = links.ogc_job(base, job.id)
    if "respond-async" in preferences:
        response.headers["Preference-Applied"] = "respond-async"
    return _status_info(job, base, settings.data_dir)


# ---- jobs ----------------------------------------------------------------------------------------------

def _iso(t) -> str | None:
    return t.isoformat() if t is not None else None


def _status_info(job: Job, base: str, data_dir) -> dict:
    """The standard's statusInfo of a job (whichever door it came in by)."""
    if job.status == FAILED and job.error_type:
        message = f"{job.error_type}: {job.error_message or ''}"
    else:
        message = job.message
    info = {
        "jobID": str(job.id), "type": "process", "processID": ogc_processes.process_id(job.type, job.method),
        "status": job.status, "message": hide(message, data_dir) if message else None,
        "created": _iso(job.created_at), "started": _iso(job.started_at), "finished": _iso(job.finished_at),
        "updated": _iso(job.updated_at), "progress": int(round(job.progress or 0)),
    }
    info = {k: v for k, v in info.items() if v is not None}
    href = links.ogc_job(base, job.id)
    info["links"] = [_link(href, "self", "job status"),
                     _link(links.job(base, job.id), "alternate", "the job in the /v1 API (stage, ETA, spec)")]
    if job.status == "successful":
        info["links"].append(_link(f"{href}/results", _REL + "results", "results"))
    return info


def _job(session, job_id: str, token) -> Job:
    try:
        return store.get_job(session, job_id, token)
    except NotFoundError:  # another token's job is no job either (never confirm it exists)
        raise OgcException(404, NO_SUCH_JOB, f"no job {job_id}") from None


def _page(base: str, offset: int, limit: int, status: str | None) -> str:
    return f"{links.ogc(base)}/jobs?limit={limit}&offset={offset}" + (f"&status={status}" if status else "")


@router.get("/jobs", responses={400: _EXCEPTION_DOC, 401: _EXCEPTION_DOC})
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    token: CurrentToken,
    base: BaseUrl,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> dict:
    """The caller's jobs (an admin token sees all), newest first, whichever API submitted them."""
    limit = min(limit, settings.max_page_size)
    rows, total = store.list_jobs(session, token, status=status, limit=limit, offset=offset)
    page = [_link(_page(base, offset, limit, status), "self")]
    if offset + limit < total:
        page.append(_link(_page(base, offset + limit, limit, status), "next"))
    if offset > 0:
        page.append(_link(_page(base, max(0, offset - limit), limit, status), "prev"))
    return {"jobs": [_status_info(j, base, settings.data_dir) for j in rows], "numberMatched": total, "links": page}


@router.get("/jobs/{job_id}", responses={401: _EXCEPTION_DOC, 404: _EXCEPTION_DOC})
def get_job(job_id: str, session: SessionDep, settings: SettingsDep, token: CurrentToken, base: BaseUrl) -> dict:
    return _status_info(_job(session, job_id, token), base, settings.data_dir)


def _failure(job: Job, data_dir) -> OgcException:
    """A failed job's results: its error, with the status its kind of error has (a bad input 400, else 500)."""
    domain = {cls.code: cls for cls in _subclasses(GeoadaptError)}.get(job.error_type or "")
    status = _ogc_status(errors.status_for(domain)) if domain is not None else 500
    return OgcException(status, job.error_type or "job_failed",
                        hide(job.error_message or "the job failed", data_dir))


def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


@router.get("/jobs/{job_id}/results", responses={401: _EXCEPTION_DOC, 404: _EXCEPTION_DOC})
def get_results(job_id: str, session: SessionDep, settings: SettingsDep, token: CurrentToken,
                   base: BaseUrl) -> dict:
    """The outputs the job made: bundle (its model page), metrics, report, class and probability COGs."""
    job = _job(session, job_id, token)
    if job.status in (ACCEPTED, RUNNING):
        raise OgcException(404, RESULT_NOT_READY, f"job {job.id} is {job.status}: results exist once it is successful")
    if job.status == DISMISSED:
        raise OgcException(404, RESULT_NOT_AVAILABLE, f"job {job.id} was dismissed: it made no results")
    if job.status == FAILED:
        raise _failure(job, settings.data_dir)
    desc = hide(job_results.describe(settings.job_dir(job.id)), settings.data_dir)
    out: dict[str, Any] = {}
    if desc["bundle"]:
        out["bundle"] = _link(links.model(base, job.id), "enclosure", "model bundle")
    if desc["pretrained"]:
        out["pretrained"] = _link(links.job_file(base, job.id, desc["pretrained"]["path"]), "enclosure",
                                  "pretrained weights", "application/octet-stream")
    if desc["metrics"] is not None:
        out["metrics"] = desc["metrics"]
    if desc["report"]:
        path = desc["report"]["path"]
        out["report"] = _link(links.job_file(base, job.id, path), "enclosure", "report",
                              _REPORT_TYPES.get(path[path.rfind("."):], "application/octet-stream"))
    for kind in ("classes", "probabilities"):
        maps = [_link(links.job_file(base, job.id, p["path"]), "enclosure", p["name"], ogc_processes.COG_MEDIA_TYPE)
                for p in desc["predictions"] if p["kind"] == kind]
        if maps:
            out[kind] = maps
    if not out:
        raise OgcException(404, RESULT_NOT_AVAILABLE, f"job {job.id} left no results")
    return out
