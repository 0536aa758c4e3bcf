"""The OpenAI-compatible routes, ``POST /v1/completions`` and ``POST /v1/chat/completions``, for the served
generation models: the same bodies and answers as OpenAI's API (including streaming chunks and
``stream_options.include_usage``), so the `openai` client and tools built on it work unchanged."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from adamix_deploy.serving.engine.generation import TextDelta
from adamix_deploy.serving.engine.sampling import SamplingParams
from adamix_deploy.serving.engine.text import render_chat
from adamix_deploy.serving.errors import ServeError
from adamix_deploy.serving.http.model_lookup import runtime_for
from adamix_deploy.serving.http.openapi import MODEL_ROUTE_ERRORS, error_docs
from adamix_deploy.serving.http.schemas import stop_list, usage
from adamix_deploy.serving.http.sse import collect_text, sse_doc, sse_response
from adamix_deploy.serving.openai import schemas as s

router = APIRouter(tags=["openai"])


@router.post(
    "/v1/completions",
    response_model=s.CompletionResponse,
    responses={**sse_doc(s.CompletionResponse), **error_docs(*MODEL_ROUTE_ERRORS)},
)
async def completions(body: s.CompletionRequest, request: Request) -> s.CompletionResponse | StreamingResponse:
    runtime = runtime_for(request, body.model)
    ids = runtime.encode_prompt(body.prompt, False, body.max_tokens, False)
    events = runtime.generate(
        ids, body.max_tokens, SamplingParams(body.temperature, body.top_p, body.top_k), body.seed, stop_list(body.stop)
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
            return [last, s.CompletionResponse(**meta, choices=[], usage=usage(event)).model_dump()]

        return await sse_response(events, frame)
    text, finished = await collect_text(events)
    return s.CompletionResponse(
        **meta, choices=[s.CompletionChoice(index=0, text=text, finish_reason=finished.reason)], usage=usage(finished)
    )  # fmt: skip


@router.post(
    "/v1/chat/completions",
    response_model=s.ChatResponse,
    responses={**sse_doc(s.ChatChunk), **error_docs(*MODEL_ROUTE_ERRORS)},
)
async def chat_completions(body: s.ChatRequest, request: Request) -> s.ChatResponse | StreamingResponse:
    runtime = runtime_for(request, body.model)
    runtime.check_task("generation")
    model = runtime.model
    messages = [{"role": m.role, "content": _message_text(m.content)} for m in body.messages]
    try:
        prompt = render_chat(messages, model.chat_template, model.prompt_template, model.special_tokens)
    except Exception as e:  # a chat template may raise on message orders it does not support
        raise ServeError(422, f"the model's chat template refused these messages: {e}") from None
    max_tokens = (
        body.max_completion_tokens or body.max_tokens or min(256, request.app.state.settings.max_new_tokens)
    )
    ids = runtime.encode_prompt(prompt, False, max_tokens, False)
    events = runtime.generate(
        ids, max_tokens, SamplingParams(body.temperature, body.top_p, body.top_k), body.seed, stop_list(body.stop)
    )  # fmt: skip
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        first = [True]

        def frame(event):
            frames = []
            # OpenAI's first chunk announces the role before any content
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
                    frames.append(s.ChatChunk(**meta, choices=[], usage=usage(event)))
            return [f.model_dump(exclude_none=True) for f in frames]

        return await sse_response(events, frame)
    text, finished = await collect_text(events)
    choice = s.ChatChoice(index=0, message=s.AssistantMessage(content=text), finish_reason=finished.reason)
    return s.ChatResponse(**meta, choices=[choice], usage=usage(finished))


def _message_text(content: str | list[s.TextPart]) -> str:
    """A chat message's text; OpenAI also allows a list of text parts."""
    return content if isinstance(content, str) else "".join(part.text for part in content)
