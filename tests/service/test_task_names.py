"""core.task_names as the API uses them: every job type is routed to a queue the workers declare and consume."""
from __future__ import annotations

from typing import get_args

from core import task_names
from core.jobspec import JobType
from service.queue import QUEUE_FOR_TYPE


def test_every_job_type_goes_to_a_declared_job_queue():
    assert set(QUEUE_FOR_TYPE) == set(get_args(JobType))
    assert set(QUEUE_FOR_TYPE.values()) <= set(task_names.JOB_QUEUES)


def test_names_are_distinct():
    tasks = (task_names.RUN_JOB, task_names.DATASET_STATS, task_names.RENDER_MODEL_TILE)
    queues = (*task_names.JOB_QUEUES, task_names.TILES_QUEUE)
    assert len(set(tasks)) == len(tasks) and len(set(queues)) == len(queues)
