"""Continuous batching for text generation over an exported decoder with a key/value cache.

One engine thread per generation model, so a long generation never holds up classification (which runs on
its own thread) nor the event loop. At every step the engine
  1. admits waiting jobs (up to ``max_batch`` rows): each prompt is prefilled alone, unpadded, and joins the
     running batch as its last row;
  2. runs one decode step for all rows, each row with its own cache length (hence mask and positions), sampling
     settings and random generator, so a row's tokens do not depend on what else is in the batch;
  3. drops finished or cancelled rows from the cache.
Where the cache lives and how rows of different lengths share it is the `kv_cache`'s business (numpy arrays
padded on the graph's side, or preallocated buffers the builder graphs' attention writes in place); nothing
here differs between them. A model whose graph cannot be told each row's length (no ``attention_mask``, or a
left-padded one without ``position_ids``) runs one job at a time.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from adamix_deploy.serving.engine.cache_layout import CacheLayout
from adamix_deploy.serving.engine.kv_cache import open_cache
from adamix_deploy.serving.engine.results import Failed, Finished, GenerationEvent, TextDelta
from adamix_deploy.serving.engine.sampling import SamplingParams, next_token
from adamix_deploy.serving.engine.text import IncrementalDecoder

log = logging.getLogger("adamix.serve")


@dataclass
class GenerationJob:
    prompt_ids: list[int]
    max_new_tokens: int
    params: SamplingParams
    seed: int | None
    stop: list[str]
    emit: Callable[[GenerationEvent], None]  # called on the engine thread; must be thread-safe
    cancelled: threading.Event = field(default_factory=threading.Event)
    adapter: str | None = None  # on a multi-adapter base: the adapter this job's rows run with


class QueueFull(Exception):
    pass


class _Row:
    def __init__(self, job: GenerationJob, tokenizer: Tokenizer):
        self.job = job
        self.decoder = IncrementalDecoder(tokenizer, job.stop)
        self.rng = np.random.default_rng(job.seed)
        self.generated = 0
        self.last_token = -1
        self.length = len(job.prompt_ids)  # entries in this row's cache: also the position of last_token


class GenerationEngine:
    def __init__(
        self,
        session: ort.InferenceSession,
        tokenizer: Tokenizer,
        eos_token_ids: frozenset[int],
        max_batch: int,
        max_queue: int,
        name: str = "model",
        on_step: Callable[[int], None] | None = None,
        on_tokens: Callable[[int], None] | None = None,
        run_options: ort.RunOptions | None = None,
        row_inputs: Callable[[list[str | None]], dict[str, np.ndarray]] | None = None,
        shared_buffers: bool | None = None,
    ):
        """``run_options``: an onnxruntime LoRA adapter's, active for every row. ``row_inputs``: extra feeds of
        one call from the adapters of its rows in batch order (a multi-adapter base: `serving.adapters.stack`),
        so rows of different adapters share a step. ``shared_buffers``: the cache kind (`kv_cache.open_cache`;
        None picks the fastest the graph allows)."""
        layout = CacheLayout.of(session)
        self.session = session
        self.tokenizer = tokenizer
        self.eos = eos_token_ids
        self.can_pad = layout.can_pad
        self.max_batch = max_batch if self.can_pad else 1
        self.max_queue = max_queue
        self.on_step = on_step or (lambda batch_size: None)
        self.on_tokens = on_tokens or (lambda n: None)
        self.row_inputs = row_inputs
        self.cache = open_cache(session, self.max_batch, run_options, shared_buffers)
        self._pending: deque[GenerationJob] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._rows: list[_Row] = []  # in the cache's batch order
        self._thread = threading.Thread(target=self._loop, name=f"generate-{name}", daemon=True)

    # -- the side the HTTP handlers use ------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, job: GenerationJob) -> None:
        with self._cv:
            if len(self._pending) >= self.max_queue:
                raise QueueFull
            self._pending.append(job)
            self._cv.notify()

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def active(self) -> int:
        return len(self._rows)

    def stop(self, timeout: float | None = None) -> None:
        """Finish every admitted and queued job, then end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout)

    # -- the engine thread ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._rows and not self._stopping:
                    self._cv.wait()
                if self._stopping and not self._pending and not self._rows:
                    return
                admitted = []
                while self._pending and len(self._rows) + len(admitted) < self.max_batch:
                    admitted.append(self._pending.popleft())
            for job in admitted:
                # a failed admission ends that job only: the cache's batch changes only once a prefill succeeded
                self._guarded([job], lambda job=job: self._admit(job), drops_batch=False)
            if self._rows:
                self._guarded([r.job for r in self._rows], self._step, drops_batch=True)

    def _guarded(self, jobs: list[GenerationJob], work: Callable[[], None], drops_batch: bool) -> None:
        try:
            work()
        except Exception as e:  # an onnxruntime failure ends these jobs with an error, not the engine
            log.exception("generation failed")
            for job in jobs:
                job.emit(Failed(f"generation failed: {type(e).__name__}: {e}"))
            if drops_batch:  # a failed step leaves no usable cache: every row in it has been told
                self._rows = []
                self.cache.clear()

    def _extra(self, rows: list[GenerationJob]) -> dict[str, np.ndarray] | None:
        return self.row_inputs([job.adapter for job in rows]) if self.row_inputs else None

    def _admit(self, job: GenerationJob) -> None:
        if job.cancelled.is_set():
            return
        self.cache.reserve(len(job.prompt_ids) + job.max_new_tokens)
        logits = self.cache.prefill(job.prompt_ids, self._extra([job]))
        self.on_step(1)
        row = _Row(job, self.tokenizer)
        if self._accept(row, logits):
            return
        self.cache.join()
        self._rows.append(row)

    def _step(self) -> None:
        rows = self._rows
        lengths = np.asarray([r.length for r in rows], dtype=np.int64)
        tokens = np.asarray([r.last_token for r in rows], dtype=np.int64)
        logits = self.cache.step(tokens, lengths, self._extra([r.job for r in rows]))
        self.on_step(len(rows))
        for row in rows:
            row.length += 1  # last_token is in the cache now
        keep = [i for i, row in enumerate(rows) if not self._accept(row, logits[i])]
        self._rows = [rows[i] for i in keep]
        self.cache.keep(keep, [rows[i].length for i in keep])

    def _accept(self, row: _Row, logits: np.ndarray) -> bool:
        """Choose and emit the row's next token. True when the row is finished (or was cancelled)."""
        job = row.job
        if job.cancelled.is_set():
            return True
        token = next_token(logits.astype(np.float32), job.params, row.rng)
        if token in self.eos:
            return self._finish(row, "stop")
        row.generated += 1
        row.last_token = token
        self.on_tokens(1)
        delta, hit_stop = row.decoder.push(token)
        if delta:
            job.emit(TextDelta(delta))
        if hit_stop:
            return self._finish(row, "stop")
        if row.generated >= job.max_new_tokens:
            return self._finish(row, "length")
        return False

    def _finish(self, row: _Row, reason: str) -> bool:
        rest = row.decoder.flush()
        if rest:
            row.job.emit(TextDelta(rest))
        row.job.emit(Finished(reason, len(row.job.prompt_ids), row.generated))
        return True
