"""The API-key check that guards every model route when the server was started with keys. A key comes as
``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; `create_app` attaches `require_api_key` to the model and
OpenAI routers only when `ServerSettings.api_keys` is set, so the probes never need one."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from adamix_deploy.serving.errors import ServeError

# auto_error=False: a missing key must be our 401 error body, not FastAPI's 403
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="or X-API-Key: KEY")


async def require_api_key(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    api_key: str | None = Depends(_header),
) -> None:
    """Raise a 401 `ServeError` unless the request carries one of the server's keys."""
    supplied = (credentials.credentials if credentials else api_key or "").encode()
    # compare against every key, each in constant time, so timing says nothing about which one nearly matched
    matched = False
    for key in request.app.state.settings.api_keys:
        matched |= hmac.compare_digest(supplied, key.encode())
    if not supplied or not matched:
        raise ServeError(401, "missing or wrong API key", {"WWW-Authenticate": "Bearer"})
