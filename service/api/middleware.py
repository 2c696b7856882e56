"""ASGI middleware: request body size limits, enforced while the body streams in."""
from __future__ import annotations

import json

from service.api.errors import error_body


class BodySizeLimit:
    """413 before reading when Content-Length is too big; stop reading once a streamed body is."""

    def __init__(self, app, *, default: int, upload: int, upload_paths: tuple[str, ...]):
        self.app = app
        self.default = default
        self.upload = upload
        self.upload_paths = upload_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload if scope["path"] in self.upload_paths else self.default
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    too_big = int(v) > limit
                except ValueError:
                    too_big = False
                if too_big:
                    return await _reject(send, limit)
        seen = 0
        started = tripped = False

        async def counting_receive():
            nonlocal seen, tripped
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    tripped = True
                    raise _TooLarge()
            return msg

        async def tracking_send(msg):
            nonlocal started
            if tripped:
                # a parser swallowed _TooLarge (multipart: "error parsing the body", a 400): answer 413
                if msg["type"] == "http.response.start" and not started:
                    started = True
                    await _reject(send, limit)
                return
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                started = True
                await _reject(send, limit)


class _TooLarge(Exception):
    pass


async def _reject(send, limit: int) -> None:
    body = json.dumps(error_body("payload_too_large", [{"field": "", "message": f"request body over {limit} bytes"}]))
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body.encode()})
