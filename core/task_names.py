"""Celery task and queue names: the API sends by these names and the workers register and consume
under them, so neither side imports the other (the API never loads worker code). Also the one messaging default
both sides read: how often a worker looks at the embedded broker's queues."""
from __future__ import annotations

#: run one job (adapt, train, predict, evaluate) by its id: workers/tasks.py
RUN_JOB = "geoadapt.run_job"
#: run one shard of a sharded prediction of a job (job id, shard folder, index): workers/tasks.py
RUN_SHARD = "geoadapt.run_shard"
#: compute a registered dataset's statistics by its id: workers/tasks.py
DATASET_STATS = "geoadapt.dataset_stats"
#: render one map tile through a model: workers/tile_tasks.py
RENDER_MODEL_TILE = "geoadapt.render_model_tile"
#: a model's network as ONNX into its bundle, on the first download that asks: workers/tasks.py
EXPORT_MODEL_ONNX = "geoadapt.export_model_onnx"

#: jobs that run a network
GPU_QUEUE = "gpu"
#: light work: checks, statistics
CPU_QUEUE = "cpu"
#: live tile inference, served by a worker of its own so that a long job never stalls the map
TILES_QUEUE = "tiles"
#: the queues of jobs and dataset work (the tile queue is declared by its own client and worker)
JOB_QUEUES = (GPU_QUEUE, CPU_QUEUE)

#: seconds between a worker's looks at the embedded broker's empty queues (``GEOADAPT_BROKER_POLL_S`` by default): a
#: few cheap SQLite reads a second against up to this long a queueing delay
EMBEDDED_BROKER_POLL_S = 0.1
