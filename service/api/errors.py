"""The one table from domain errors to HTTP status codes, and the handlers that apply it."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import (
    BundleError,
    ConfigError,
    DataFetchError,
    GeoadaptError,
    RasterError,
    SpecError,
)
from service.errors import (
    ConflictError,
    NotFoundError,
    PathNotAllowedError,
    PayloadTooLargeError,
    RateLimitedError,
    ServiceUnavailableError,
    StorageQuotaExceededError,
    UnauthorizedError,
)
from service.store.db import StoreUnavailable

log = logging.getLogger("geoadapt.api")

#: most specific class first is not needed: the lookup walks each error's MRO
STATUS: dict[type[GeoadaptError], int] = {
    SpecError: 422,
    RasterError: 422,  # every raster problem found at submit: unreadable, CRS, bands, labels, overlap
    BundleError: 422,
    ConfigError: 422,
    PathNotAllowedError: 422,
    NotFoundError: 404,
    ConflictError: 409,
    UnauthorizedError: 401,
    PayloadTooLargeError: 413,
    RateLimitedError: 429,
    DataFetchError: 502,
    ServiceUnavailableError: 503,
    StorageQuotaExceededError: 507,
    GeoadaptError: 400,
}


def status_for(exc: GeoadaptError | type[GeoadaptError]) -> int:
    """The status of an error, or of a class of them (a failed job's, known by its code)."""
    for cls in (exc if isinstance(exc, type) else type(exc)).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def error_body(code: str, problems: list[dict]) -> dict:
    return {"type": code, "detail": [{"field": p.get("field") or "", "message": p["message"]} for p in problems]}


def error_headers(request: Request, exc: GeoadaptError) -> dict[str, str]:
    """What an answer to `exc` tells besides its body, in every dialect (/v1, /ogcapi): how to authenticate,
    when to retry."""
    headers = {}
    if isinstance(exc, UnauthorizedError):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RateLimitedError):
        headers["Retry-After"] = str(exc.retry_after)
    if status_for(exc) == 503:
        headers["Retry-After"] = str(request.app.state.settings.retry_after_s)
    return headers


def _domain_error(request: Request, exc: GeoadaptError) -> JSONResponse:
    problems = getattr(exc, "problems", None) or [{"field": exc.field or "", "message": exc.message}]
    return JSONResponse(error_body(exc.code, problems), status_code=status_for(exc),
                        headers=error_headers(request, exc))


def _store_down(request: Request, exc: Exception) -> JSONResponse:
    # the driver's message may carry a host or user name: log it, do not send it
    log.warning("job store unreachable: %s", type(exc).__name__)
    return JSONResponse(
        error_body("service_unavailable", [{"field": "", "message": "the job store is unreachable; retry later"}]),
        status_code=503,
        headers={"Retry-After": str(request.app.state.settings.retry_after_s)},
    )


def _field(loc) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts
    return ".".join(parts)


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [{"field": _field(e.get("loc", ())), "message": e.get("msg", "invalid")} for e in exc.errors()]
    return JSONResponse(error_body("invalid_request", problems), status_code=422)


#: Starlette's own errors (no such route, wrong method, a body it cannot parse) in the same shape
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else "request refused"
    if exc.status_code == 400 and "parsing the body" in message:
        message = "the request body cannot be parsed (not JSON, not UTF-8, or a broken multipart form)"
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return JSONResponse(error_body(code, [{"field": "", "message": message}]), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(GeoadaptError, _domain_error)
    app.add_exception_handler(StoreUnavailable, _store_down)
    app.add_exception_handler(OperationalError, _store_down)
    app.add_exception_handler(InterfaceError, _store_down)
    app.add_exception_handler(RequestValidationError, _validation_error)
