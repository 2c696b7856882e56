"""Health without auth: API, job store, broker and whether any worker has beaten recently."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Request, Response

from service.api.schemas import ComponentHealth, HealthPublic
from service.store import workers as worker_store
from service.store.db import StoreUnavailable, ping

router = APIRouter(tags=["health"])


def _version() -> str:
    try:
        return version("geoadapt")
    except PackageNotFoundError:
        return "unknown"


def _broker(request: Request) -> ComponentHealth:
    try:
        with request.app.state.producer.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return ComponentHealth(ok=True)
    except Exception as e:  # any transport error means "cannot enqueue now"
        return ComponentHealth(ok=False, detail=f"broker unreachable ({type(e).__name__})")


@router.get("/health", response_model=HealthPublic, responses={503: {"model": HealthPublic}})
def health(request: Request, response: Response) -> HealthPublic:
    """200 when jobs can be accepted (store and broker up); 'degraded' while no worker is alive."""
    state = request.app.state
    try:
        ping(state.engine)
        store = ComponentHealth(ok=True)
    except StoreUnavailable as e:
        store = ComponentHealth(ok=False, detail=str(e))
    broker = _broker(request)
    workers = ComponentHealth(ok=False, detail="job store unreachable")
    if store.ok:
        try:
            state.ensure_db()
            with state.sessions() as s:
                alive = worker_store.alive(s, within_s=3 * state.settings.heartbeat_interval_s + 5)
            workers = ComponentHealth(ok=bool(alive), detail=f"{len(alive)} worker(s) alive"
                                      + (": " + ", ".join(w.name for w in alive[:5]) if alive else ""))
        except Exception as e:  # a store that fails mid-request is reported, not raised
            workers = ComponentHealth(ok=False, detail=type(e).__name__)
    if not (store.ok and broker.ok):
        status = "unavailable"
        response.status_code = 503
        response.headers["Retry-After"] = str(state.settings.retry_after_s)
    else:
        status = "ok" if workers.ok else "degraded"
    return HealthPublic(status=status, version=_version(), api=ComponentHealth(ok=True), job_store=store,
                        broker=broker, workers=workers)
