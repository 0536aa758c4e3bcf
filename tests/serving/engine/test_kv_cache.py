"""The two key/value caches (`kv_cache`) on a builder graph (GroupQueryAttention, right-padded): the
shared-buffer cache, whose past and present tensors are one preallocated buffer bound with IO binding, gives
token for token what the padded numpy cache gives, alone and in a continuously batched engine whose rows
join, finish and move slots while the buffers grow."""

from __future__ import annotations

import numpy as np
import pytest

from adamix_deploy.serving.engine import kv_cache
from adamix_deploy.serving.engine.generation import GenerationEngine, GenerationJob
from adamix_deploy.serving.engine.kv_cache import PaddedCache, SharedBufferCache, open_cache
from adamix_deploy.serving.engine.onnx_loops import greedy_generate
from adamix_deploy.serving.engine.sampling import SamplingParams

from helpers.engine import Events, IdTokenizer, load_model

PROMPTS = ["name[The Mill], food[Italian]\n", "a", "name[Aromi], food[Indian], near[The Vaults]\n", "Blue Spice"]


@pytest.fixture(scope="module")
def builder_model(exports):
    return load_model(exports["restaurants"])  # a tiny Llama: exported by onnxruntime-genai's model builder


@pytest.fixture
def small_capacity(monkeypatch):
    """Buffers that start 4 columns wide, so every test below grows them while rows are live."""
    monkeypatch.setattr(kv_cache, "INITIAL_CAPACITY", 4)


@pytest.mark.integration
def test_the_builder_graph_gets_the_shared_buffer_cache(builder_model):
    assert isinstance(open_cache(builder_model.session, 2), SharedBufferCache)
    assert isinstance(open_cache(builder_model.session, 2, shared_buffers=False), PaddedCache)


@pytest.mark.integration
def test_greedy_with_shared_buffers_equals_the_padded_cache(builder_model, small_capacity):
    for text in PROMPTS:
        ids = builder_model.tokenizer.encode(text).ids
        fast, fast_first = greedy_generate(builder_model.session, ids, 24, None, shared_buffers=True)
        plain, plain_first = greedy_generate(builder_model.session, ids, 24, None, shared_buffers=False)
        assert fast == plain and len(fast) == 24
        np.testing.assert_allclose(fast_first, plain_first, atol=1e-5)


def _generate_all(model, shared: bool, jobs: list[tuple[list[int], int]]) -> list[list[int]]:
    """Every job submitted at once to one engine of up to 3 rows: rows join while others decode, finish at
    different lengths (their slots refilled) and wait in the queue."""
    engine = GenerationEngine(model.session, IdTokenizer(), frozenset(), 3, 16, "test", shared_buffers=shared)
    collected = []
    for ids, max_new in jobs:
        events = Events()
        engine.submit(GenerationJob(list(ids), max_new, SamplingParams(), None, [], events))
        collected.append(events)
    engine.start()
    try:
        return [events.wait().tokens for events in collected]
    finally:
        engine.stop(timeout=30)


@pytest.mark.integration
def test_a_continuous_batch_on_shared_buffers_equals_the_padded_cache_and_each_job_alone(
    builder_model, small_capacity
):
    ids = [builder_model.tokenizer.encode(text).ids for text in PROMPTS]
    jobs = [(ids[0], 9), (ids[1], 3), (ids[2], 12), (ids[3], 5), (ids[1], 7)]
    fast = _generate_all(builder_model, True, jobs)
    assert fast == _generate_all(builder_model, False, jobs)
    for (prompt, max_new), tokens in zip(jobs, fast, strict=True):
        assert tokens == greedy_generate(builder_model.session, prompt, max_new, None, shared_buffers=False)[0]


@pytest.mark.integration
def test_a_step_past_the_reserved_columns_is_refused_not_written_out_of_bounds(builder_model, small_capacity):
    cache = open_cache(builder_model.session, 1)
    cache.prefill([5, 6, 7])
    cache.join()
    assert cache.capacity == 4
    cache.step(np.asarray([8]), np.asarray([3]))  # the 4th column
    with pytest.raises(ValueError, match="reserve"):
        cache.step(np.asarray([9]), np.asarray([4]))
