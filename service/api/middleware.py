"""ASGI middleware: a request id on every answer (and a JSON 500 carrying it for an unexpected error);
request body size limits, enforced while the body streams in."""
from __future__ import annotations

import json
import logging
import uuid

from service.api.errors import error_body

log = logging.getLogger("geoadapt.api")


class RequestIds:
    """Give each request an id, sent back as X-Request-ID. An exception no handler took becomes a JSON 500
    with that id, and the log gets the traceback under the same id. Answering here, rather than letting
    the server see the exception, keeps the connection open: uvicorn closes it on an error raised after
    a response has started, and Starlette's own handler sends its 500 and then raises."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = uuid.uuid4().hex
        started = False

        async def send_with_id(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
                msg = {**msg, "headers": [*msg.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(msg)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unexpected error on %s %s (request id %s)", scope.get("method"), scope.get("path"),
                          request_id)
            if started:
                raise  # half an answer is out: nothing else can be said on this connection
            body = error_body("internal_error", [{"field": "", "message": (
                f"unexpected server error; the server's log has it under request id {request_id}")}])
            body["request_id"] = request_id
            await send_with_id({"type": "http.response.start", "status": 500,
                                "headers": [(b"content-type", b"application/json")]})
            await send_with_id({"type": "http.response.body", "body": json.dumps(body).encode()})


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
