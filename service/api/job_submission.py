"""Submitting a job spec: validate it, store it, enqueue it. The one path every front end takes
(POST /v1/jobs and the OGC API - Processes execution), so both refuse and accept the same specs.

    body -> idempotency lookup -> quota -> own folder as output -> model ids (bundle, model.checkpoint) and
         datasets resolved
         -> load_job_spec (paths confined) -> input checks -> job record -> spec file -> broker

Where a job writes is the server's choice: the spec's `output` is replaced by the job's own folder,
`<data_dir>/jobs/<id>/output`, whatever the client sent, so no client can make a worker write elsewhere.
"""
from __future__ import annotations

import logging
import shutil
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from sqlalchemy.orm import Session

from core.errors import SpecError
from core.files import write_json
from core.job_layout import INPUTS_REPORT, JOB_SPEC, output_dir
from core.jobspec import check_nesting, load_job_spec
from service import usage
from service.api.deps import CurrentToken, PathPolicyDep, Producer, SessionDep, SettingsDep
from service.api.routes.models import checkpoint_output_dir, model_output_dir
from service.errors import ServiceUnavailableError
from service.inputs import check_job_inputs, model_id_of
from service.paths import PathPolicy
from service.queue import QUEUE_FOR_TYPE, enqueue
from service.settings import Settings
from service.spec_datasets import resolve_scene_datasets
from service.store import datasets
from service.store import jobs as store
from service.store.tables import Job, Token

log = logging.getLogger("geoadapt.api")


def submit(
    body: dict[str, Any],
    *,
    session: Session,
    settings: Settings,
    token: Token,
    policy: PathPolicy,
    producer,
    app_state,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Validate the spec (paths confined to allowed roots, inputs checked), store it, enqueue it.

    Returns (job, created): created is False for the job an earlier request with the same
    Idempotency-Key and body made. `app_state` gives the locks that serialise store writes and broker
    sends where the store or the broker is embedded.
    """
    check_nesting(body)  # before anything walks the body recursively
    digest = store.body_hash(body)
    if idempotency_key:
        earlier = store.find_by_idempotency_key(session, token.id, idempotency_key)
        if earlier is not None:
            return store.check_idempotent(earlier, digest), False
    usage.check_submit(session, settings, token.id)

    job_id = uuid.uuid4()
    job_dir = settings.job_dir(job_id)
    data = dict(body)
    data["output"] = str(output_dir(job_dir))
    policy.extra.append(job_dir.resolve())  # the job's own folder, before the job row exists
    bundle_as_given = data.get("bundle")
    model_id = model_id_of(bundle_as_given)
    if model_id is not None:  # a model id stands for that job's output folder
        found = model_output_dir(session, settings, token, model_id)
        if found is None:
            raise SpecError(f"no model {model_id}: a model id is the id of a successful train or adapt job of yours",
                            field="bundle")
        data["bundle"] = str(found)
    model = data.get("model")
    checkpoint_id = model_id_of(model.get("checkpoint")) if isinstance(model, dict) else None
    if checkpoint_id is not None:  # a job id stands for the weights that job left (a pretrain job's, a model's)
        found = checkpoint_output_dir(session, settings, token, checkpoint_id)
        if found is None:
            raise SpecError(f"no weights {checkpoint_id}: a job id here is the id of a successful pretrain, train or "
                            "adapt job of yours", field="model.checkpoint")
        data["model"] = {**model, "checkpoint": str(found)}
    data = resolve_scene_datasets(data, lambda ident: dict(datasets.get_dataset(session, ident, token).paths or {}))
    spec = load_job_spec(data, check_files=True, path_resolver=policy)
    report = check_job_inputs(spec, bundle_as_given if isinstance(bundle_as_given, str) else None,
                              settings.override_catalogue)
    spec_json = spec.to_jsonable()

    with app_state.store_writes:
        job, created = store.create_job(
            session, job_id=job_id, owner_id=token.id, spec=spec_json, queue=QUEUE_FOR_TYPE[spec.type],
            idempotency_key=idempotency_key, digest=digest,
        )
    if created:
        # disk full or broker down: undo the row and the folder, so that nothing half-made stays and a
        # retry with the same Idempotency-Key submits again
        try:
            write_json(job_dir / JOB_SPEC, spec_json)
            if report is not None:
                write_json(job_dir / INPUTS_REPORT, report)
        except OSError as e:
            with app_state.store_writes:
                _undo(session, job, job_dir, f"cannot write the job folder: {type(e).__name__}")
            raise ServiceUnavailableError("the server cannot store the job's files (disk full?); retry later") from None
        try:
            with app_state.broker_sends:
                enqueue(producer, job.id, job.queue)
        except Exception as e:
            with app_state.store_writes:
                _undo(session, job, job_dir, f"enqueue failed: {type(e).__name__}")
            raise ServiceUnavailableError("the job queue (broker) is unreachable; retry later") from None
    return job, created


@dataclass
class Submitter:
    """:func:`submit` with the request's store session, settings, token, path policy, broker producer and
    Idempotency-Key filled in: what the routes of both front ends take."""

    session: Session
    settings: Settings
    token: Token
    policy: PathPolicy
    producer: Any
    app_state: Any
    idempotency_key: str | None

    def __call__(self, body: dict[str, Any]) -> tuple[Job, bool]:
        return submit(body, session=self.session, settings=self.settings, token=self.token, policy=self.policy,
                      producer=self.producer, app_state=self.app_state, idempotency_key=self.idempotency_key)


def get_submitter(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    token: CurrentToken,
    policy: PathPolicyDep,
    producer: Producer,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)] = None,
) -> Submitter:
    return Submitter(session, settings, token, policy, producer, request.app.state, idempotency_key)


SubmitterDep = Annotated[Submitter, Depends(get_submitter)]


def _undo(session: Session, job: Job, job_dir, why: str) -> None:
    log.warning("submit of job %s undone: %s", job.id, why)
    session.delete(job)
    session.commit()
    shutil.rmtree(job_dir, ignore_errors=True)
