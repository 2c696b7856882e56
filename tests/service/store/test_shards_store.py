"""Shard records (service/store/shards.py) on SQLite and PostgreSQL: planned once, claimed by one live process,
taken over only from a dead one (attempts count the runs), heartbeats that say stop on cancel or a lost claim,
and records that go with their job."""
from __future__ import annotations

import uuid

from sqlalchemy import delete, select

from service.store import jobs, shards, tokens
from service.store.tables import Job, JobShard

SPEC = {"type": "predict", "classes": [{"id": 1, "name": "a", "color": "#000000"}]}


def _running_job(s) -> uuid.UUID:
    owner, _ = tokens.create_token(s)
    s.commit()
    job, _ = jobs.create_job(s, job_id=uuid.uuid4(), owner_id=owner.id, spec=SPEC, queue="gpu")
    assert jobs.claim(s, job.id, "coordinator", previous_run_dead=lambda j: False) is not None
    return job.id


def test_claim_once_take_over_from_the_dead_and_count_attempts(session_maker):
    alive = lambda rec: False  # noqa: E731
    dead = lambda rec: True  # noqa: E731
    with session_maker() as s:
        jid = _running_job(s)
        shards.plan(s, jid, "p/a", 3)
        shards.plan(s, jid, "p/a", 3)  # a resumed coordinator plans again: nothing changes
        shards.plan(s, jid, "p/b", 2)  # another scene of the same job
        assert [r.index for r in shards.shards(s, jid, "p/a")] == [0, 1, 2]
        assert shards.claim(s, jid, "p/a", 1, "w1", alive).attempts == 1
        assert shards.claim(s, jid, "p/a", 1, "w2", alive) is None  # alive elsewhere
        rec = shards.claim(s, jid, "p/a", 1, "w2", dead)  # its claimant died: taken over, counted
        assert (rec.worker, rec.attempts, rec.status) == ("w2", 2, "running")
        assert shards.beat(s, jid, "p/a", 1, "w1") is True  # the old claimant lost it: it stops
        assert shards.beat(s, jid, "p/a", 1, "w2") is False
        assert shards.finish(s, jid, "p/a", 1, {"predicted": 5})
        assert not shards.finish(s, jid, "p/a", 1, {"predicted": 6})  # done once
        assert shards.claim(s, jid, "p/a", 1, "w3", dead) is None  # a done shard never runs again
        assert shards.shards(s, jid, "p/a")[1].result == {"predicted": 5}
        # a failure is recorded on the shard, for the coordinator to fail the job with
        assert shards.claim(s, jid, "p/a", 0, "w1", alive) is not None
        assert shards.fail(s, jid, "p/a", 0, "w1", {"type": "OSError", "message": "disk"})
        assert shards.claim(s, jid, "p/a", 0, "w1", dead) is None
        # a stopped run gives its shard back, pending
        assert shards.claim(s, jid, "p/a", 2, "w1", alive) is not None
        assert shards.release(s, jid, "p/a", 2, "w1")
        assert shards.shards(s, jid, "p/a")[2].status == "pending"
        assert [r.status for r in shards.shards(s, jid, "p/b")] == ["pending", "pending"]


def test_cancel_stops_runs_and_claims_and_records_go_with_the_job(session_maker):
    with session_maker() as s:
        jid = _running_job(s)
        shards.plan(s, jid, "p", 3)
        assert shards.claim(s, jid, "p", 0, "w1", lambda r: False) is not None
        assert not shards.job_stopping(s, jid)
        jobs.request_cancel(s, s.get(Job, jid))
        assert shards.job_stopping(s, jid)
        assert shards.beat(s, jid, "p", 0, "w1") is True  # the running shard stops at its next beat
        assert shards.claim(s, jid, "p", 1, "w2", lambda r: False) is None  # the rest never start
        s.execute(delete(Job).where(Job.id == jid))
        s.commit()
        assert list(s.scalars(select(JobShard).where(JobShard.job_id == jid))) == []
