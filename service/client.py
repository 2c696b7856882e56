"""A small REST client for the geoadapt API (used by the CLI's submit/status/wait/... commands)."""
from __future__ import annotations

from typing import Any

import httpx

from core.errors import GeoadaptError


class ApiError(GeoadaptError):
    """The API answered 4xx: the request needs fixing (message lists the API's problems)."""

    code = "api_error"

    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body
        problems = body.get("detail") if isinstance(body, dict) else None
        if isinstance(problems, list):
            msg = "; ".join(f"{p.get('field')}: {p.get('message')}" if p.get("field") else str(p.get("message"))
                            for p in problems if isinstance(p, dict))
        else:
            msg = str(problems or body)
        if status == 401:
            msg += ("; give a token with --token or GEOADAPT_TOKEN (an admin of the server makes one with "
                    "`geoadapt token create`)")
        super().__init__(f"HTTP {status}: {msg}")


class ServerError(Exception):
    """5xx or no connection: not the request's fault."""


class Client:
    def __init__(self, base_url: str, token: str | None, *, timeout: float = 30.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kw) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise ServerError(f"cannot reach {self.http.base_url}: {type(e).__name__}: {e}") from None
        try:
            body = r.json() if r.content else None
        except ValueError:
            body = r.text
        if r.status_code >= 500:
            raise ServerError(f"HTTP {r.status_code} from {path}: {body}")
        if r.status_code >= 400:
            raise ApiError(r.status_code, body)
        return body

    def submit(self, spec: dict, idempotency_key: str | None = None) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/v1/jobs", json=spec, headers=headers)

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def jobs(self, **params) -> dict:
        return self._call("GET", "/v1/jobs", params={k: v for k, v in params.items() if v is not None})

    def cancel(self, job_id: str) -> dict | None:
        """DELETE: a queued or running job is cancelled (its JSON); an ended one is deleted (None)."""
        return self._call("DELETE", f"/v1/jobs/{job_id}")

    def usage(self) -> dict:
        return self._call("GET", "/v1/usage")

    def results(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}/results")

    def health(self) -> dict:
        return self._call("GET", "/health")
