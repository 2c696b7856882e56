"""The job store on SQLite and PostgreSQL: tokens, idempotent submit, isolation, cancel, worker claims."""
from __future__ import annotations

import uuid

import pytest

from service.errors import ConflictError, NotFoundError
from service.store import jobs, tokens
from core.files import write_json
from service.store.tables import ACCEPTED, DISMISSED, RUNNING, SUCCESSFUL

SPEC = {"type": "train", "method": "source-only", "classes": [{"id": 1, "name": "a", "color": "#000000"}]}


def _submit(s, owner, key=None, spec=SPEC):
    return jobs.create_job(s, job_id=uuid.uuid4(), owner_id=owner.id, spec=spec, queue="gpu",
                           idempotency_key=key, digest=jobs.body_hash(spec))


def test_tokens_hashed_and_revocable(session_maker):
    with session_maker() as s:
        rec, plain = tokens.create_token(s, name="a")
        s.commit()
        assert plain.startswith(f"ga_{rec.id}_") and plain not in rec.hash
        assert tokens.authenticate(s, plain).id == rec.id
        assert tokens.authenticate(s, plain + "x") is None
        assert tokens.authenticate(s, "nonsense") is None
        tokens.revoke_token(s, rec.id)
        s.commit()
        assert tokens.authenticate(s, plain) is None


def test_idempotency_same_body_same_job_other_body_conflict(session_maker):
    with session_maker() as s:
        a, _ = tokens.create_token(s)
        b, _ = tokens.create_token(s)
        s.commit()
        j1, created1 = _submit(s, a, "k1")
        j2, created2 = _submit(s, a, "k1")
        assert created1 and not created2 and j1.id == j2.id
        with pytest.raises(ConflictError):
            _submit(s, a, "k1", spec={**SPEC, "method": "st-dasegnet"})
        # a key is per owner: the other token's same key is a new job
        j3, created3 = _submit(s, b, "k1")
        assert created3 and j3.id != j1.id


def test_owner_isolation_listing_and_pagination(session_maker):
    with session_maker() as s:
        a, _ = tokens.create_token(s)
        b, _ = tokens.create_token(s)
        admin, _ = tokens.create_token(s, admin=True)
        s.commit()
        mine = [_submit(s, a)[0] for _ in range(5)]
        other, _ = _submit(s, b)
        with pytest.raises(NotFoundError):
            jobs.get_job(s, other.id, a)
        with pytest.raises(NotFoundError):
            jobs.get_job(s, "not-a-uuid", a)
        assert jobs.get_job(s, other.id, admin).id == other.id
        page1, total = jobs.list_jobs(s, a, limit=2, offset=0)
        page3, _ = jobs.list_jobs(s, a, limit=2, offset=4)
        assert total == 5 and len(page1) == 2 and len(page3) == 1
        seen = {j.id for off in (0, 2, 4) for j in jobs.list_jobs(s, a, limit=2, offset=off)[0]}
        assert seen == {j.id for j in mine}
        assert jobs.list_jobs(s, admin)[1] == 6
        assert jobs.list_jobs(s, a, status=RUNNING)[1] == 0
        assert jobs.list_jobs(s, a, type="train")[1] == 5
        assert mine[0].created_at.tzinfo is not None


def test_cancel_dismisses_queued_and_flags_running(session_maker):
    with session_maker() as s:
        a, _ = tokens.create_token(s)
        s.commit()
        queued, _ = _submit(s, a)
        assert jobs.request_cancel(s, queued).status == DISMISSED
        with pytest.raises(ConflictError):
            jobs.request_cancel(s, queued)
        # a dismissed job is never claimed by a late message
        assert jobs.claim(s, queued.id, "w1", previous_run_dead=lambda j: True) is None

        running, _ = _submit(s, a)
        assert jobs.claim(s, running.id, "w1", previous_run_dead=lambda j: False).status == RUNNING
        j = jobs.request_cancel(s, running)
        assert j.status == RUNNING and j.cancel_requested
        assert jobs.heartbeat(s, running.id, "w1", progress=10.0) is True


def test_claim_only_once_unless_previous_worker_dead(session_maker):
    with session_maker() as s:
        a, _ = tokens.create_token(s)
        s.commit()
        job, _ = _submit(s, a)
        assert job.status == ACCEPTED
        first = jobs.claim(s, job.id, "w1", previous_run_dead=lambda j: False)
        assert first.attempts == 1 and first.worker == "w1"
        # duplicate delivery while w1 is alive: refused
        assert jobs.claim(s, job.id, "w2", previous_run_dead=lambda j: False) is None
        # w1 died: w2 takes over, and w1's late writes no longer land
        second = jobs.claim(s, job.id, "w2", previous_run_dead=lambda j: j.worker == "w1")
        assert second.attempts == 2 and second.worker == "w2"
        assert jobs.finish(s, job.id, "w1", {"x": 1}) is False
        assert jobs.finish(s, job.id, "w2", {"bundle": "b"}) is True
        s.expire_all()
        done = jobs.get_job(s, job.id, a)
        assert done.status == SUCCESSFUL and done.progress == 100.0 and done.results == {"bundle": "b"}
        assert done.finished_at >= done.started_at


def test_atomic_json_write_leaves_no_temp(tmp_path):
    p = write_json(tmp_path / "d" / "results.json", {"a": 1})
    assert p.read_text().strip().startswith("{")
    assert [x.name for x in p.parent.iterdir()] == ["results.json"]


def test_takeover_cancelled_orphans_and_requeue(session_maker):
    with session_maker() as s:
        a, _ = tokens.create_token(s)
        s.commit()
        job, _ = _submit(s, a)
        jobs.claim(s, job.id, "w1", previous_run_dead=lambda j: False)
        assert jobs.heartbeat(s, job.id, "w1", progress=5.0) is False
        # w1 went silent; w2 takes over: w1's next heartbeat tells it to stop
        jobs.claim(s, job.id, "w2", previous_run_dead=lambda j: True)
        assert jobs.heartbeat(s, job.id, "w1") is True
        assert jobs.heartbeat(s, job.id, "w2") is False
        # the sweep sent it again: accepted until some worker claims it
        assert jobs.mark_requeued(s, job.id, "w2") is True
        s.expire_all()
        assert jobs.get_job(s, job.id, a).status == ACCEPTED and jobs.running_jobs(s) == []
        assert jobs.mark_requeued(s, job.id, "w2") is False
        # cancelled while its worker was dead: dismissed, never run again
        again = jobs.claim(s, job.id, "w3", previous_run_dead=lambda j: False)
        jobs.request_cancel(s, again)
        assert jobs.claim(s, job.id, "w4", previous_run_dead=lambda j: True) is None
        s.expire_all()
        gone = jobs.get_job(s, job.id, a)
        # one word for it everywhere (API, CLI, console): dismissed
        assert gone.status == DISMISSED and "dismissed" in gone.message and "cancelled" not in gone.message


def test_a_job_that_keeps_losing_its_worker_fails_for_good(session_maker):
    with session_maker() as s:
        a, _ = tokens.create_token(s)
        s.commit()
        job, _ = _submit(s, a)
        for i in range(3):
            assert jobs.claim(s, job.id, f"w{i}", previous_run_dead=lambda j: True, max_attempts=3) is not None
        assert jobs.claim(s, job.id, "w9", previous_run_dead=lambda j: True, max_attempts=3) is None
        s.expire_all()
        j = jobs.get_job(s, job.id, a)
        assert j.status == "failed" and j.error_type == "worker_lost" and "3 times" in j.error_message


def test_sqlite_writers_of_one_process_share_one_lock_servers_get_none():
    import threading
    from contextlib import nullcontext

    from service.store.db import local_writer_locks

    store, broker, pg, redis = local_writer_locks(
        "sqlite:///state/geoadapt.db", "sqla+sqlite:///state/broker.db", "postgresql://db/x", "redis://r:6379/0")
    assert store is broker and isinstance(store, type(threading.Lock()))
    assert isinstance(pg, nullcontext) and isinstance(redis, nullcontext)
    with store:  # held by a submit's job insert, a broker send waits for it
        assert not broker.acquire(blocking=False)
