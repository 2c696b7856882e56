"""The API's composition root: `create_app(settings)` wires settings, store, queue and routes.

    client -> RequestIds -> BodySizeLimit -> routes (deps: token, session, path policy) -> job store
                                                                                       -> broker (send_task by name)

Nothing here imports torch, models or workers: the API starts fast on a CPU-only box.
"""
from __future__ import annotations

import gc
import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool

from service import job_removal
from service.api import errors
from service.api.middleware import BodySizeLimit, RequestIds
from service.api.ratelimit import RateLimiter
from service.api.routes import datasets, health, jobs, models, stac, tiles, usage
from service.api.signed_urls import TileUrlSigner, load_or_create_secret, redact_access_log
from service.api.routes import console, dataset_tiles, ogc_processes
from service.queue import make_producer, warm_producer
from service.settings import Settings
from service.store.db import StoreUnavailable, init_db, local_writer_locks, make_engine, session_factory

log = logging.getLogger("geoadapt.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    settings.ensure_dirs()
    for root in settings.roots_over_state():
        log.warning("allowed root %s overlaps the state folder %s: paths into the state folder are refused all the "
                    "same; keep the roots and GEOADAPT_DATA_DIR apart", root, settings.data_dir)
    engine = make_engine(settings.database_url)
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await run_in_threadpool(_recover_deletions, _app)
        redact_access_log()  # here, not at import: the server has configured its loggers by now
        await run_in_threadpool(_warm_up, _app)
        # what is alive once the app is built (modules, routes, schemas: ~130k objects) lives as long
        # as the process; frozen, full collections stop walking it, and their pause, which stalls every
        # request in flight, falls from ~50 ms to ~10 ms
        gc.collect()
        gc.freeze()
        yield
        gc.unfreeze()  # an app stopped inside a longer-lived process (tests) can be collected again
        engine.dispose()

    app = FastAPI(
        lifespan=lifespan,
        title="geoadapt",
        summary="Cross-domain semantic segmentation of remote-sensing imagery: jobs, models, results.",
        version=health._version(),
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = session_factory(engine)
    app.state.producer = make_producer(settings)
    app.state.store_writes, app.state.broker_sends = local_writer_locks(settings.database_url, settings.broker_url)
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute)
    secret = settings.tile_url_secret.get_secret_value() if settings.tile_url_secret else None
    app.state.tile_signer = TileUrlSigner(load_or_create_secret(secret, settings.data_dir), settings.tile_url_ttl)

    # the store may be down when the API starts: create tables on the first request that works
    lock, ready = threading.Lock(), [False]

    def ensure_db() -> None:
        if ready[0]:
            return
        with lock:
            if not ready[0]:
                init_db(engine)
                ready[0] = True

    app.state.ensure_db = ensure_db
    app.state.store_ready = lambda: ready[0]
    try:
        ensure_db()
    except StoreUnavailable as e:
        log.warning("%s; requests answer 503 until it is back", e)
    sessions = app.state.sessions

    def _sessions():
        ensure_db()
        return sessions()

    app.state.sessions = _sessions

    errors.install(app)
    app.add_middleware(BodySizeLimit, default=settings.max_json_bytes, upload=settings.max_upload_bytes,
                       upload_paths=("/v1/datasets/upload",))
    if settings.cors_origins:  # pages on other origins (a MapLibre map, a notebook) read the API and its tiles
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "HEAD", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Range", "If-None-Match"],
                           expose_headers=["X-Request-ID", "ETag", "Content-Range", "Accept-Ranges", "Retry-After",
                                           "Location"], max_age=600)
    app.add_middleware(RequestIds)  # added last, so outermost: it also sees what BodySizeLimit raises
    for r in (jobs.router, datasets.router, models.router, tiles.router, usage.router, health.router, stac.router):
        app.include_router(r)
    app.include_router(dataset_tiles.router)
    app.include_router(ogc_processes.router)
    console.install(app)  # the web console at /, after the API routes

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            # the job body's schema is JobSpec's; its sub-schemas go where its $refs point
            schema.setdefault("components", {}).setdefault("schemas", {}).update(jobs.job_body_components())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    return app


def _warm_up(app: FastAPI) -> None:
    """At start, the one-off costs of the first submit: otherwise the first clients' requests pay them
    (~100 ms each when a few arrive together: broker connection, result backend, validation module)."""
    import core.raster.validate  # noqa: F401  (what check_job_inputs runs)

    try:
        warm_producer(app.state.producer)
    except Exception as e:  # the broker may be down at start; submits answer 503 until it is back
        log.warning("broker not reachable at start (%s); the first submit connects", type(e).__name__)


def _recover_deletions(app: FastAPI) -> None:
    """Job deletions a crash cut short are undone or finished before clients look (service.job_removal)."""
    try:
        with app.state.sessions() as session:
            for what in job_removal.recover_interrupted(session, app.state.settings):
                log.warning("interrupted job deletion: %s", what)
    except Exception as e:  # the store may be down at start; the next start looks again
        log.warning("could not look for interrupted job deletions: %s", type(e).__name__)
