"""Run exported models with onnxruntime and numpy only (no torch): classification and greedy decoding
with the key/value cache (left- or right-padded: `cache_layout`). The export's parity check runs this same code,
so what is verified is what serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from adamix_deploy.serving.engine.cache_layout import CacheLayout
from adamix_deploy.serving.engine.kv_cache import open_cache


def open_session(
    path: str | Path, threads: int | None = None, providers: list[str] | None = None
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def input_names(session: ort.InferenceSession) -> set[str]:
    return {i.name for i in session.get_inputs()}


class ActiveAdapter:
    """An onnxruntime LoRA adapter (`.onnx_adapter`) loaded from its file, and run options that make it active.
    The options keep only a pointer to the adapter: this object must outlive every run that uses them."""

    def __init__(self, path: str | Path) -> None:
        self.adapter = ort.LoraAdapter()
        self.adapter.Load(str(path))
        self.run_options = ort.RunOptions()
        self.run_options.add_active_adapter(self.adapter)


def classify_logits(
    session: ort.InferenceSession, encoded: dict[str, np.ndarray], run_options: ort.RunOptions | None = None
) -> np.ndarray:
    """Logits for a tokenised batch (numpy int64 arrays); tokenizer outputs the graph lacks are dropped."""
    names = input_names(session)
    feed = {k: np.asarray(v, dtype=np.int64) for k, v in encoded.items() if k in names}
    return session.run(["logits"], feed, run_options)[0]


def empty_cache(session: ort.InferenceSession) -> dict[str, np.ndarray]:
    """The key/value cache inputs of one sequence before its first token: (1, kv_heads, 0, head_dim) each."""
    return CacheLayout.of(session).empty()


def greedy_generate(
    session: ort.InferenceSession,
    prompt_ids: list[int],
    max_new_tokens: int,
    eos_token_id: int | None,
    run_options: ort.RunOptions | None = None,
    shared_buffers: bool | None = None,
    extra: dict[str, np.ndarray] | None = None,
) -> tuple[list[int], np.ndarray]:
    """Greedy decoding of one prompt with the exported key/value cache, through the cache the server uses
    (`kv_cache.open_cache`; ``shared_buffers`` forces one kind). ``extra``: feeds of every call (a multi-adapter
    graph's adapter index and stacks). Returns the new token ids (up to and excluding eos) and the logits of the
    first step (for parity checks)."""
    cache = open_cache(session, 1, run_options, shared_buffers)
    cache.reserve(len(prompt_ids) + max_new_tokens)
    logits = cache.prefill(prompt_ids, extra).astype(np.float32)
    cache.join()
    first_logits, length = logits, len(prompt_ids)
    generated: list[int] = []
    for step in range(max_new_tokens):
        token = int(logits.argmax())
        if token == eos_token_id:
            break
        generated.append(token)
        if step + 1 == max_new_tokens:
            break
        logits = cache.step(np.asarray([token]), np.asarray([length]), extra)[0].astype(np.float32)
        length += 1
    return generated, first_logits


def sequence_logits(
    session: ort.InferenceSession,
    ids: list[int],
    run_options: ort.RunOptions | None = None,
    extra: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """The logits at every position of ``ids`` in one call with an empty cache: (len(ids), vocab). Parity uses
    it to score a stage along another stage's tokens (teacher forcing), so every step is comparable."""
    layout = CacheLayout.of(session)
    feed = {**layout.empty(), **layout.token_feed(np.asarray([ids], dtype=np.int64), np.asarray([0]), 0)}
    return session.run(["logits"], {**feed, **(extra or {})}, run_options)[0][0].astype(np.float32)
