"""TiTiler (titiler.core, the `bench` extra) serving COGs by path: the reference tile server of Benchmark C.

    python -m uvicorn --factory benchmarks.titiler_reference:create_app
    GET /cog/tiles/{tileMatrixSetId}/{z}/{x}/{y}.png?url=<path of a COG>

Stock TilerFactory, no auth, the COG's own colour table (as TiTiler renders a paletted COG by default):
the same work our result tiles do, by the reference implementation.
"""
from __future__ import annotations


def create_app():
    from fastapi import FastAPI
    from titiler.core.errors import DEFAULT_STATUS_CODES, add_exception_handlers
    from titiler.core.factory import TilerFactory

    app = FastAPI(title="TiTiler (Benchmark C reference)")
    cog = TilerFactory(router_prefix="/cog")
    app.include_router(cog.router, prefix="/cog")
    add_exception_handlers(app, DEFAULT_STATUS_CODES)
    return app
