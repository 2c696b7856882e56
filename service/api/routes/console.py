"""The web console: its page at / (same origin and tokens as the API), its static files, and a YAML reader.

    GET /                  -> service/console/static/index.html (no auth: the page asks for a token)
    GET /console/static/*  -> CSS, JS, and the map library the npm build step copied in
    POST /console/api/spec -> a YAML or JSON job spec as JSON (the browser has no YAML parser;
                              the job is then submitted to POST /v1/jobs like any other client's)
"""
from __future__ import annotations

from typing import Any

import yaml
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from core.errors import SpecError
from service.api.deps import CurrentToken
from service.api.schemas import ErrorPublic
from service.console import STATIC_DIR

router = APIRouter(tags=["console"])

#: the page runs only its own scripts; tiles arrive as blob: URLs fetched with the token
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' blob: data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache"}


@router.get("/", include_in_schema=False)
@router.get("/console", include_in_schema=False)
def console_page() -> FileResponse:
    """The console's single page (jobs, submit, job detail, datasets, map)."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.post("/console/api/spec", responses={401: {"model": ErrorPublic}, 422: {"model": ErrorPublic}},
             summary="Read a YAML or JSON job spec")
async def parse_spec(request: Request, _token: CurrentToken) -> dict[str, Any]:
    """The spec text as a JSON object, unchanged otherwise (POST /v1/jobs validates it)."""
    raw = await request.body()  # BodySizeLimit caps it like any JSON body
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SpecError("the spec is not UTF-8 text", field="(file)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise SpecError(f"not valid YAML/JSON{where}: {getattr(e, 'problem', None) or e}", field="(file)") from None
    if not isinstance(data, dict):
        raise SpecError("a job spec must be a mapping of fields (type, classes, source, ...)", field="(spec)")
    return data


def install(app: FastAPI) -> None:
    """Add the console's routes and static files to the API app."""
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=STATIC_DIR), name="console-static")
