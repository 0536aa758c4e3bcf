"""The key/value cache of a batch of decoding rows, and the onnxruntime calls that read and extend it: the one
part of decoding that differs between the graphs we export. The loops (`onnx_loops`) and the generation engine
(`generation`) drive either kind through the same five calls:

    logits = cache.prefill(prompt_ids)      # a new row's prompt, staged beside the batch: its last logits
    cache.join()                            # the staged row becomes the batch's last row (or is dropped)
    logits = cache.step(tokens, lengths)    # one new token for every row: (rows, vocab)
    cache.keep(indices, lengths)            # after a step: the rows that go on, in order
    cache.clear()

- `PaddedCache` (graphs exported from PyTorch, and any graph whose present outputs grow by one column a call):
  the cache lives in numpy arrays that every call passes in and gets back; rows of different lengths are padded
  on the graph's side (`CacheLayout`), caches of admitted rows are concatenated and trimmed with numpy.
- `SharedBufferCache` (onnxruntime-genai builder graphs, whose GroupQueryAttention works in place when a
  call's past and present tensors are one buffer): one preallocated buffer per cache tensor,
  ``(max_rows, kv_heads, capacity, head_dim)``, row ``i`` in slot ``i``, bound with IO binding as both the past
  input and the present output. No cache byte crosses numpy per token: the kernel writes each new key/value at
  the row's length and attends over its first ``length + 1`` columns. A finished row's slot is refilled by
  moving the last rows down (`keep`); capacity grows by reallocating (`reserve`), never during a call.

``run_options`` is an onnxruntime LoRA adapter's; ``extra`` feeds (a per-row adapter index and stacked adapter
factors: `serving.adapters`) go into every call as given.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import onnxruntime as ort

from adamix_deploy.serving.engine.cache_layout import PAST_PREFIX, PRESENT_PREFIX, CacheLayout

Feeds = dict[str, np.ndarray]
INITIAL_CAPACITY = 256  # columns per row before the first `reserve` grows it (SmolLM2: 46 KB a column per row)


class KvCache(Protocol):
    rows: int

    def reserve(self, tokens: int) -> None: ...

    def prefill(self, prompt_ids: list[int], extra: Feeds | None = None) -> np.ndarray: ...

    def join(self) -> None: ...

    def step(self, tokens: np.ndarray, lengths: np.ndarray, extra: Feeds | None = None) -> np.ndarray: ...

    def keep(self, indices: list[int], lengths: list[int]) -> None: ...

    def clear(self) -> None: ...


def open_cache(
    session: ort.InferenceSession,
    max_rows: int,
    run_options: ort.RunOptions | None = None,
    shared_buffers: bool | None = None,
) -> KvCache:
    """The fastest cache the graph allows (``shared_buffers=None``), or the one asked for (tests compare them)."""
    layout = CacheLayout.of(session)
    if shared_buffers is None:
        shared_buffers = layout.shares_buffers
    if shared_buffers:
        return SharedBufferCache(session, layout, max_rows, run_options)
    return PaddedCache(session, layout, run_options)


class PaddedCache:
    def __init__(self, session: ort.InferenceSession, layout: CacheLayout, run_options: ort.RunOptions | None):
        self.session, self.layout, self.run_options = session, layout, run_options
        self._inputs = {i.name for i in session.get_inputs()}
        self._outputs = [o.name for o in session.get_outputs()]
        self._past: Feeds = {}  # rows in batch order, `_width` columns
        self._width = 0
        self._staged: tuple[Feeds, int] | None = None
        self.rows = 0

    def reserve(self, tokens: int) -> None:
        pass  # numpy arrays grow with every call

    def _run(self, feed: Feeds) -> dict[str, np.ndarray]:
        feed = {k: v for k, v in feed.items() if k in self._inputs}
        return dict(zip(self._outputs, self.session.run(self._outputs, feed, self.run_options), strict=True))

    def prefill(self, prompt_ids: list[int], extra: Feeds | None = None) -> np.ndarray:
        ids = np.asarray([prompt_ids], dtype=np.int64)
        out = self._run({**self.layout.empty(), **self.layout.token_feed(ids, [0], 0), **(extra or {})})
        self._staged = (self.layout.presents(out), len(prompt_ids))
        return out["logits"][0, -1]

    def join(self) -> None:
        presents, n = self._staged
        self._staged = None
        if not self.rows:
            self._past, self._width = presents, n
        else:
            width = max(self._width, n)
            pad = self.layout.pad
            self._past = {
                k: np.concatenate([pad(self._past[k], width), pad(v, width)]) for k, v in presents.items()
            }
            self._width = width
        self.rows += 1

    def step(self, tokens: np.ndarray, lengths: np.ndarray, extra: Feeds | None = None) -> np.ndarray:
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1, 1)
        out = self._run({**self.layout.token_feed(ids, lengths, self._width), **self._past, **(extra or {})})
        self._past, self._width = self.layout.presents(out), self._width + 1
        return out["logits"][:, -1]

    def keep(self, indices: list[int], lengths: list[int]) -> None:
        if not indices:
            self.clear()
            return
        index = np.asarray(indices)
        self._width = max(lengths)  # columns only finished rows used are dropped
        self._past = {k: self.layout.trim(v[index], self._width) for k, v in self._past.items()}
        self.rows = len(indices)

    def clear(self) -> None:
        self._past, self._width, self.rows, self._staged = {}, 0, 0, None


class SharedBufferCache:
    def __init__(
        self,
        session: ort.InferenceSession,
        layout: CacheLayout,
        max_rows: int,
        run_options: ort.RunOptions | None,
        capacity: int | None = None,
    ):
        self.session, self.layout, self.run_options = session, layout, run_options
        self.max_rows = max_rows
        self._inputs = {i.name for i in session.get_inputs()}
        logits = next(o for o in session.get_outputs() if o.name == "logits")
        self._vocab = logits.shape[-1]
        self._logits = np.empty((max_rows, 1, self._vocab), dtype=np.float32)
        self._buffers: Feeds = {}
        self.capacity = 0
        self.rows = 0
        self._lengths: list[int] = []  # each row's cache length: how many columns `keep` moves
        self._staged = 0
        self._binding: ort.IOBinding | None = None
        self._bound: tuple[int, int] | None = None
        self.reserve(capacity or INITIAL_CAPACITY)

    def reserve(self, tokens: int) -> None:
        """Make room for a row of ``tokens`` entries (prompt + new tokens): grow every buffer, copying the
        rows' entries, when it is too short. Called before a prefill, so no call ever runs out of columns."""
        if tokens <= self.capacity:
            return
        capacity = max(tokens, 2 * self.capacity)
        # np.zeros maps untouched pages lazily: a large capacity costs memory only where rows write
        grown = {
            c.name: np.zeros((self.max_rows, c.kv_heads, capacity, c.head_dim), dtype=c.dtype)
            for c in self.layout.caches
        }
        for name, old in self._buffers.items():
            grown[name][: self.rows, :, : self.capacity] = old[: self.rows]
        self._buffers, self.capacity = grown, capacity

    def _bind_caches(self, binding: ort.IOBinding, start: int, rows: int) -> None:
        for name, buffer in self._buffers.items():
            view = buffer[start : start + rows]  # contiguous: whole slots of a C-ordered array
            shape, pointer, dtype = list(view.shape), view.ctypes.data, view.dtype.type
            binding.bind_input(name, "cpu", 0, dtype, shape, pointer)
            binding.bind_output(name.replace(PAST_PREFIX, PRESENT_PREFIX), "cpu", 0, dtype, shape, pointer)

    def _bind_feeds(self, binding: ort.IOBinding, feed: Feeds) -> None:
        for name, value in feed.items():
            if name in self._inputs:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))

    def _decode_binding(self) -> ort.IOBinding:
        """The decode steps' binding, rebuilt only when the rows or the buffers change: binding 2 x 60 cache
        tensors took ~2.5 ms, a quarter of an int4 SmolLM2 step."""
        key = (self.rows, self.capacity)
        if self._binding is None or self._bound != key:
            self._binding = self.session.io_binding()
            self._bind_caches(self._binding, 0, self.rows)
            out = self._logits[: self.rows]
            self._binding.bind_output("logits", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
            self._bound = key
        return self._binding

    def prefill(self, prompt_ids: list[int], extra: Feeds | None = None) -> np.ndarray:
        if self.rows >= self.max_rows:
            raise ValueError(f"the batch is full ({self.max_rows} rows)")
        n = len(prompt_ids)
        self.reserve(n + 1)
        ids = np.asarray([prompt_ids], dtype=np.int64)
        binding = self.session.io_binding()
        self._bind_feeds(binding, {**self.layout.token_feed(ids, [0], 0), **(extra or {})})
        self._bind_caches(binding, self.rows, 1)  # the slot after the batch's last row
        binding.bind_output("logits", "cpu")
        self.session.run_with_iobinding(binding, self.run_options)
        self._staged = n
        return binding.get_outputs()[-1].numpy()[0, -1]

    def join(self) -> None:
        self._lengths.append(self._staged)
        self.rows += 1

    def step(self, tokens: np.ndarray, lengths: np.ndarray, extra: Feeds | None = None) -> np.ndarray:
        lengths = np.asarray(lengths, dtype=np.int64)
        width = int(lengths.max())
        if width + 1 > self.capacity:
            raise ValueError(f"a row needs {width + 1} cache columns; reserve() them before its prefill")
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1, 1)
        binding = self._decode_binding()
        self._bind_feeds(binding, {**self.layout.token_feed(ids, lengths, width), **(extra or {})})
        self.session.run_with_iobinding(binding, self.run_options)
        self._lengths = [int(n) + 1 for n in lengths]
        return self._logits[: self.rows, -1]  # valid until the next step writes the buffer again

    def keep(self, indices: list[int], lengths: list[int]) -> None:
        for slot, row in enumerate(indices):  # indices ascend, so a move never overwrites a row still to move
            if row != slot:
                n = self._lengths[row]
                for buffer in self._buffers.values():
                    buffer[slot, :, :n] = buffer[row, :, :n]
        self._lengths = list(lengths)
        self.rows = len(indices)

    def clear(self) -> None:
        self.rows, self._lengths = 0, []
