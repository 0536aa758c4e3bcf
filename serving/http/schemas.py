"""What every API of the server shares in its wire format: the error body (`ErrorResponse`, the same on every
route), the probes' answers, the base of the request bodies (`Strict`: unknown fields are refused with a 422,
which turns a misspelt option into an error instead of a silently ignored setting), and the generation fields
and token usage that the native and OpenAI-compatible APIs share, with the converters the routes use. Each
API's own bodies are in its folder's ``schemas`` (`native`, `openai`, `adapters`, `kserve`); together they
make ``/openapi.json`` what the server really accepts and returns."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from adamix_deploy.serving.engine.results import Finished

Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]
Stop = str | Annotated[list[str], Field(max_length=8)] | None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors -----------------------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int


class ErrorResponse(BaseModel):
    """Every error, on every route (the shape the OpenAI clients read)."""

    error: ErrorDetail


# -- health ----------------------------------------------------------------------------------------------
class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    ready: bool
    models: dict[str, bool]
    error: str | None = None


# -- generation (native and OpenAI-compatible) -------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def stop_list(stop: str | list[str] | None) -> list[str]:
    """A request's ``stop`` (one string, a list, or none) as a list."""
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def usage(finished: Finished) -> Usage:
    return usage_of(finished.prompt_tokens, finished.completion_tokens)


def usage_of(prompt: int, completion: int) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
