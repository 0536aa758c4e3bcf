"""Where a decoder graph keeps each row's key/value cache in a padded batch: the one place the two graph kinds
we export differ, so the loops (`onnx_loops`) and the generation engine stay the same for both.

- ``left``: graphs exported from PyTorch (``torch.onnx.export``, formerly optimum) take ``attention_mask`` and
  ``position_ids``; attention honours the mask, so a shorter row's cache is padded on the left and its own
  position ids say where it is.
- ``right``: graphs of onnxruntime-genai's model builder use GroupQueryAttention, which reads only the mask's
  row sums and width (``seqlens_k = sum(mask) - 1``, ``total_sequence_length = width``) and takes no position
  ids (rotary positions come from the row length). Row ``b``'s cache entries must be columns ``[0, len_b)``,
  and each new token is written at column ``len_b``: the cache is padded on the right.

Either way the engine keeps each row's cache length; the layout turns lengths into the mask and says on which
side padding goes and which columns a trim keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."
BUILDER_PRODUCER = "onnxruntime-genai"  # the producer name onnxruntime-genai's model builder writes
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


class CacheLayoutError(ValueError):
    """A decoder graph whose cache inputs the loops cannot feed (a bug in the export, not user input)."""


@dataclass(frozen=True)
class CacheSpec:
    name: str  # past_key_values.{i}.key / .value
    kv_heads: int
    head_dim: int
    dtype: type


@dataclass(frozen=True)
class CacheLayout:
    padding: Literal["left", "right"]
    caches: tuple[CacheSpec, ...]
    takes_mask: bool
    takes_positions: bool

    @classmethod
    def of(cls, session) -> CacheLayout:
        """The layout of a session's graph, from its inputs and its producer."""
        inputs = {i.name: i for i in session.get_inputs()}
        meta = session.get_modelmeta() if hasattr(session, "get_modelmeta") else None
        builder = meta is not None and meta.producer_name == BUILDER_PRODUCER
        caches = []
        for name, info in inputs.items():
            if name.startswith(PAST_PREFIX):
                _, heads, _, head_dim = info.shape
                if not isinstance(heads, int) or not isinstance(head_dim, int):
                    raise CacheLayoutError(f"{name} has symbolic heads or head size {info.shape}: the export must "
                                           "pin them (exporters.genai_builder does)")  # fmt: skip
                caches.append(CacheSpec(name, heads, head_dim, _NUMPY_TYPES[info.type]))
        return cls(
            padding="right" if builder else "left",
            caches=tuple(caches),
            takes_mask="attention_mask" in inputs,
            takes_positions="position_ids" in inputs,
        )

    @property
    def past_names(self) -> list[str]:
        return [c.name for c in self.caches]

    @property
    def shares_buffers(self) -> bool:
        """The graph's attention writes the new keys/values into its past tensors when past and present are one
        buffer (GroupQueryAttention: the builder's graphs), so the cache can stay in place (`kv_cache`)."""
        return self.padding == "right"

    @property
    def can_pad(self) -> bool:
        """Rows of different lengths can share a batch: the graph is told each row's length (right: the mask;
        left: the mask and the position ids)."""
        return self.takes_mask and (self.padding == "right" or self.takes_positions)

    def empty(self, batch: int = 1) -> dict[str, np.ndarray]:
        """The cache inputs of sequences before their first token: (batch, kv_heads, 0, head_dim) each."""
        return {c.name: np.zeros((batch, c.kv_heads, 0, c.head_dim), dtype=c.dtype) for c in self.caches}

    def presents(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A run's present.* outputs as the next run's past_key_values.* inputs."""
        return {name: outputs[name.replace(PAST_PREFIX, PRESENT_PREFIX)] for name in self.past_names}

    def token_feed(self, ids: np.ndarray, lengths: np.ndarray, width: int) -> dict[str, np.ndarray]:
        """The inputs besides the cache for new tokens ``ids`` (batch, n) of rows whose caches hold ``lengths``
        entries in a cache ``width`` columns wide: the mask over cache and new tokens, and position ids."""
        batch, n = ids.shape
        feed = {"input_ids": ids}
        total = width + n
        lengths = np.asarray(lengths, dtype=np.int64)
        if self.takes_mask:
            columns = np.arange(total)[None, :]
            if self.padding == "right":
                mask = columns < (lengths + n)[:, None]
            else:
                mask = columns >= (width - lengths)[:, None]
            feed["attention_mask"] = mask.astype(np.int64)
        if self.takes_positions:
            feed["position_ids"] = lengths[:, None] + np.arange(n, dtype=np.int64)[None, :]
        return feed

    def pad(self, array: np.ndarray, width: int, axis: int = 2) -> np.ndarray:
        """A cache (or one row's) widened to ``width`` columns with zeros on the padding side."""
        missing = width - array.shape[axis]
        if missing == 0:
            return array
        pad = [(0, 0)] * array.ndim
        pad[axis] = (0, missing) if self.padding == "right" else (missing, 0)
        return np.pad(array, pad)

    def trim(self, array: np.ndarray, width: int, axis: int = 2) -> np.ndarray:
        """Keep the ``width`` columns the remaining rows use (the others held only finished rows)."""
        index = [slice(None)] * array.ndim
        index[axis] = slice(0, width) if self.padding == "right" else slice(array.shape[axis] - width, None)
        return array[tuple(index)]
