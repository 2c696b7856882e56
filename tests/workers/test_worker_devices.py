"""Train jobs with params.devices: 2 run by a real Celery worker. Its prefork pool process is daemonic, so the
extra rank must be a subprocess (multiprocessing would refuse it children); killed with the pool process, the
rank goes too, and the job resumes from its checkpoint on the next attempt."""
from __future__ import annotations

import os
import re
import signal
import uuid
from pathlib import Path

import pytest

from tests.workers.test_tasks_worker import Backend, _final, _kill_mid_job, _results_row, nc_spec, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def embedded(tmp_path, nc_data):
    b = Backend("embedded", tmp_path, Path(nc_data["strata"]).parent)
    b.start_worker(pool="prefork")
    yield b
    b.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_prefork_worker_trains_on_two_ranks(embedded, nc_bands, nc_data, nc_classes):
    b = embedded
    jid = b.submit(nc_spec(nc_bands, nc_data, nc_classes, iterations=6, batch_size=4, devices=2))
    j = _final(b, jid, timeout=180)
    assert j["status"] == "successful", (j, b.logs())
    assert j["done"] == j["total"] == 6 and j["progress"] == 100
    res = b.client.get(f"/v1/jobs/{jid}/results", headers=b.auth).json()
    assert res["bundle"]["metadata"]["provenance"]["devices"] == 2
    assert res["metrics"]["training"]["iterations"] == 6


@pytest.mark.slow
def test_killed_pool_process_takes_its_rank_along_and_the_job_resumes(embedded, nc_bands, nc_data, nc_classes):
    b = embedded
    jid = b.submit(nc_spec(nc_bands, nc_data, nc_classes, iterations=150, batch_size=4, devices=2,
                           checkpoint_interval=10))
    _kill_mid_job(b, jid)
    with b.app.state.sessions() as s:
        from service.store.tables import Job

        child = int(s.get(Job, uuid.UUID(jid)).worker.rsplit(":", 2)[1])
    log = Path(b.settings.job_dir(jid)) / "output" / "checkpoints" / "ranks" / "rank-1.log"
    rank1 = int(re.search(r"\[rank 1\] process (\d+)", log.read_text()).group(1))
    assert _alive(rank1)
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: not _alive(rank1), 20, "rank 1 to die with its rank 0", b)
    j = _final(b, jid, timeout=400)
    assert j["status"] == "successful", (j, b.logs())
    run = _results_row(b, jid)["run"]
    assert run["attempt"] == 2 and run["resumed_from_iteration"] >= 10, run
