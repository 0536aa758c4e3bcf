"""The project's own model routes: ``GET /v1/models`` lists the served models, ``POST
/v1/models/{name}/classify`` labels a batch of texts, and ``POST /v1/models/{name}/generate`` completes one
prompt or several (JSON), or one prompt as server-sent events with ``stream: true``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from adamix_deploy.serving.engine.generation import TextDelta
from adamix_deploy.serving.engine.sampling import SamplingParams
from adamix_deploy.serving.errors import ServeError
from adamix_deploy.serving.http.model_lookup import runtime_for
from adamix_deploy.serving.http.openapi import MODEL_ROUTE_ERRORS, error_docs
from adamix_deploy.serving.http.schemas import stop_list, usage, usage_of
from adamix_deploy.serving.http.sse import sse_doc, sse_response
from adamix_deploy.serving.native import schemas as s

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=s.ModelList)
async def list_models(request: Request) -> s.ModelList:
    runtimes = request.app.state.runtimes
    return s.ModelList(data=[s.ModelCard(**r.model.public_card()) for r in runtimes.values()])


@router.post(
    "/v1/models/{name}/classify",
    response_model=s.ClassifyResponse,
    response_model_exclude_none=True,  # a classification result has no score, a regression result no label
    responses=error_docs(*MODEL_ROUTE_ERRORS),
)
async def classify(name: str, body: s.ClassifyRequest, request: Request) -> s.ClassifyResponse:
    runtime = runtime_for(request, name)
    results, tokens = await runtime.classify(body.inputs, body.truncate)
    return s.ClassifyResponse(
        model=name,
        results=[s.ClassifyResult(label=r.label, scores=r.scores, score=r.score) for r in results],
        usage=s.ClassifyUsage(input_tokens=tokens),
    )


@router.post(
    "/v1/models/{name}/generate",
    response_model=s.GenerateResponse,
    responses={**sse_doc(s.GenerateStreamEvent), **error_docs(*MODEL_ROUTE_ERRORS)},
)
async def generate(name: str, body: s.GenerateRequest, request: Request) -> s.GenerateResponse | StreamingResponse:
    runtime = runtime_for(request, name)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    runtime.check_count(len(prompts), "prompts")
    if body.stream and len(prompts) != 1:
        raise ServeError(422, "stream: true takes one prompt, not a list")
    ids = [runtime.encode_prompt(p, body.apply_template, body.max_new_tokens, body.truncate) for p in prompts]
    params = SamplingParams(body.temperature, body.top_p, body.top_k)
    stop = stop_list(body.stop)
    if body.stream:
        events = runtime.generate(ids[0], body.max_new_tokens, params, body.seed, stop)

        def frame(event) -> dict:
            if isinstance(event, TextDelta):
                return s.GenerateStreamEvent(text=event.text).model_dump(exclude_none=True)
            return s.GenerateStreamEvent(text="", finish_reason=event.reason, usage=usage(event)).model_dump()

        return await sse_response(events, frame)
    jobs = [runtime.generate_text(i, body.max_new_tokens, params, body.seed, stop) for i in ids]
    done = await _gather_all(jobs)
    outputs = [
        s.GenerateOutput(text=g.text, finish_reason=g.finish_reason, usage=usage_of(g.prompt_tokens, g.completion_tokens))
        for g in done
    ]  # fmt: skip
    total = usage_of(sum(g.prompt_tokens for g in done), sum(g.completion_tokens for g in done))
    return s.GenerateResponse(model=name, outputs=outputs, usage=total)


async def _gather_all(coroutines: list) -> list:
    """All results, or the first error after the others are cancelled (their rows are freed)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
