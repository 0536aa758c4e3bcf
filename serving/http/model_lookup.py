"""How a route finds the model a request names: `runtime_for` looks the name up among the runtimes on
`request.app.state` (404 otherwise) and labels the request for the metrics middleware. Every API's model
routes (native, OpenAI-compatible, KServe v2) use it, so an unknown name is the same 404 everywhere."""

from __future__ import annotations

from fastapi import Request

from adamix_deploy.serving.engine.runtime import ModelRuntime
from adamix_deploy.serving.errors import ServeError


def runtime_for(request: Request, name: str) -> ModelRuntime:
    """The runtime serving `name`, or a 404 `ServeError`."""
    runtime = request.app.state.runtimes.get(name)
    if runtime is None:
        raise ServeError(404, f"no model named {name!r}; GET /v1/models lists the served models")
    # BodyLimitAndMetrics labels its counters with this once the answer is sent
    request.state.model = name
    return runtime
