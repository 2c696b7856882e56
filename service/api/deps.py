"""Typed dependencies of the routes: settings, a store session, the caller's token, path policy.

Dependencies that do no blocking I/O are ``async def``: FastAPI runs a plain ``def`` dependency in its
thread pool, a hand-off that costs more than the work on a loaded server. The session and the path
policy are among them: neither touches the database until a route, in its thread, uses it.
"""
from __future__ import annotations

import uuid
from typing import Annotated, AsyncIterator

from fastapi import Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.errors import RateLimitedError, UnauthorizedError
from service.api.signed_urls import resource_of
from service.paths import PathPolicy
from service.settings import Settings
from service.store import tokens
from service.store.tables import Dataset, Job, Token


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(request: Request) -> AsyncIterator[Session]:
    # making a session touches no database once the tables exist (until then it creates them: the
    # thread pool's work); routes use it in their threads. Closing one that still holds a connection
    # rolls back over the wire (PostgreSQL): that too goes to the thread pool, never onto the event loop
    state = request.app.state
    session = state.sessions() if state.store_ready() else await run_in_threadpool(state.sessions)
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="an API token from `geoadapt token create`")


def current_token(
    session: SessionDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Token:
    if creds is None or not creds.credentials:
        raise UnauthorizedError("missing bearer token (Authorization: Bearer <token>)", field="Authorization")
    rec = tokens.authenticate(session, creds.credentials)
    if rec is None:
        raise UnauthorizedError("invalid or revoked token", field="Authorization")
    return rec


CurrentToken = Annotated[Token, Depends(current_token)]

_SIGNATURE_DOC = "signed tile URLs (from a tilejson asked with a token) carry exp, kid and sig instead of a header"


def tile_token(kind: str):
    """The caller of a tile or tilejson route of `kind`: a bearer token, or a valid signature for exactly
    the resource this request names (service/api/signed_urls.py); other routes never accept signatures."""

    def dependency(
        request: Request, session: SessionDep,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        exp: Annotated[str | None, Query(description="expiry (unix time) of a signed URL")] = None,
        kid: Annotated[str | None, Query(description="id of the token that signed the URL")] = None,
        sig: Annotated[str | None, Query(description=_SIGNATURE_DOC)] = None,
    ) -> Token:
        if creds is not None or not (exp or kid or sig):
            return current_token(session, creds)
        resource = resource_of(kind, request.path_params, request.query_params)
        tid = request.app.state.tile_signer.check(kind, resource, exp, kid, sig)
        rec = session.get(Token, tid)
        if rec is None or rec.revoked:
            raise UnauthorizedError("the token that signed this URL is revoked", field="kid")
        return rec

    return dependency


ResultTileToken = Annotated[Token, Depends(tile_token("results"))]
DatasetTileToken = Annotated[Token, Depends(tile_token("datasets"))]
SceneTileToken = Annotated[Token, Depends(tile_token("scenes"))]
ModelTileToken = Annotated[Token, Depends(tile_token("models"))]


async def rate_limit(request: Request, token: CurrentToken) -> None:
    wait = request.app.state.rate_limiter.check(token.id)
    if wait is not None:
        raise RateLimitedError(f"too many requests; retry in {wait} s", retry_after=wait)


RateLimited = Depends(rate_limit)


async def get_path_policy(settings: SettingsDep, session: SessionDep, token: CurrentToken) -> PathPolicy:
    def owns(kind: str, ident: uuid.UUID) -> bool:
        row = session.get(Job if kind == "jobs" else Dataset, ident)
        return row is not None and (token.admin or row.owner_id == token.id)

    return PathPolicy(settings.allowed_roots, data_dir=settings.data_dir, owns=owns, state_files=settings.state_files)


PathPolicyDep = Annotated[PathPolicy, Depends(get_path_policy)]


async def get_producer(request: Request):
    return request.app.state.producer


Producer = Annotated[object, Depends(get_producer)]


async def get_base_url(request: Request, settings: SettingsDep) -> str:
    """Links are absolute; behind a proxy `public_url` says what clients see."""
    return (settings.public_url or str(request.base_url)).rstrip("/")


BaseUrl = Annotated[str, Depends(get_base_url)]
