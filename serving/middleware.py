"""ASGI middleware in front of every route: the request body limit (413) and the request metrics.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, so streamed responses pass through untouched and the
latency histogram covers a stream up to its last byte.

Why a 413 lingers (reads and discards the body for a bounded while) before the connection closes:
a client that writes its whole body before reading the answer (urllib, most plain-socket code) otherwise
sees "connection reset by peer" instead of the 413. Closing a TCP socket whose receive buffer still holds
unread data, or receiving data after the close, makes the kernel send RST, and an RST makes the client's
kernel drop the 413 it had received but not yet read. With uvicorn (httptools protocol) that is exactly what
happens if the middleware just answers: reading is paused once 64 KiB of body are buffered (flow control's
HIGH_WATER_LIMIT), and as soon as the last response message is sent, a ``Connection: close`` response makes
uvicorn call ``transport.close()`` with the rest of the body unread. After that last message ``receive()``
only returns ``http.disconnect``, so the body cannot be drained *after* the response either. Dropping
``Connection: close`` would let uvicorn itself discard the body on a kept-alive connection, but with no
bound at all: a client could stream forever. So the 413 is sent first (status, headers and the whole JSON
payload with ``more_body=True``, so clients that read early see it at once and no ``100 Continue`` is ever
sent), the body is then read and dropped up to LINGER_MAX_BYTES or LINGER_SECONDS, whichever comes first,
and only then is the response finished, which makes uvicorn close the connection (nginx's lingering close).
A body announced (Content-Length) as larger than the bound is not drained at all: the reset is certain then,
and reading part of it would only cost time.
"""

from __future__ import annotations

import asyncio
import json
import time

from adamix_deploy.serving.errors import error_body
from adamix_deploy.serving.metrics import ServerMetrics

# The most an over-limit request may cost after its 413: bytes read and dropped, and seconds spent on it.
LINGER_MAX_BYTES = 4 << 20
LINGER_SECONDS = 2.0


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
            body, left = await self._read_body(scope, receive)
            if body is None:
                message = f"request body over the {self.max_body_bytes} byte limit"
                await _send_json(send_and_record, 413, message, more_body=True)
                if left is None or 0 < left <= LINGER_MAX_BYTES:  # 0: all read; a bigger one resets anyway
                    await _drain(receive)
                await send_and_record({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await self.app(scope, _replay(body, receive), send_and_record)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            model = (scope.get("state") or {}).get("model", "")
            self.metrics.requests.labels(path, model, str(status["code"])).inc()
            self.metrics.latency.labels(path, model).observe(time.perf_counter() - start)

    async def _read_body(self, scope, receive) -> tuple[bytes | None, int | None]:
        """The whole body, or None when it is over the limit (by its Content-Length or as it arrives); with
        it, how many body bytes are still to come when that is known (0 once the last message was read)."""
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                return None, int(value)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), 0  # disconnected: the app sees the disconnect on its next receive
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_body_bytes:
                return None, None if more else 0
            chunks.append(chunk)
        return b"".join(chunks), 0


async def _drain(receive) -> None:
    """Read and drop the rest of a refused body, within LINGER_MAX_BYTES and LINGER_SECONDS."""

    async def read() -> None:
        dropped = 0
        while dropped <= LINGER_MAX_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client closed: nothing left to protect
            dropped += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    try:
        await asyncio.wait_for(read(), LINGER_SECONDS)
    except asyncio.TimeoutError:
        pass  # a stalled or slow client: close anyway


def _replay(body: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls wait for the disconnect, as streaming responses expect

    return replayed


async def _send_json(send, status: int, message: str, more_body: bool = False) -> None:
    payload = json.dumps(error_body(status, message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if status == 413:
        headers.append((b"connection", b"close"))  # the unread rest of the body must not be parsed as a request
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": more_body})
