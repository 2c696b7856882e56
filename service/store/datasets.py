"""Dataset records: owner-scoped like jobs."""
from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.errors import NotFoundError
from service.store.tables import Dataset, Token


def create_dataset(session: Session, *, dataset_id: uuid.UUID, owner_id: str, name: str, kind: str,
                   paths: dict, report: dict | None = None, stats: dict | None = None) -> Dataset:
    ds = Dataset(id=dataset_id, owner_id=owner_id, name=name, kind=kind, paths=paths, report=report,
                 stats=stats)
    session.add(ds)
    session.commit()
    return ds


def get_dataset(session: Session, dataset_id: str | uuid.UUID, viewer: Token) -> Dataset:
    try:
        key = dataset_id if isinstance(dataset_id, uuid.UUID) else uuid.UUID(str(dataset_id))
    except ValueError:
        raise NotFoundError(f"no dataset {dataset_id}") from None
    ds = session.get(Dataset, key)
    if ds is None or (not viewer.admin and ds.owner_id != viewer.id):
        raise NotFoundError(f"no dataset {dataset_id}")
    return ds


def list_datasets(session: Session, viewer: Token, *, limit: int, offset: int) -> tuple[list[Dataset], int]:
    q = select(Dataset)
    if not viewer.admin:
        q = q.where(Dataset.owner_id == viewer.id)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = session.scalars(q.order_by(Dataset.created_at.desc(), Dataset.id).limit(limit).offset(offset))
    return list(rows), int(total)


def delete_dataset(session: Session, ds: Dataset) -> None:
    session.delete(ds)
    session.commit()
