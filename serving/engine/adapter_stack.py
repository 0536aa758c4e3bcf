"""The LoRA factors of every adapter of one multi-adapter base, stacked for its multi-adapter graph, so that rows
of different adapters decode in one onnxruntime call (`contracts.export_folder.MULTI_ADAPTER_FILE`).

Each adapter holds a slot of every stack ``{m}.lora_a.stack`` (slots x in x rank) and ``{m}.lora_b.stack``
(slots x rank x out); a call's ``adapter_index`` names each row's slot. Ranks are padded with zeros to the widest
loaded adapter's (exact: zero columns of a and zero rows of b add nothing), and a module an adapter does not
adapt stays zero in its slot. Slot 0 is always zero: a row without an adapter runs the base model.

Load and unload (request threads) change the stacks while the engine thread reads them. They never write into
an array a call may hold: every change builds new arrays under the lock and swaps them in, so `row_inputs` hands
out arrays that stay as they were for as long as the call that got them runs. A slot is freed only when its
adapter is unloaded, after its requests have drained; a cancelled row still in the batch then reads slot 0.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from adamix_deploy.contracts.export_folder import ADAPTER_INDEX_INPUT, ADAPTER_STACK_SUFFIX

LORA_A, LORA_B = "lora_a", "lora_b"  # `exporters.ort_adapters`' kinds, as the base manifest records them
INITIAL_SLOTS = 4  # slot 0 (no adapter) and three adapters before the first reallocation


def read_factors(path: str | Path) -> dict[str, np.ndarray]:
    """An ``.onnx_adapter`` file's tensors, copied: the arrays `OrtValue.numpy()` gives are views of memory the
    file's reader owns, which is freed with it."""
    reader = ort.AdapterFormat.read_adapter(str(path))
    return {name: np.array(value.numpy(), copy=True) for name, value in reader.get_parameters().items()}


class AdapterStack:
    def __init__(self, inputs: list[dict], slots: int = INITIAL_SLOTS) -> None:
        """``inputs``: the base manifest's adapter inputs (`AdapterBaseInfo.inputs`); its LoRA pairs are
        stacked. ``slots``: the first allocation, slot 0 included."""
        self._shapes = {
            i["name"]: (i["kind"], i["shape"][0] if i["kind"] == LORA_A else i["shape"][1])
            for i in inputs
            if i["kind"] in (LORA_A, LORA_B)
        }
        self._lock = threading.Lock()
        self._slots: dict[str, int] = {}  # adapter name -> its slot
        self._capacity, self._rank = max(slots, 2), 0
        self._arrays = self._allocate(self._capacity, 0, {})

    @property
    def adapters(self) -> list[str]:
        with self._lock:
            return sorted(self._slots)

    @property
    def shape(self) -> tuple[int, int]:
        """(slots allocated, rank of every stack)."""
        with self._lock:
            return self._capacity, self._rank

    def add(self, name: str, factors: dict[str, np.ndarray]) -> None:
        """Give adapter ``name`` a slot holding ``factors`` (`read_factors`: graph input name -> tensor)."""
        unknown = sorted(set(factors) - set(self._shapes))
        if unknown:
            raise ValueError(f"the multi-adapter graph takes no input {unknown[0]!r}")
        rank = max(
            (v.shape[1] if self._shapes[k][0] == LORA_A else v.shape[0] for k, v in factors.items()), default=0
        )
        with self._lock:
            if name in self._slots:
                raise ValueError(f"adapter {name!r} already has a slot")
            used = set(self._slots.values()) | {0}
            free = next((s for s in range(self._capacity) if s not in used), None)
            capacity = self._capacity if free is not None else 2 * self._capacity
            rank = max(rank, self._rank)
            arrays = self._allocate(capacity, rank, self._arrays)  # new arrays: calls in flight keep the old
            slot = free if free is not None else self._capacity
            for array in arrays.values():
                array[slot] = 0  # a freed slot still holds its last adapter's factors
            for key, value in factors.items():
                if self._shapes[key][0] == LORA_A:
                    arrays[key + ADAPTER_STACK_SUFFIX][slot, :, : value.shape[1]] = value
                else:
                    arrays[key + ADAPTER_STACK_SUFFIX][slot, : value.shape[0], :] = value
            self._arrays, self._capacity, self._rank = arrays, capacity, rank
            self._slots[name] = slot

    def remove(self, name: str) -> None:
        """Free adapter ``name``'s slot; call it once no request runs on it. Its values stay until another
        adapter takes the slot (in new arrays, zeroed first): nothing reads them, since rows that still name
        ``name`` read slot 0 from now on."""
        with self._lock:
            self._slots.pop(name, None)

    def row_inputs(self, adapters: list[str | None]) -> dict[str, np.ndarray]:
        """The extra feeds of one call whose rows run ``adapters`` in batch order (None: no adapter). An adapter
        no longer loaded (a cancelled row left in the batch) reads slot 0."""
        with self._lock:
            index = np.asarray([self._slots.get(a, 0) if a is not None else 0 for a in adapters], dtype=np.int64)
            return {ADAPTER_INDEX_INPUT: index, **self._arrays}

    def _allocate(self, slots: int, rank: int, old: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Zeroed stacks of ``slots`` x ``rank``, with what ``old`` holds copied into its corner."""
        arrays = {}
        for name, (kind, size) in self._shapes.items():
            shape = (slots, size, rank) if kind == LORA_A else (slots, rank, size)
            array = np.zeros(shape, np.float32)
            previous = old.get(name + ADAPTER_STACK_SUFFIX)
            if previous is not None:
                s, r = previous.shape[0], previous.shape[2 if kind == LORA_A else 1]
                if kind == LORA_A:
                    array[:s, :, :r] = previous
                else:
                    array[:s, :r, :] = previous
            arrays[name + ADAPTER_STACK_SUFFIX] = array
        return arrays
