"""geoadapt core: torch-, FastAPI- and Celery-free contracts shared by the service and the workers."""
