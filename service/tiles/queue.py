"""Tile inference through Celery: send by task name to the "tiles" queue, wait on the result backend.

    API thread -> TileClient.render(request) -> send_task(RENDER_MODEL_TILE, queue="tiles", expires=timeout)
               -> poll the result backend until the worker's small status dict arrives (or timeout)
    tile worker (workers/tile_tasks.py) -> predicts, writes the PNG into the disk cache, returns a status

The PNG itself travels through the shared disk (the cache), not through the backend. The job store
stays the source of truth for jobs: the result backend only carries these short-lived tile statuses,
and each one is deleted once read. Backend: Redis when the broker is Redis (production), a SQLite file
of its own under the data dir in the embedded mode, else the job store's database.
"""
from __future__ import annotations

import threading
import time
import uuid

from core.task_names import RENDER_MODEL_TILE, TILES_QUEUE


class TileClient:
    """Sends tile requests and waits for their status; one Celery app per thread (the Redis result
    consumer and SQLAlchemy sessions of one app are not meant to be shared by threads)."""

    def __init__(self, settings):
        self.settings = settings
        self._local = threading.local()

    def _app(self):
        app = getattr(self._local, "app", None)
        if app is None:
            from celery import Celery

            app = Celery("geoadapt-tiles", broker=self.settings.broker_url,
                         backend=self.settings.tile_result_backend_url, set_as_current=False)
            app.conf.update(
                broker_transport_options=self.settings.broker_transport_options,
                broker_connection_timeout=4,
                broker_connection_retry_on_startup=False,
                database_engine_options={"connect_args": {"timeout": 30}} if self.settings.embedded_broker else {},
                result_extended=False,
                task_serializer="json",
                result_serializer="json",
                accept_content=["json"],
            )
            self._local.app = app
        return app

    def render(self, request: dict, timeout_s: float) -> dict:
        """Send one tile request and return the worker's status dict; TimeoutError if none in time."""
        app = self._app()
        task_id = f"tile-{uuid.uuid4().hex}"
        # expires: a request the API has given up on is dropped by the worker, not computed for nobody
        app.send_task(RENDER_MODEL_TILE, kwargs={"request": request}, queue=TILES_QUEUE, routing_key=TILES_QUEUE,
                      task_id=task_id, expires=timeout_s, retry=True,
                      retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1})
        backend = app.backend
        deadline = time.monotonic() + timeout_s
        wait = 0.01
        try:
            while True:
                meta = backend.get_task_meta(task_id)
                state = meta.get("status")
                if state == "SUCCESS":
                    return meta.get("result") or {}
                if state in ("FAILURE", "REVOKED"):
                    res = meta.get("result")
                    msg = res.get("exc_message") if isinstance(res, dict) else res
                    return {"status": "failed", "message": f"{state.lower()}: {msg}"}
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no tile worker answered within {timeout_s:.0f} s")
                time.sleep(wait)
                wait = min(wait * 1.5, 0.1)
        finally:
            try:
                backend.forget(task_id)
            except Exception:  # a status left behind is harmless; it must not fail the request
                pass
