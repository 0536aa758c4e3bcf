"""The protocol's error body on the KServe v2 routes: `KServeErrorShape` (ASGI middleware) answers every error
under ``/v2`` with ``{"error": "message"}``, which KServe and Triton clients read, instead of the project's
``{"error": {"message", "type", "code"}}``; `kserve_error_docs` documents that body in the OpenAPI schema."""

from __future__ import annotations

import json

from adamix_deploy.serving.http.openapi import error_docs
from adamix_deploy.serving.kserve import schemas as k


def kserve_error_docs(*statuses: int) -> dict:
    """`error_docs` with the protocol's error body, which `KServeErrorShape` gives every error under /v2."""
    return {code: {**doc, "model": k.KServeError} for code, doc in error_docs(*statuses).items()}


class KServeErrorShape:
    """ASGI middleware: on every path under ``prefix`` (``/v2`` and ``/v2/...``, not ``/v2x``), rewrites the
    project's error body ``{"error": {"message", "type", "code"}}`` into the protocol's ``{"error": "message"}``,
    status and headers unchanged.

    A middleware rather than handlers in the routes, because some of these errors never reach a route: the 413
    of the body-limit middleware, Starlette's 405, and the 404 of a path that matches no route. That last one
    is why the whole prefix is covered and not only the routes' paths: clients of the protocol call paths this
    server does not serve, such as tritonclient's ``get_model_repository_index()`` (``POST
    /v2/repository/index``, Triton's model repository extension, which the server metadata does not list), and
    tritonclient can only raise a readable exception from a string ``error``. It must sit outside
    `BodyLimitAndMetrics`. The 413 sends its payload with ``more_body=True`` before draining the refused body,
    so a payload is rewritten as soon as it parses and the later (empty) messages pass through."""

    def __init__(self, app, prefix: str = "/v2") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == self.prefix or path.startswith(self.prefix + "/")):
            return await self.app(scope, receive, send)
        start: dict | None = None
        buffer = b""
        done = False

        async def reshape(message: dict) -> None:
            nonlocal start, buffer, done
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message  # held until the body is known: its content-length changes
                return
            if start is None or done:
                return await send(message)
            buffer += message.get("body", b"")
            more = message.get("more_body", False)
            payload = _protocol_error(buffer)
            if payload is None and more:
                return  # not all of the JSON yet
            payload = buffer if payload is None else payload
            headers = [(key, v) for key, v in start.get("headers", []) if key != b"content-length"]
            headers.append((b"content-length", str(len(payload)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": payload, "more_body": more})
            done = True

        await self.app(scope, receive, reshape)


def _protocol_error(payload: bytes) -> bytes | None:
    """The protocol's error body for a project error body; the payload as is when it is not one; None when
    it does not parse (yet)."""
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return json.dumps({"error": error["message"]}).encode()
    return payload
