"""The demo's in-process backend: export folders run in this process by serving's runtime API (`ModelRuntime`),
so the page gets the server's limits and errors without HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.demo.backend import DemoError, Sampling
from adamix_deploy.serving.engine.results import Classification, Finished, TextDelta
from adamix_deploy.serving.engine.runtime import ModelRuntime, ServerSettings
from adamix_deploy.serving.engine.sampling import SamplingParams
from adamix_deploy.serving.errors import ServeError
from adamix_deploy.serving.http.server import check_folders
from adamix_deploy.serving.metrics import ServerMetrics


class InProcessBackend:
    def __init__(
        self, folders: list[str | Path], precision: str = "fp32", threads: int | None = None, gpu: bool = False
    ):
        models = check_folders([str(f) for f in folders], precision)  # one clear error for a broken folder
        settings = ServerSettings(threads=threads, gpu=gpu)
        metrics = ServerMetrics()
        self._runtimes = {m.name: ModelRuntime(m, settings, metrics) for m in models if not m.is_adapter_base}
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
        runtime = await self._runtime(name)
        try:
            results, _ = await runtime.classify([[text, pair] if pair else text])
        except ServeError as e:
            raise DemoError(e.message, e.status) from None
        return results[0]

    async def generate_stream(self, name: str, prompt: str, sampling: Sampling) -> AsyncIterator[str | Finished]:
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
