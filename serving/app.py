"""The HTTP application: routes, authentication and error answers. Scheduling and limits live in
`adamix_deploy.serving.runtime`; the wire format in `adamix_deploy.serving.schemas`."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from adamix_deploy.serving import schemas as s
from adamix_deploy.serving.errors import ServeError, error_body
from adamix_deploy.serving.generation import Finished, TextDelta
from adamix_deploy.serving.metrics import ServerMetrics
from adamix_deploy.serving.middleware import BodyLimitAndMetrics
from adamix_deploy.serving.model_folder import ServedModel
from adamix_deploy.serving.runtime import ModelRuntime, ServerSettings
from adamix_deploy.serving.sampling import SamplingParams
from adamix_deploy.serving.text import render_chat

log = logging.getLogger("adamix.serve")

_ERROR_STATUSES = {
    401: "Missing or wrong API key (only when the server has keys).",
    404: "No model of that name.",
    413: "Request body over the size limit.",
    422: "Malformed JSON, wrong types, or over a limit (inputs, tokens, max_new_tokens).",
    429: "The model's queue is full; see Retry-After.",
    503: "The model is still loading.",
    504: "The request timed out.",
}


def _errors(*statuses: int) -> dict:
    return {code: {"model": s.ErrorResponse, "description": _ERROR_STATUSES[code]} for code in statuses}


def _sse_doc(model: type) -> dict:
    return {
        200: {
            "description": f"JSON; with stream, server-sent events: `data: <{model.__name__} as JSON>` lines, "
            "then `data: [DONE]`",
            "content": {
                "text/event-stream": {
                    # one schema per event, as SSE-aware tools (schemathesis) read it
                    "schema": {
                        "type": "object",
                        "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
                    },
                    "example": "data: {...}\n\n",
                }
            },
        }
    }


def create_app(
    models: list[ServedModel],
    settings: ServerSettings,
    on_load_failure: Callable[[str], None] | None = None,
) -> FastAPI:
    metrics = ServerMetrics()
    runtimes = {m.name: ModelRuntime(m, settings, metrics) for m in models}
    load_error: list[str] = []

    async def load_all() -> None:
        try:
            for runtime in runtimes.values():
                await runtime.start()
        except Exception as e:
            message = str(e)
            load_error.append(message)
            log.error("failed to load: %s", message)
            if on_load_failure:
                on_load_failure(message)
            return
        metrics.ready.set(1)
        log.info("ready: %s", ", ".join(runtimes))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Models load after the port opens, so /health answers at once and /ready says when they are up.
        loader = asyncio.create_task(load_all())
        yield
        loader.cancel()
        await asyncio.gather(loader, return_exceptions=True)
        for runtime in runtimes.values():
            await runtime.stop()

    app = FastAPI(
        title="adamix-serve",
        version="1",
        summary="Merged AdaMix models from adamix-export folders, on ONNX Runtime.",
        lifespan=lifespan,
    )
    app.state.runtimes = runtimes
    app.state.metrics = metrics
    app.add_middleware(BodyLimitAndMetrics, max_body_bytes=settings.max_body_bytes, metrics=metrics)
    _install_error_handlers(app)
    auth = [Depends(_api_key_check(settings.api_keys))] if settings.api_keys else []
    auth_errors = (401,) if settings.api_keys else ()

    def runtime_for(name: str, request: Request) -> ModelRuntime:
        runtime = runtimes.get(name)
        if runtime is None:
            raise ServeError(404, f"no model named {name!r}; GET /v1/models lists the served models")
        request.state.model = name
        return runtime

    # -- probes and metrics (no key: load balancers and Prometheus call these) ----------------------------
    @app.get("/health", response_model=s.HealthResponse, tags=["probes"])
    async def health() -> s.HealthResponse:
        return s.HealthResponse()

    @app.get("/ready", response_model=s.ReadyResponse, tags=["probes"],
             responses={503: {"model": s.ReadyResponse, "description": "Still loading, or loading failed."}})  # fmt: skip
    async def ready() -> JSONResponse:
        body = s.ReadyResponse(
            ready=all(r.ready for r in runtimes.values()) and not load_error,
            models={name: r.ready for name, r in runtimes.items()},
            error=load_error[0] if load_error else None,
        )
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    @app.get("/metrics", tags=["probes"], response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})  # fmt: skip
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # -- the project's own routes -----------------------------------------------------------------------------
    @app.get(
        "/v1/models",
        response_model=s.ModelList,
        dependencies=auth,
        responses=_errors(*auth_errors),
        tags=["models"],
    )
    async def list_models() -> s.ModelList:
        return s.ModelList(data=[s.ModelCard(**r.model.public_card()) for r in runtimes.values()])

    @app.post(
        "/v1/models/{name}/classify", response_model=s.ClassifyResponse, dependencies=auth, tags=["models"],
        responses=_errors(*auth_errors, 404, 413, 422, 429, 503, 504),
    )  # fmt: skip
    async def classify(name: str, body: s.ClassifyRequest, request: Request) -> s.ClassifyResponse:
        runtime = runtime_for(name, request)
        results, tokens = await runtime.classify(body.inputs, body.truncate)
        return s.ClassifyResponse(
            model=name,
            results=[s.ClassifyResult(label=r.label, scores=r.scores) for r in results],
            usage=s.ClassifyUsage(input_tokens=tokens),
        )

    @app.post(
        "/v1/models/{name}/generate", response_model=s.GenerateResponse, dependencies=auth, tags=["models"],
        responses={**_sse_doc(s.GenerateStreamEvent), **_errors(*auth_errors, 404, 413, 422, 429, 503, 504)},
    )  # fmt: skip
    async def generate(name: str, body: s.GenerateRequest, request: Request):
        runtime = runtime_for(name, request)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        runtime.check_count(len(prompts), "prompts")
        if body.stream and len(prompts) != 1:
            raise ServeError(422, "stream: true takes one prompt, not a list")
        ids = [runtime.encode_prompt(p, body.apply_template, body.max_new_tokens, body.truncate) for p in prompts]
        params = SamplingParams(body.temperature, body.top_p, body.top_k)
        stop = _stop_list(body.stop)
        if body.stream:
            events = runtime.generate(ids[0], body.max_new_tokens, params, body.seed, stop)

            def frame(event) -> dict:
                if isinstance(event, TextDelta):
                    return s.GenerateStreamEvent(text=event.text).model_dump(exclude_none=True)
                return s.GenerateStreamEvent(text="", finish_reason=event.reason, usage=_usage(event)).model_dump()

            return await _stream(events, frame)
        jobs = [runtime.generate_text(i, body.max_new_tokens, params, body.seed, stop) for i in ids]
        done = await _gather_all(jobs)
        outputs = [
            s.GenerateOutput(text=g.text, finish_reason=g.finish_reason, usage=_usage_of(g.prompt_tokens, g.completion_tokens))
            for g in done
        ]  # fmt: skip
        total = _usage_of(sum(g.prompt_tokens for g in done), sum(g.completion_tokens for g in done))
        return s.GenerateResponse(model=name, outputs=outputs, usage=total)

    # -- OpenAI-compatible routes ---------------------------------------------------------------------------
    @app.post(
        "/v1/completions", response_model=s.CompletionResponse, dependencies=auth, tags=["openai"],
        responses={**_sse_doc(s.CompletionResponse), **_errors(*auth_errors, 404, 413, 422, 429, 503, 504)},
    )  # fmt: skip
    async def completions(body: s.CompletionRequest, request: Request):
        runtime = runtime_for(body.model, request)
        ids = runtime.encode_prompt(body.prompt, False, body.max_tokens, False)
        events = runtime.generate(
            ids, body.max_tokens, SamplingParams(body.temperature, body.top_p, body.top_k), body.seed, _stop_list(body.stop)
        )  # fmt: skip
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            def frame(event):
                if isinstance(event, TextDelta):
                    return s.CompletionResponse(
                        **meta, choices=[s.CompletionChoice(index=0, text=event.text, finish_reason=None)]
                    ).model_dump()
                last = s.CompletionResponse(
                    **meta, choices=[s.CompletionChoice(index=0, text="", finish_reason=event.reason)]
                ).model_dump()
                if not include_usage:
                    return last
                return [last, s.CompletionResponse(**meta, choices=[], usage=_usage(event)).model_dump()]

            return await _stream(events, frame)
        text, finished = await _collect(events)
        return s.CompletionResponse(
            **meta, choices=[s.CompletionChoice(index=0, text=text, finish_reason=finished.reason)], usage=_usage(finished)
        )  # fmt: skip

    @app.post(
        "/v1/chat/completions", response_model=s.ChatResponse, dependencies=auth, tags=["openai"],
        responses={**_sse_doc(s.ChatChunk), **_errors(*auth_errors, 404, 413, 422, 429, 503, 504)},
    )  # fmt: skip
    async def chat_completions(body: s.ChatRequest, request: Request):
        runtime = runtime_for(body.model, request)
        runtime.check_task("generation")
        model = runtime.model
        messages = [{"role": m.role, "content": _message_text(m.content)} for m in body.messages]
        try:
            prompt = render_chat(messages, model.chat_template, model.prompt_template, model.special_tokens)
        except Exception as e:  # a chat template may raise on message orders it does not support
            raise ServeError(422, f"the model's chat template refused these messages: {e}") from None
        max_tokens = body.max_completion_tokens or body.max_tokens or min(256, settings.max_new_tokens)
        ids = runtime.encode_prompt(prompt, False, max_tokens, False)
        events = runtime.generate(
            ids, max_tokens, SamplingParams(body.temperature, body.top_p, body.top_k), body.seed, _stop_list(body.stop)
        )  # fmt: skip
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            first = [True]

            def frame(event):
                frames = []
                if first[0]:
                    first[0] = False
                    delta = s.ChatDelta(role="assistant", content="")
                    frames.append(
                        s.ChatChunk(**meta, choices=[s.ChatChunkChoice(index=0, delta=delta, finish_reason=None)])
                    )
                if isinstance(event, TextDelta):
                    delta = s.ChatDelta(content=event.text)
                    frames.append(
                        s.ChatChunk(**meta, choices=[s.ChatChunkChoice(index=0, delta=delta, finish_reason=None)])
                    )
                else:
                    end = s.ChatChunkChoice(index=0, delta=s.ChatDelta(), finish_reason=event.reason)
                    frames.append(s.ChatChunk(**meta, choices=[end]))
                    if include_usage:
                        frames.append(s.ChatChunk(**meta, choices=[], usage=_usage(event)))
                return [f.model_dump(exclude_none=True) for f in frames]

            return await _stream(events, frame)
        text, finished = await _collect(events)
        choice = s.ChatChoice(index=0, message=s.AssistantMessage(content=text), finish_reason=finished.reason)
        return s.ChatResponse(**meta, choices=[choice], usage=_usage(finished))

    app.openapi = lambda: _openapi_with_model_names(app, runtimes, settings)
    return app


def _openapi_with_model_names(app: FastAPI, runtimes: dict[str, ModelRuntime], settings: ServerSettings) -> dict:
    """The generated schema, with what this server was started with: the served model names as enums (`name`
    in the classify and generate paths, `model` in the OpenAI bodies; other names are 404) and the limits
    (inputs per request, the new-token cap). Clients and fuzzers then know which values exist."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    names = {
        task: [n for n, r in runtimes.items() if r.model.task == task] for task in ("classification", "generation")
    }
    for path, operations in schema["paths"].items():
        task = "classification" if path.endswith("/classify") else "generation"
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] == "name" and names[task]:
                    parameter["schema"]["enum"] = names[task]
    for body in ("CompletionRequest", "ChatRequest"):
        if names["generation"]:
            schema["components"]["schemas"][body]["properties"]["model"]["enum"] = names["generation"]
    bodies = schema["components"]["schemas"]
    for body, field in [("GenerateRequest", "max_new_tokens"), ("CompletionRequest", "max_tokens")]:
        bodies[body]["properties"][field]["maximum"] = settings.max_new_tokens
    for field in ("max_tokens", "max_completion_tokens"):
        for option in bodies["ChatRequest"]["properties"][field]["anyOf"]:
            if option.get("type") == "integer":
                option["maximum"] = settings.max_new_tokens
    bodies["ClassifyRequest"]["properties"]["inputs"]["maxItems"] = settings.max_inputs
    for option in bodies["GenerateRequest"]["properties"]["prompt"]["anyOf"]:
        if option.get("type") == "array":
            option["maxItems"] = settings.max_inputs
    app.openapi_schema = schema
    return schema


# -- helpers -------------------------------------------------------------------------------------------------
def _api_key_check(keys: tuple[str, ...]) -> Callable:
    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="or X-API-Key: KEY")
    encoded = [k.encode() for k in keys]

    async def check(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer), api_key: str | None = Depends(header)
    ) -> None:
        supplied = (credentials.credentials if credentials else api_key or "").encode()
        # compare against every key, each in constant time, so timing says nothing about which one nearly matched
        matched = False
        for key in encoded:
            matched |= hmac.compare_digest(supplied, key)
        if not supplied or not matched:
            raise ServeError(401, "missing or wrong API key", {"WWW-Authenticate": "Bearer"})

    return check


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(422, _validation_message(exc.errors())), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's answer to a body it cannot decode (not UTF-8): bad JSON, 422
            return JSONResponse(
                error_body(422, "the request body is not valid JSON (not UTF-8 text)"), status_code=422
            )
        return JSONResponse(
            error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse(error_body(500, "internal error; the server log has the details"), status_code=500)


def _validation_message(errors: list[dict]) -> str:
    if not errors:
        return "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


def _stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _message_text(content: str | list[s.TextPart]) -> str:
    return content if isinstance(content, str) else "".join(part.text for part in content)


def _usage(finished: Finished) -> s.Usage:
    return _usage_of(finished.prompt_tokens, finished.completion_tokens)


def _usage_of(prompt: int, completion: int) -> s.Usage:
    return s.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


async def _collect(events: AsyncIterator) -> tuple[str, Finished]:
    pieces = []
    async for event in events:
        if isinstance(event, TextDelta):
            pieces.append(event.text)
        else:
            return "".join(pieces), event
    raise AssertionError("generation ended without Finished")


async def _gather_all(coroutines: list) -> list:
    """All results, or the first error after the others are cancelled (their rows are freed)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def _stream(events: AsyncIterator, frame: Callable) -> StreamingResponse:
    """Wait for the first event before answering, so a full queue (429) or a timeout before any text (504)
    is still a plain HTTP error; afterwards, an error becomes a final ``data: {"error": ...}`` event."""
    try:
        first = await anext(events)
    except StopAsyncIteration:
        raise AssertionError("generation ended without Finished") from None

    def lines(event) -> str:
        framed = frame(event)
        framed = framed if isinstance(framed, list) else [framed]
        return "".join(f"data: {json.dumps(f)}\n\n" for f in framed)

    async def body():
        try:
            yield lines(first)
            async for event in events:
                yield lines(event)
            yield "data: [DONE]\n\n"
        except ServeError as e:
            yield f"data: {json.dumps(e.body())}\n\n"
        finally:
            await events.aclose()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)
