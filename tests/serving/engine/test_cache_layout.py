"""serving.engine.cache_layout: the masks, positions, padding and trims of the two cache layouts, on fake
sessions (the real graphs are checked in tests/export/test_genai_builder.py and test_generation_engine.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from adamix_deploy.serving.engine.cache_layout import CacheLayout, CacheLayoutError


class FakeSession:
    def __init__(self, producer: str, names: tuple[str, ...], head_dim=16):
        cache = [SimpleNamespace(name=f"past_key_values.0.{k}", shape=["batch", 1, "past", head_dim],
                                 type="tensor(float)") for k in ("key", "value")]  # fmt: skip
        self.inputs = [SimpleNamespace(name=n, shape=["batch", "n"], type="tensor(int64)") for n in names] + cache
        self.producer = producer

    def get_inputs(self):
        return self.inputs

    def get_modelmeta(self):
        return SimpleNamespace(producer_name=self.producer)


def test_builder_graphs_are_right_padded_and_need_no_position_ids():
    layout = CacheLayout.of(FakeSession("onnxruntime-genai", ("input_ids", "attention_mask")))
    assert layout.padding == "right" and layout.can_pad and not layout.takes_positions
    assert layout.empty(2)["past_key_values.0.key"].shape == (2, 1, 0, 16)
    feed = layout.token_feed(np.asarray([[7], [8]]), np.asarray([3, 1]), 3)
    # GroupQueryAttention reads sum(mask) - 1 as each row's past length and the width as the total length
    np.testing.assert_array_equal(feed["attention_mask"], [[1, 1, 1, 1], [1, 1, 0, 0]])
    cache = np.arange(6, dtype=np.float32).reshape(1, 1, 3, 2)
    assert (
        layout.pad(cache, 5)[0, 0, 3:].sum() == 0
        and layout.pad(cache, 5)[0, 0, :3].tolist() == cache[0, 0].tolist()
    )
    assert layout.trim(layout.pad(cache, 5), 3).tolist() == cache.tolist()


def test_torch_graphs_are_left_padded_with_position_ids():
    layout = CacheLayout.of(FakeSession("pytorch", ("input_ids", "attention_mask", "position_ids")))
    assert layout.padding == "left" and layout.can_pad
    feed = layout.token_feed(np.asarray([[7], [8]]), np.asarray([3, 1]), 3)
    np.testing.assert_array_equal(feed["attention_mask"], [[1, 1, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_array_equal(feed["position_ids"], [[3], [1]])
    prefill = layout.token_feed(np.asarray([[4, 5, 6]]), np.asarray([0]), 0)
    np.testing.assert_array_equal(prefill["position_ids"], [[0, 1, 2]])
    cache = np.ones((1, 1, 2, 2), dtype=np.float32)
    assert (
        layout.pad(cache, 4)[0, 0, :2].sum() == 0
        and layout.trim(layout.pad(cache, 4), 2).tolist() == cache.tolist()
    )
    # without position ids a left-padded graph cannot be told each row's position: one row at a time
    assert not CacheLayout.of(FakeSession("pytorch", ("input_ids", "attention_mask"))).can_pad


def test_a_symbolic_head_size_is_refused():
    with pytest.raises(CacheLayoutError, match="must pin them"):
        CacheLayout.of(FakeSession("onnxruntime-genai", ("input_ids", "attention_mask"), head_dim="kv_cache_dim"))
