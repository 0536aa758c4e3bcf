"""What the native and OpenAI-compatible route handlers share: `runtime_for` finds the named model's runtime
on `request.app.state` (404 otherwise) and labels the request for the metrics middleware, and small
converters from request and generation types to the wire schemas."""

from __future__ import annotations

from fastapi import Request

from adamix_deploy.serving import schemas as s
from adamix_deploy.serving.errors import ServeError
from adamix_deploy.serving.generation import Finished
from adamix_deploy.serving.runtime import ModelRuntime


def runtime_for(request: Request, name: str) -> ModelRuntime:
    """The runtime serving `name`, or a 404 `ServeError`."""
    runtime = request.app.state.runtimes.get(name)
    if runtime is None:
        raise ServeError(404, f"no model named {name!r}; GET /v1/models lists the served models")
    # BodyLimitAndMetrics labels its counters with this once the answer is sent
    request.state.model = name
    return runtime


def stop_list(stop: str | list[str] | None) -> list[str]:
    """A request's ``stop`` (one string, a list, or none) as a list."""
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def usage(finished: Finished) -> s.Usage:
    return usage_of(finished.prompt_tokens, finished.completion_tokens)


def usage_of(prompt: int, completion: int) -> s.Usage:
    return s.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
