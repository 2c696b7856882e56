"""Signed tile URLs: tile links that clients without an Authorization header (Leaflet or MapLibre tile
layers, QGIS XYZ connections, GDAL) can open, short-lived and read-only.

    tilejson asked with a token -> tiles URLs + ?exp=<unix time>&kid=<token id>&sig=<HMAC>
    a tile asked with ?exp&kid&sig -> HMAC(secret, kind, resource, kid, exp) matches, not expired,
                                      token kid not revoked -> served as that token (its ownership checks)

The signature covers one resource (a result, a dataset, a job's scene, a model on one dataset) and only
its tile and tilejson routes accept it: every other route still wants the header. No token is in the
URL (`kid` is the token's public id, useless without its secret), so an access log holds nothing that
opens anything after `exp`. The secret is `GEOADAPT_TILE_URL_SECRET`, or one generated once and kept
in the state folder, so that every API process sharing that folder accepts the others' links.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

from service.errors import UnauthorizedError

#: the query parameters a signed URL carries
SIGNATURE_PARAMS = ("exp", "kid", "sig")
#: the generated secret's file in the state folder
SECRET_FILE = "tile-url-secret"


class TileUrlSigner:
    """Signs and checks (kind, resource, token id, expiry) with one server secret."""

    def __init__(self, secret: bytes, ttl_s: int):
        self._secret = secret
        self.ttl_s = ttl_s

    def _mac(self, kind: str, resource: str, kid: str, exp: int) -> str:
        msg = "\n".join(("geoadapt-tile-url-v1", kind, resource, kid, str(exp))).encode()
        return base64.urlsafe_b64encode(hmac.new(self._secret, msg, hashlib.sha256).digest()).rstrip(b"=").decode()

    def params(self, kind: str, resource: str, kid: str, now: float | None = None) -> dict[str, str]:
        exp = int(now if now is not None else time.time()) + self.ttl_s
        return {"exp": str(exp), "kid": kid, "sig": self._mac(kind, resource, kid, exp)}

    def query(self, kind: str, resource: str, kid: str) -> str:
        return urlencode(self.params(kind, resource, kid))

    def check(self, kind: str, resource: str, exp: str | None, kid: str | None, sig: str | None,
              now: float | None = None) -> str:
        """The signing token's id when the signature opens this resource now; else UnauthorizedError."""
        if not (exp and kid and sig):
            missing = [k for k, v in zip(SIGNATURE_PARAMS, (exp, kid, sig)) if not v]
            raise UnauthorizedError(f"a signed tile URL needs exp, kid and sig (missing {', '.join(missing)})",
                                    field="sig")
        try:
            when = int(exp)
        except ValueError:
            raise UnauthorizedError("exp must be a unix time", field="exp") from None
        # compare_digest: the time taken does not tell how much of the signature matched
        if not hmac.compare_digest(sig.encode(), self._mac(kind, resource, kid, when).encode()):
            raise UnauthorizedError("the signature does not match this resource", field="sig")
        if when < (now if now is not None else time.time()):
            raise UnauthorizedError("the signed URL has expired; ask for the tilejson again", field="exp")
        return kid


def resource_of(kind: str, path_params: dict, query_params) -> str:
    """The resource a tile or tilejson request names, spelled the same way at signing and at checking."""
    def uid(v) -> str:
        try:
            return str(uuid.UUID(str(v)))
        except ValueError:
            raise UnauthorizedError("the signature does not match this resource", field="sig") from None

    if kind == "results":
        return str(path_params["result_id"])
    if kind == "datasets":
        return uid(path_params["dataset_id"])
    if kind == "scenes":
        return f"{uid(path_params['job_id'])}/{path_params['role']}/{path_params['index']}"
    if kind == "models":
        return f"{uid(path_params['model_id'])}/{uid(query_params.get('dataset'))}"
    raise ValueError(f"no signed tile URLs for {kind!r}")


def load_or_create_secret(configured: str | None, data_dir: Path) -> bytes:
    """The configured secret, else the state folder's (created once, owner-only, written atomically)."""
    if configured:
        return configured.encode()
    path = Path(data_dir) / SECRET_FILE
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_urlsafe(48).encode())
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # a second process making its own at the same moment: the first one wins
    except FileExistsError:
        pass
    except OSError:  # a filesystem without hard links: a rename, unless another process got there first
        if not path.exists():
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes().strip()


def tiles_query(request, kind: str, resource: str, token_id: str) -> str:
    """The signature the `tiles` URLs of a tilejson carry: a fresh one when the tilejson was asked with a
    token; the request's own when it was opened by a signed URL (so a signature never renews itself)."""
    q = request.query_params
    if "authorization" not in request.headers and q.get("sig"):
        return urlencode({k: q.get(k, "") for k in SIGNATURE_PARAMS})
    return request.app.state.tile_signer.query(kind, resource, token_id)


_SIG_IN_URL = re.compile(r"([?&]sig=)[^&\s\"]*")


class RedactSignatures(logging.Filter):
    """Access-log lines keep a signed URL's path and expiry but not its signature: a log reader learns
    which tiles were asked for and cannot open them, before or after `exp`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_SIG_IN_URL.sub(r"\1REDACTED", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = _SIG_IN_URL.sub(r"\1REDACTED", record.msg)
        return True


def redact_access_log(logger_name: str = "uvicorn.access") -> None:
    """Install RedactSignatures on the server's access logger (once)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, RedactSignatures) for f in logger.filters):
        logger.addFilter(RedactSignatures())
