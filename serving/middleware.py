"""ASGI middleware in front of every route: the request body limit (413) and the request metrics.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, so streamed responses pass through untouched and the
latency histogram covers a stream up to its last byte.
"""

from __future__ import annotations

import json
import time

from adamix_deploy.serving.errors import error_body
from adamix_deploy.serving.metrics import ServerMetrics


class BodyLimitAndMetrics:
    def __init__(self, app, max_body_bytes: int, metrics: ServerMetrics):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            body = await self._read_body(scope, receive)
            if body is None:
                await _send_json(send_and_record, 413, f"request body over the {self.max_body_bytes} byte limit")
            else:
                await self.app(scope, _replay(body, receive), send_and_record)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            model = (scope.get("state") or {}).get("model", "")
            self.metrics.requests.labels(path, model, str(status["code"])).inc()
            self.metrics.latency.labels(path, model).observe(time.perf_counter() - start)

    async def _read_body(self, scope, receive) -> bytes | None:
        """The whole body, or None when it is over the limit (by its Content-Length or as it arrives)."""
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls wait for the disconnect, as streaming responses expect

    return replayed


async def _send_json(send, status: int, message: str) -> None:
    payload = json.dumps(error_body(status, message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if status == 413:
        headers.append((b"connection", b"close"))  # the unread rest of the body must not be parsed as a request
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
