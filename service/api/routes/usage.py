"""Usage: the storage the caller's jobs and uploads take on the server, against its quota."""
from __future__ import annotations

from fastapi import APIRouter

from service import usage
from service.api.deps import CurrentToken, SessionDep, SettingsDep
from service.api.schemas import ErrorPublic, UsagePublic

router = APIRouter(prefix="/v1/usage", tags=["usage"])


@router.get("", response_model=UsagePublic, responses={401: {"model": ErrorPublic}})
def get_usage(session: SessionDep, settings: SettingsDep, token: CurrentToken) -> UsagePublic:
    """Bytes the caller's job folders and uploaded datasets take, and the per-token quota (null: none)."""
    return UsagePublic(**usage.token_usage(session, settings, token.id).as_dict())
