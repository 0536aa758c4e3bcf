"""The demo's client backend: a running ``adamix-serve``, over its HTTP API. Imports neither onnxruntime nor
FastAPI (tested), so a demo host needs only `[demo]`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx

from adamix_deploy.demo.backend import DemoError, Sampling
from adamix_deploy.serving.engine.results import Classification, Finished


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
        return Classification(result.get("label"), result.get("scores"), result.get("score"))

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
