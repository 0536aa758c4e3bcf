"""Server-sent events for the streaming routes: `sse_response` turns a runtime's event iterator into a
``text/event-stream`` answer, `collect_text` drains one into a whole text for the non-streaming answers, and
`sse_doc` is the OpenAPI description of such a stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from fastapi.responses import StreamingResponse

from adamix_deploy.serving.engine.generation import Finished, TextDelta
from adamix_deploy.serving.errors import ServeError


def sse_doc(model: type) -> dict:
    """The `responses` entry for a route that answers JSON, or with ``stream`` a stream of `model` events."""
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


async def collect_text(events: AsyncIterator) -> tuple[str, Finished]:
    """The whole generated text and the closing `Finished` event."""
    pieces = []
    async for event in events:
        if isinstance(event, TextDelta):
            pieces.append(event.text)
        else:
            return "".join(pieces), event
    raise AssertionError("generation ended without Finished")


async def sse_response(events: AsyncIterator, frame: Callable) -> StreamingResponse:
    """Wait for the first event before answering, so a full queue (429) or a timeout before any text (504)
    is still a plain HTTP error; afterwards, an error becomes a final ``data: {"error": ...}`` event.
    `frame` maps an event to one JSON-able dict or a list of them, each sent as its own ``data:`` line."""
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
