"""Continuous batching for text generation over an exported decoder with a key/value cache.

One engine thread per generation model, so a long generation never holds up classification (which runs on
its own thread) nor the event loop. At every step the engine
  1. admits waiting jobs (up to ``max_batch`` rows): each prompt is prefilled alone, unpadded, and its cache is
     merged into the running batch by padding the shorter caches with zeros (masked out);
  2. runs one decode step for all rows, each row with its own cache length (hence mask and positions), sampling
     settings and random generator, so a row's tokens do not depend on what else is in the batch;
  3. drops finished or cancelled rows from the cache and trims cache columns no remaining row uses.
The side the padding goes (left for graphs exported from PyTorch, right for onnxruntime-genai builder graphs)
is the graph's `CacheLayout`; nothing else here differs between them. A model whose graph cannot be told each
row's length (no ``attention_mask``, or a left-padded one without ``position_ids``) runs one job at a time.
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
    ):
        """``run_options``: an onnxruntime LoRA adapter's. Every row of this engine runs with it: adapters
        sharing one base graph each have their own engine, so a step never mixes two adapters' rows."""
        inputs = {i.name: i for i in session.get_inputs()}
        self.session = session
        self.run_options = run_options
        self.tokenizer = tokenizer
        self.eos = eos_token_ids
        self.layout = CacheLayout.of(session)
        self.can_pad = self.layout.can_pad
        self.max_batch = max_batch if self.can_pad else 1
        self.max_queue = max_queue
        self.on_step = on_step or (lambda batch_size: None)
        self.on_tokens = on_tokens or (lambda n: None)
        self._inputs = inputs
        self._outputs = [o.name for o in session.get_outputs()]
        self._pending: deque[GenerationJob] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._rows: list[_Row] = []
        self._past: dict[str, np.ndarray] = {}  # the batch's cache: rows in self._rows' order, _width columns
        self._width = 0
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
                # a failed admission ends that job only: _admit changes the batch state only once it succeeded
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
                self._rows, self._past, self._width = [], {}, 0

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: v for k, v in feed.items() if k in self._inputs}
        return dict(zip(self._outputs, self.session.run(self._outputs, feed, self.run_options), strict=True))

    def _admit(self, job: GenerationJob) -> None:
        if job.cancelled.is_set():
            return
        layout, n = self.layout, len(job.prompt_ids)
        feed = {**layout.empty(), **layout.token_feed(np.asarray([job.prompt_ids], dtype=np.int64), [0], 0)}
        out = self._run(feed)
        self.on_step(1)
        row = _Row(job, self.tokenizer)
        if self._accept(row, out["logits"][0, -1]):
            return
        presents = layout.presents(out)
        if not self._rows:
            past, width = presents, n
        else:
            width = max(self._width, n)
            past = {
                k: np.concatenate([layout.pad(self._past[k], width), layout.pad(v, width)])
                for k, v in presents.items()
            }
        self._past, self._width = past, width
        self._rows.append(row)

    def _step(self) -> None:
        rows, layout = self._rows, self.layout
        lengths = np.asarray([r.length for r in rows], dtype=np.int64)
        ids = np.asarray([[r.last_token] for r in rows], dtype=np.int64)
        out = self._run({**layout.token_feed(ids, lengths, self._width), **self._past})
        self.on_step(len(rows))
        for row in rows:
            row.length += 1  # last_token is in the cache now
        keep = [i for i, row in enumerate(rows) if not self._accept(row, out["logits"][i, -1])]
        self._rows = [rows[i] for i in keep]
        if not keep:
            self._past, self._width = {}, 0
            return
        index = np.asarray(keep)
        self._width = max(rows[i].length for i in keep)  # columns only finished rows used are dropped
        self._past = {k: layout.trim(v[index], self._width) for k, v in layout.presents(out).items()}

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
