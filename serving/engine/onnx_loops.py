"""Run exported models with onnxruntime and numpy only (no torch): classification and greedy decoding
with the key/value cache. The export's parity check runs this same code, so what is verified is what serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


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
    """The key/value cache inputs of one sequence before its first token: (1, heads, 0, head_dim) each."""
    cache = {}
    for i in session.get_inputs():
        if i.name.startswith("past_key_values."):
            _, heads, _, head_dim = i.shape
            cache[i.name] = np.zeros((1, heads, 0, head_dim), dtype=_NUMPY_TYPES[i.type])
    return cache


def greedy_generate(
    session: ort.InferenceSession,
    prompt_ids: list[int],
    max_new_tokens: int,
    eos_token_id: int | None,
    run_options: ort.RunOptions | None = None,
) -> tuple[list[int], np.ndarray]:
    """Greedy decoding of one prompt with the exported key/value cache. Returns the new token ids (up to
    and excluding eos) and the logits of the first step (for parity checks)."""
    inputs = {i.name: i for i in session.get_inputs()}
    past_names = [n for n in inputs if n.startswith("past_key_values.")]
    feed = empty_cache(session)
    ids = np.asarray([prompt_ids], dtype=np.int64)
    total = ids.shape[1]
    generated: list[int] = []
    first_logits = None
    output_names = [o.name for o in session.get_outputs()]
    for _ in range(max_new_tokens):
        _feed_tokens(feed, inputs, ids, total)
        outputs = dict(zip(output_names, session.run(output_names, feed, run_options), strict=True))
        logits = outputs["logits"][0, -1].astype(np.float32)
        if first_logits is None:
            first_logits = logits
        token = int(logits.argmax())
        if token == eos_token_id:
            break
        generated.append(token)
        for name in past_names:
            feed[name] = outputs[name.replace("past_key_values.", "present.")]
        ids = np.asarray([[token]], dtype=np.int64)
        total += 1
    return generated, first_logits


def sequence_logits(
    session: ort.InferenceSession, ids: list[int], run_options: ort.RunOptions | None = None
) -> np.ndarray:
    """The logits at every position of ``ids`` in one call with an empty cache: (len(ids), vocab). Parity uses
    it to score a stage along another stage's tokens (teacher forcing), so every step is comparable."""
    feed = empty_cache(session)
    _feed_tokens(feed, input_names(session), np.asarray([ids], dtype=np.int64), len(ids))
    return session.run(["logits"], feed, run_options)[0][0].astype(np.float32)


def _feed_tokens(feed: dict, inputs, ids: np.ndarray, total: int) -> None:
    """The new tokens ``ids`` (1, n) of a sequence that is ``total`` tokens long with them, and the mask and
    positions the graph takes."""
    feed["input_ids"] = ids
    if "attention_mask" in inputs:
        feed["attention_mask"] = np.ones((1, total), dtype=np.int64)
    if "position_ids" in inputs:
        feed["position_ids"] = np.arange(total - ids.shape[1], total, dtype=np.int64)[None, :]
