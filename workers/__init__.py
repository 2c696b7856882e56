"""geoadapt workers: Celery app, thin tasks, and the pipelines they call (adapt, predict)."""
