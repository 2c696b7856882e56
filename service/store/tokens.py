"""API tokens: created once in plain text, stored as sha256, looked up by their public prefix."""
from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.errors import NotFoundError
from service.store.tables import Token, utcnow

PREFIX = "ga"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _token_id(token: str) -> str | None:
    parts = token.split("_", 2)  # the secret part may itself contain "_"
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1]


def create_token(session: Session, *, name: str = "", admin: bool = False) -> tuple[Token, str]:
    """Return the stored record and the plain token, which is never stored or shown again."""
    while True:
        tid = secrets.token_hex(4)
        if session.get(Token, tid) is None:
            break
    plain = f"{PREFIX}_{tid}_{secrets.token_urlsafe(32)}"
    rec = Token(id=tid, hash=_hash(plain), name=name, admin=admin)
    session.add(rec)
    session.flush()
    return rec, plain


def authenticate(session: Session, plain: str) -> Token | None:
    tid = _token_id(plain)
    if tid is None:
        return None
    rec = session.get(Token, tid)
    # compare_digest: the time taken does not tell how much of the hash matched
    if rec is None or rec.revoked or not hmac.compare_digest(rec.hash, _hash(plain)):
        return None
    now = utcnow()
    # one write a minute at most: every request writing would contend on SQLite
    if rec.last_used_at is None or now - rec.last_used_at > timedelta(minutes=1):
        rec.last_used_at = now
        session.commit()
    return rec


def revoke_token(session: Session, token_or_id: str) -> Token:
    tid = _token_id(token_or_id) or token_or_id
    rec = session.get(Token, tid)
    if rec is None:
        raise NotFoundError(f"no token with id {tid!r}")
    rec.revoked = True
    session.flush()
    return rec


def list_tokens(session: Session) -> list[Token]:
    return list(session.scalars(select(Token).order_by(Token.created_at)))
