"""The Celery app of the workers, configured from settings by the entry point (`geoadapt worker`).

    geoadapt worker  -> Settings, WorkerJobStore (service side)  -> configure(app, settings, store)
                     -> app.worker_main([...])  -> workers.tasks.run_job(job_id) per message

`app` exists at import so that `celery -A workers.celery_app:app inspect ping` finds it, but it is
configured only by `configure()` (or, for such control commands, from GEOADAPT_BROKER_URL when it
is first used): no settings are read at import.
"""
from __future__ import annotations

import os
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from core.task_names import GPU_QUEUE, JOB_QUEUES
from workers.embedded_broker import worker_broker, worker_polling


class GeoadaptCelery(Celery):
    #: the WorkerJobStore and Settings injected by the entry point
    job_store: Any = None
    settings: Any = None

    def on_configure(self) -> None:
        # a bare `celery -A workers.celery_app:app inspect ...` (health checks) only needs the broker
        if self.settings is None and os.environ.get("GEOADAPT_BROKER_URL"):
            self.conf.broker_url = os.environ["GEOADAPT_BROKER_URL"]


app = GeoadaptCelery("geoadapt", include=["workers.tasks"], set_as_current=True)


def celery_config(settings) -> dict:
    """Reliability settings for long jobs (see Celery's guide on long-running tasks)."""
    return dict(
        **worker_broker(settings.broker_url),
        result_backend=settings.result_backend_url,
        task_ignore_result=settings.result_backend_url is None,  # the job store is the source of truth
        task_queues=[Queue(q, Exchange(q, type="direct"), routing_key=q) for q in JOB_QUEUES],
        task_default_queue=GPU_QUEUE,
        # ack only after the job ran, and requeue if the process running it died: a lost worker's
        # job runs again (and resumes from its checkpoint) instead of vanishing
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # one job at a time per process: a long job never holds a second one hostage
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        task_soft_time_limit=settings.job_soft_time_limit_s,
        task_time_limit=settings.job_hard_time_limit_s,
        broker_transport_options={**settings.broker_transport_options,
                                  **worker_polling(settings.broker_url, settings.broker_poll_s)},
        broker_connection_retry_on_startup=True,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
        enable_utc=True,
    )


def configure(celery: GeoadaptCelery, settings, job_store) -> GeoadaptCelery:
    celery.settings = settings
    celery.job_store = job_store
    celery.conf.update(celery_config(settings))
    return celery
