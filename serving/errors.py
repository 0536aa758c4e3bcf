"""Errors the server answers with a status code and one readable line (JSON body: `error_body`, described in the
schema as `adamix_deploy.serving.http.schemas.ErrorResponse`). The engine's runtime raises them (limits, queue,
timeout) as the routes do, so this module imports no web framework."""

from __future__ import annotations

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class ServeError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.status, self.message)


def error_body(status: int, message: str) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "code": status}}


def queue_full(name: str, retry_after_s: int = 1) -> ServeError:
    return ServeError(
        429, f"model {name!r} is at its queue limit; retry shortly", {"Retry-After": str(retry_after_s)}
    )


def timed_out(name: str, seconds: float) -> ServeError:
    return ServeError(504, f"model {name!r} did not answer within the {seconds:g} s request timeout")
