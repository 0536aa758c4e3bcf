"""A loaded model behind its scheduler: the classification batcher or the generation engine.

The HTTP routes and the in-process demo both call `ModelRuntime.classify` and `ModelRuntime.generate`; limits
(token limits, the new-token cap, the queue, the timeout) are enforced here, so every caller gets the same
answers and the same errors (`ServeError`).

The adapters of a base with a multi-adapter graph (`model_folder`) share one `GenerationEngine`, built by the
first of their runtimes and stopped with the last: its rows name their adapter and each call gets the rows'
slots from the base's `AdapterStack`, so a step decodes every adapter's rows together.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from adamix_deploy.contracts.tasks import SEQUENCE_TASKS
from adamix_deploy.serving.engine.adapter_stack import AdapterStack
from adamix_deploy.serving.engine.batching import Batcher, BatcherFactory, ClassificationBatcher
from adamix_deploy.serving.engine.generation import GenerationEngine, GenerationJob, QueueFull
from adamix_deploy.serving.engine.model_folder import ServedModel
from adamix_deploy.serving.engine.results import (
    Classification,
    Failed,
    Finished,
    Generation,
    GenerationEvent,
    TextDelta,
)
from adamix_deploy.serving.engine.sampling import SamplingParams
from adamix_deploy.serving.engine.text import InputTooLong, encode_for_classification, softmax
from adamix_deploy.serving.errors import ServeError, queue_full, timed_out
from adamix_deploy.serving.metrics import ServerMetrics


@dataclass(frozen=True)
class ServerSettings:
    max_batch_size: int = 32
    max_batch_wait_ms: float = 0.0  # batches form from what arrives while the model is busy
    max_queue: int = 256
    request_timeout_s: float = 60.0
    max_body_bytes: int = 1 << 20
    max_inputs: int = 64  # inputs per classify request, prompts per generate request
    max_new_tokens: int = 512  # the cap on a request's max_new_tokens
    max_generation_batch: int = 8  # rows decoded together
    threads: int | None = None
    gpu: bool = False
    api_keys: tuple[str, ...] = ()


@dataclass
class _SharedEngine:
    engine: GenerationEngine
    users: set[str] = field(default_factory=set)  # the runtimes of the base's adapters on it


# a multi-adapter base's engine, by its stack (the base's, one per loaded base)
_SHARED_ENGINES: weakref.WeakKeyDictionary[AdapterStack, _SharedEngine] = weakref.WeakKeyDictionary()


class ModelRuntime:
    def __init__(
        self,
        model: ServedModel,
        settings: ServerSettings,
        metrics: ServerMetrics,
        make_batcher: BatcherFactory = ClassificationBatcher,
    ):
        """``make_batcher`` builds the classification scheduler (a Ray Serve replica passes its ``@serve.batch``
        one); limits, errors and timeouts stay here, so they are the same whichever batches."""
        self.model = model
        self.settings = settings
        self.metrics = metrics
        self.make_batcher = make_batcher
        self.batcher: Batcher | None = None
        self.engine: GenerationEngine | None = None
        self._in_flight = 0  # requests inside classify / generate: an unloaded adapter lets them finish
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def ready(self) -> bool:
        return self.batcher is not None or self.engine is not None

    async def start(self) -> None:
        """Open and warm the session off the event loop, then start the scheduler."""
        await asyncio.to_thread(self.model.load, self.settings.threads, self.settings.gpu)
        m, s, name = self.model, self.settings, self.model.name
        if m.task in SEQUENCE_TASKS:
            self.batcher = self.make_batcher(
                m.session, m.pad_token_id, s.max_batch_size, s.max_batch_wait_ms, s.max_queue, name,
                on_batch=self._record_batch, run_options=m.run_options,
            )  # fmt: skip
            self.batcher.start()
        elif m.adapter_stack is not None:
            self.engine = self._join_shared_engine(m.adapter_stack)
        else:
            self.engine = GenerationEngine(
                m.session, m.tokenizer, m.eos_token_ids, s.max_generation_batch, s.max_queue, name,
                on_step=self.metrics.batch_size.labels(name).observe,
                on_tokens=self.metrics.generated_tokens.labels(name).inc, run_options=m.run_options,
            )  # fmt: skip
            self.engine.start()
        self.metrics.queue_depth.labels(name).set_function(lambda: self.queue_depth)

    def _join_shared_engine(self, stack: AdapterStack) -> GenerationEngine:
        """The base's one engine, started by its first adapter; its batch-size and token metrics go under the
        base's name, since a step holds rows of several adapters."""
        shared = _SHARED_ENGINES.get(stack)
        if shared is None:
            m, s, base = self.model, self.settings, self.model.base.name
            engine = GenerationEngine(
                m.session, m.tokenizer, m.eos_token_ids, s.max_generation_batch, s.max_queue, base,
                on_step=self.metrics.batch_size.labels(base).observe,
                on_tokens=self.metrics.generated_tokens.labels(base).inc, row_inputs=stack.row_inputs,
            )  # fmt: skip
            engine.start()
            shared = _SHARED_ENGINES[stack] = _SharedEngine(engine)
        shared.users.add(self.name)
        return shared.engine

    async def _leave_shared_engine(self, stack: AdapterStack) -> None:
        """Stop the engine when this is its last adapter (it finishes every job first); else let this adapter's
        requests finish on it. Then free the adapter's slot: no row still reads it."""
        shared = _SHARED_ENGINES.get(stack)
        if shared is not None and shared.engine is self.engine:
            shared.users.discard(self.name)
            if shared.users:
                try:
                    await asyncio.wait_for(self._idle.wait(), self.settings.request_timeout_s)
                except TimeoutError:
                    pass  # a request still waiting has timed out by now: its rows are cancelled
            else:
                del _SHARED_ENGINES[stack]
                await asyncio.to_thread(self.engine.stop)
        self.model.unload()

    async def drain_and_stop(self, timeout_s: float) -> bool:
        """Stop once the requests already inside have finished (at most ``timeout_s``); the caller has stopped
        routing new ones here. Returns whether they all finished."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            drained = True
        except TimeoutError:
            drained = False
        await self.stop()
        return drained

    def _enter(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def stop(self) -> None:
        if self.batcher:
            await self.batcher.stop()
        if self.engine and self.model.adapter_stack is not None:
            await self._leave_shared_engine(self.model.adapter_stack)
        elif self.engine:
            await asyncio.to_thread(self.engine.stop)
        else:
            self.model.unload()  # loaded, then the scheduler failed to start: a slot to give back

    @property
    def queue_depth(self) -> int:
        scheduler = self.batcher or self.engine
        return scheduler.queue_depth if scheduler else 0

    def _record_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.labels(self.name).observe(size)
        self.metrics.inference.labels(self.name).observe(seconds)

    def check_task(self, *tasks: str) -> None:
        """Refuse a request for another task (422) or before the model is loaded (503)."""
        if self.model.task not in tasks:
            raise ServeError(
                422, f"model {self.name!r} is a {self.model.task} model, not a {' or '.join(tasks)} model"
            )
        if not self.ready:
            raise ServeError(503, f"model {self.name!r} is still loading", {"Retry-After": "1"})

    # -- classification -------------------------------------------------------------------------------------
    async def classify(self, inputs: list, truncate: bool = False) -> tuple[list[Classification], int]:
        """Label and per-label scores (regression: the score) for each input; also the number of input tokens."""
        self.check_task(*SEQUENCE_TASKS)
        self.check_count(len(inputs), "inputs")
        m = self.model
        try:
            items = encode_for_classification(m.tokenizer, m.truncating_tokenizer, inputs, m.max_tokens, truncate)
        except InputTooLong as e:
            raise ServeError(422, str(e)) from None
        self._enter()
        try:
            logits = await self.batcher.classify(items, self.settings.request_timeout_s)
        except QueueFull:
            raise queue_full(self.name) from None
        except TimeoutError:
            raise timed_out(self.name, self.settings.request_timeout_s) from None
        finally:
            self._leave()
        tokens = sum(len(item.ids) for item in items)
        return self._results(logits), tokens

    def _results(self, logits) -> list[Classification]:
        m = self.model
        if m.task == "regression":
            return [Classification(score=float(row[0])) for row in logits]
        labels = m.labels
        results = []
        for row in softmax(logits.astype("float64")):
            results.append(
                Classification(
                    labels[int(row.argmax())], {label: float(p) for label, p in zip(labels, row, strict=True)}
                )
            )
        return results

    # -- generation -------------------------------------------------------------------------------------------
    def encode_prompt(self, text: str, apply_template: bool, max_new_tokens: int, truncate: bool) -> list[int]:
        """Prompt ids, checked against the caps: prompt + new tokens must fit the model's positions."""
        self.check_task("generation")
        m = self.model
        if max_new_tokens > self.settings.max_new_tokens:
            raise ServeError(
                422,
                f"max_new_tokens is {max_new_tokens}; this server allows at most {self.settings.max_new_tokens}",
            )
        if apply_template and m.prompt_template:
            text = m.prompt_template.format(prompt=text)
        ids = m.tokenizer.encode(text).ids
        if not ids:
            raise ServeError(422, "the prompt is empty")
        room = m.max_tokens - max_new_tokens
        if len(ids) > room:
            if not truncate or room < 1:
                raise ServeError(
                    422,
                    f"the prompt is {len(ids)} tokens and {max_new_tokens} new tokens are asked for; this model "
                    f"takes at most {m.max_tokens} in all" + ('' if room < 1 else ' (send "truncate": true to keep the end)'),
                )  # fmt: skip
            ids = ids[-room:]
        return ids

    async def generate(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        params: SamplingParams,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> AsyncIterator[TextDelta | Finished]:
        """Text deltas, then one `Finished`. Queue full and a timeout before the first event raise
        `ServeError` before anything is yielded, so an HTTP stream can still answer 429 or 504."""
        self.check_task("generation")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[GenerationEvent] = asyncio.Queue()

        def emit(event: GenerationEvent) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is gone (shutdown): nobody is listening
                pass

        if seed is None and params.temperature > 0:
            seed = int.from_bytes(os.urandom(8), "little") >> 1
        adapter = self.name if self.model.adapter_stack is not None else None  # its slot in the shared engine
        job = GenerationJob(prompt_ids, max_new_tokens, params, seed, list(stop or []), emit, adapter=adapter)
        try:
            self.engine.submit(job)
        except QueueFull:
            raise queue_full(self.name) from None
        deadline = loop.time() + self.settings.request_timeout_s
        self._enter()
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), max(deadline - loop.time(), 0))
                except TimeoutError:
                    raise timed_out(self.name, self.settings.request_timeout_s) from None
                if isinstance(event, Failed):
                    raise ServeError(500, event.message)
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            job.cancelled.set()  # a no-op when finished; frees the row when the caller went away
            self._leave()

    async def generate_text(
        self, prompt_ids: list[int], max_new_tokens: int, params: SamplingParams, seed=None, stop=None
    ) -> Generation:
        pieces = []
        async for event in self.generate(prompt_ids, max_new_tokens, params, seed, stop):
            if isinstance(event, TextDelta):
                pieces.append(event.text)
            else:
                return Generation("".join(pieces), event.reason, event.prompt_tokens, event.completion_tokens)
        raise AssertionError("the engine ended a job without Finished")

    def check_count(self, count: int, what: str) -> None:
        """Refuse more inputs (or prompts) in one request than the server allows (422)."""
        if count > self.settings.max_inputs:
            raise ServeError(
                422, f"{count} {what} in one request; this server allows at most {self.settings.max_inputs}"
            )
