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
sent), then the body is read and dropped until it ends or the client closes, and only then is the response
finished, which makes uvicorn close the connection cleanly (FIN, no RST), as nginx's lingering close does.

Like nginx's, the drain is bounded mainly by time: LINGER_SECONDS in all (nginx's ``lingering_time``) and
LINGER_IDLE_SECONDS without any byte (nginx's ``lingering_timeout``), so a stalled client is let go after the
idle bound and a trickling one after the total bound; LINGER_MAX_BYTES also caps what a fast client can make
the server read. Whichever bound comes first ends the drain, and the close then may be a reset: the client
was sending more than the bounds allow. A body announced (Content-Length) as larger than LINGER_MAX_BYTES is
not drained at all: the reset is certain then, and reading part of it would only cost time.
"""

from __future__ import annotations

import asyncio
import json
import time

from adamix_deploy.serving.errors import error_body
from adamix_deploy.serving.metrics import ServerMetrics

# The most an over-limit request may cost after its 413 (see the module docstring), whichever comes first:
# seconds in all (nginx's lingering_time default), seconds without a byte (nginx's lingering_timeout default:
# long enough for TCP retransmissions on a lossy link, short enough that a stalled client goes soon), and bytes
# read and dropped. The drained bytes cost CPU, not memory (uvicorn buffers at most 64 KiB of them), and over a
# slow link the time bound comes first (10 Mbit/s sends about 37 MB in 30 s); the byte cap is for fast links
# (loopback, LAN), where a client could otherwise make the server parse several GB within the time bound.
# 64 MiB is 64 times the default --max-body-bytes and covers the uploads a client of this API plausibly
# sends by mistake (a whole file, a batch far over --max-inputs: tens of MB); draining it over loopback
# takes well under a second. A bigger body is cut off and its sender may see a reset instead of the 413.
LINGER_SECONDS = 30.0
LINGER_IDLE_SECONDS = 5.0
LINGER_MAX_BYTES = 64 << 20


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
                await self.app(scope, replay_body(body, receive), send_and_record)
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
    """Read and drop the rest of a refused body until it ends or the client closes, within LINGER_SECONDS in
    all, LINGER_IDLE_SECONDS between messages and LINGER_MAX_BYTES."""
    deadline = time.monotonic() + LINGER_SECONDS
    dropped = 0
    while dropped < LINGER_MAX_BYTES:
        wait = min(LINGER_IDLE_SECONDS, deadline - time.monotonic())
        if wait <= 0:
            return  # a client that keeps sending, slowly: close anyway
        try:
            message = await asyncio.wait_for(receive(), wait)
        except TimeoutError:
            return  # a stalled client (or the total bound): close anyway
        if message["type"] != "http.request":
            return  # the client closed: nothing left to protect
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def replay_body(body: bytes, receive):
    """An ASGI ``receive`` that gives ``body`` whole once, then defers to ``receive``."""
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
