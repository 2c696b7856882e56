"""Errors the service raises besides the core domain errors; api/errors.py maps them to HTTP codes."""
from __future__ import annotations

from core.errors import GeoadaptError


class NotFoundError(GeoadaptError):
    """No such job/dataset/model, or it belongs to another token (never say which)."""

    code = "not_found"


class ConflictError(GeoadaptError):
    """The request contradicts the current state (reused idempotency key, finished job)."""

    code = "conflict"


class PathNotAllowedError(GeoadaptError):
    """A client path outside the allowed roots (traversal, symlink escape, absolute elsewhere)."""

    code = "path_not_allowed"


class PayloadTooLargeError(GeoadaptError):
    code = "payload_too_large"


class UploadOverQuotaError(PayloadTooLargeError):
    """An upload that would take its token past its storage quota."""

    code = "storage_quota_exceeded"


class StorageQuotaExceededError(GeoadaptError):
    """The token's jobs and uploads take its whole storage quota: no new job."""

    code = "storage_quota_exceeded"


class RateLimitedError(GeoadaptError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailableError(GeoadaptError):
    """The job store or the broker is unreachable; the request can be retried as is."""

    code = "service_unavailable"


class UnauthorizedError(GeoadaptError):
    """No token, an unknown one, or a revoked one."""

    code = "unauthorized"
