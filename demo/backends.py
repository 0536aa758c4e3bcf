"""Where the demo's answers come from, behind one small interface:

* `InProcessBackend`: export folders run in this process by `serving.runtime.ModelRuntime`, the code the server
  runs (same limits, same errors), without HTTP;
* `HTTPBackend`: a running ``adamix-serve``, over its HTTP API.

Both raise `DemoError` with one readable line; the page shows it as is.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import httpx

from adamix_deploy.errors import AdamixError
from serving.results import Classification, Finished


class DemoError(AdamixError):
    """A request the demo could not answer; the message is what the user sees."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k cut
    seed: int | None = None  # None: a random seed per request


class Backend(Protocol):
    description: str

    def models(self) -> list[dict]:
        """Model cards (``GET /v1/models`` entries), known at start-up."""

    async def card(self, name: str) -> dict:
        """The current card of one model (providers are known once it is loaded)."""

    async def classify(self, name: str, text: str, pair: str | None = None) -> Classification: ...

    def generate_stream(self, name: str, prompt: str, sampling: Sampling) -> AsyncIterator[str | Finished]:
        """Text pieces as they are decoded, then one `Finished`."""


# -- in-process ------------------------------------------------------------------------------------------------
class InProcessBackend:
    def __init__(
        self, folders: list[str | Path], precision: str = "fp32", threads: int | None = None, gpu: bool = False
    ):
        # Imported here so client mode never loads onnxruntime.
        from serving.metrics import ServerMetrics
        from serving.runtime import ModelRuntime, ServerSettings
        from serving.server import check_folders

        models = check_folders([str(f) for f in folders], precision)  # one clear error for a broken folder
        settings = ServerSettings(threads=threads, gpu=gpu)
        metrics = ServerMetrics()
        self._runtimes = {m.name: ModelRuntime(m, settings, metrics) for m in models}
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.description = "in-process: ONNX Runtime in this process, no server"

    def models(self) -> list[dict]:
        return [r.model.public_card() for r in self._runtimes.values()]

    async def start(self) -> None:
        """Load every model, once, on the running loop.

        The runtimes' schedulers (the classification batcher's task, the generation engine's callbacks) belong
        to the loop they were started on, and Gradio serves its handlers on its own loop in its own thread:
        starting them anywhere else (at import, in a startup thread, in ``asyncio.run``) would leave requests
        waiting on a loop that never runs. So they start lazily from the first handler, and a call from any
        other loop is refused instead of hanging."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop, self._lock = loop, asyncio.Lock()
        elif self._loop is not loop:
            raise RuntimeError(
                "the in-process models were started on another event loop; they serve only that one"
            )
        async with self._lock:
            for runtime in self._runtimes.values():
                if not runtime.ready:
                    try:
                        await runtime.start()
                    except AdamixError as e:
                        raise DemoError(str(e)) from None

    async def stop(self) -> None:
        for runtime in self._runtimes.values():
            await runtime.stop()

    async def _runtime(self, name: str):
        runtime = self._runtimes.get(name)
        if runtime is None:
            raise DemoError(f"no model named {name!r}; this demo has {', '.join(self._runtimes)}", 404)
        await self.start()
        return runtime

    async def card(self, name: str) -> dict:
        return (await self._runtime(name)).model.public_card()

    async def classify(self, name: str, text: str, pair: str | None = None) -> Classification:
        from serving.errors import ServeError

        runtime = await self._runtime(name)
        try:
            results, _ = await runtime.classify([[text, pair] if pair else text])
        except ServeError as e:
            raise DemoError(e.message, e.status) from None
        return results[0]

    async def generate_stream(self, name: str, prompt: str, sampling: Sampling) -> AsyncIterator[str | Finished]:
        from serving.errors import ServeError
        from serving.generation import TextDelta
        from serving.sampling import SamplingParams

        runtime = await self._runtime(name)
        params = SamplingParams(sampling.temperature, sampling.top_p, sampling.top_k)
        try:
            ids = runtime.encode_prompt(prompt, True, sampling.max_new_tokens, False)
            # aclosing: when the page goes away mid-stream, the engine row is freed at once
            async with aclosing(runtime.generate(ids, sampling.max_new_tokens, params, sampling.seed)) as events:
                async for event in events:
                    yield event.text if isinstance(event, TextDelta) else event
        except ServeError as e:
            raise DemoError(e.message, e.status) from None


# -- client of adamix-serve --------------------------------------------------------------------------------------
class HTTPBackend:
    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 120.0):
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # the server answers 504 on its own request timeout; this one only covers a server that went silent
        self._timeout = httpx.Timeout(timeout_s, connect=5.0)
        self._cards: list[dict] | None = None
        self.description = f"client of adamix-serve at {self.url}"

    def models(self) -> list[dict]:
        if self._cards is None:
            try:
                response = httpx.get(f"{self.url}/v1/models", headers=self._headers, timeout=self._timeout)
            except httpx.HTTPError as e:
                raise self._transport_error(e) from None
            self._cards = self._json(response)["data"]
        return self._cards

    async def card(self, name: str) -> dict:
        async with self._client() as client:
            data = self._json(await self._send(client.get(f"{self.url}/v1/models")))["data"]
        for card in data:
            if card["id"] == name:
                return card
        raise DemoError(f"the server no longer serves a model named {name!r}", 404)

    async def classify(self, name: str, text: str, pair: str | None = None) -> Classification:
        body = {"inputs": [[text, pair] if pair else text]}
        async with self._client() as client:
            response = await self._send(client.post(f"{self.url}/v1/models/{quote(name)}/classify", json=body))
        result = self._json(response)["results"][0]
        return Classification(result["label"], result["scores"])

    async def generate_stream(self, name: str, prompt: str, sampling: Sampling) -> AsyncIterator[str | Finished]:
        body = {
            "prompt": prompt, "max_new_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
            "top_p": sampling.top_p, "top_k": sampling.top_k, "seed": sampling.seed, "stream": True,
        }  # fmt: skip
        url = f"{self.url}/v1/models/{quote(name)}/generate"
        try:
            async with self._client() as client, client.stream("POST", url, json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    self._json(response)  # raises the server's message
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    payload = line[len("data: ") :]
                    if payload == "[DONE]":
                        return
                    event = json.loads(payload)
                    if "error" in event:  # an error after the stream began
                        raise DemoError(_error_text(event["error"].get("code"), event["error"].get("message")))
                    if event.get("finish_reason"):
                        usage = event.get("usage") or {}
                        yield Finished(
                            event["finish_reason"],
                            usage.get("prompt_tokens", 0),
                            usage.get("completion_tokens", 0),
                        )
                    elif event.get("text"):
                        yield event["text"]
        except httpx.HTTPError as e:
            raise self._transport_error(e) from None
        raise DemoError(f"the stream from {self.url} ended without [DONE] (did the server stop?)", 502)

    def _client(self) -> httpx.AsyncClient:
        # one client per request: an AsyncClient's connections belong to the loop that opened them
        return httpx.AsyncClient(headers=self._headers, timeout=self._timeout)

    async def _send(self, request) -> httpx.Response:
        try:
            return await request
        except httpx.HTTPError as e:
            raise self._transport_error(e) from None

    def _transport_error(self, e: httpx.HTTPError) -> DemoError:
        if isinstance(e, httpx.ConnectError):
            return DemoError(f"cannot reach adamix-serve at {self.url} (connection refused); is it running?", 503)
        if isinstance(e, httpx.TimeoutException):
            return DemoError(f"adamix-serve at {self.url} did not answer in time ({type(e).__name__})", 504)
        return DemoError(f"talking to adamix-serve at {self.url} failed: {type(e).__name__}: {e}", 502)

    def _json(self, response: httpx.Response) -> dict:
        """The body of a success; for an error status, `DemoError` with the server's own message."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            message = error.get("message") if isinstance(error, dict) else (response.text.strip()[:200] or None)
            raise DemoError(_error_text(response.status_code, message), response.status_code)
        if not isinstance(body, dict):
            raise DemoError(f"{response.url} did not answer with JSON; is {self.url} an adamix-serve?", 502)
        return body


_STATUS_WORDS = {
    401: "missing or wrong API key",
    404: "not found",
    413: "request too large",
    422: "request refused",
    429: "server busy",
    503: "not ready",
    504: "timed out",
}


def _error_text(status: int | None, message: str | None) -> str:
    """``adamix-serve: HTTP 422 (request refused): <the server's message>``"""
    words = _STATUS_WORDS.get(status or 0, "error")
    return f"adamix-serve: HTTP {status} ({words}): {message or 'no message'}"
