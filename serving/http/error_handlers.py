"""The exception handlers that give every error, ours or FastAPI's, the same JSON body (see
`adamix_deploy.serving.errors.error_body`): `ServeError`, request validation (always 422 with a one-line
message), Starlette's HTTP errors (404 for unknown paths, 405, an undecodable body) and anything unexpected
(500, details only in the log)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adamix_deploy.serving.errors import ServeError, error_body

log = logging.getLogger("adamix.serve")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServeError, _serve_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(error_body(422, _validation_message(exc.errors())), status_code=422)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400:  # FastAPI's answer to a body it cannot decode (not UTF-8): bad JSON, 422
        return JSONResponse(
            error_body(422, "the request body is not valid JSON (not UTF-8 text)"), status_code=422
        )
    return JSONResponse(
        error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path)
    return JSONResponse(error_body(500, "internal error; the server log has the details"), status_code=500)


def _validation_message(errors: list[dict]) -> str:
    """The first problem as ``field.path: message``, and how many more there are."""
    if not errors:
        return "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"
