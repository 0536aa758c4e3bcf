"""serving.batching.ClassificationBatcher in process, over a real onnxruntime session of the "sentiment" export:
coalescing, each caller's own logits, the queue bound, timeouts, failures and stop."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from adamix_deploy.serving.engine.batching import ClassificationBatcher
from adamix_deploy.serving.engine.generation import QueueFull
from adamix_deploy.serving.engine.onnx_loops import classify_logits
from adamix_deploy.serving.engine.text import EncodedInput, encode_for_classification, pad_batch

from helpers.engine import load_model

TEXTS = [
    "the film was great",
    "awful plot and dull acting",
    "it was a movie",
    "superb story, really fine",
    "bad",
    "the acting was quite boring and the plot was really terrible, a dull movie",
    ["the story", "was lovely"],
    "excellent",
]


@pytest.fixture(scope="module")
def sentiment_model(exports):
    return load_model(exports["sentiment"])


def encode(model, inputs: list) -> list[EncodedInput]:
    return encode_for_classification(model.tokenizer, model.truncating_tokenizer, inputs, model.max_tokens, True)


def alone(model, item: EncodedInput) -> np.ndarray:
    """The reference: one unpadded `classify_logits` call on this input alone."""
    return classify_logits(model.session, pad_batch([item], model.pad_token_id))[0]


def make(model, max_batch_size=32, max_wait_ms=0.0, max_queue=256, sizes=None) -> ClassificationBatcher:
    def on_batch(size, seconds):
        assert seconds >= 0
        sizes.append(size)

    return ClassificationBatcher(
        model.session, model.pad_token_id, max_batch_size, max_wait_ms, max_queue, "sentiment",
        on_batch=None if sizes is None else on_batch,
    )  # fmt: skip


def test_concurrent_calls_coalesce_and_each_caller_gets_its_own_logits(sentiment_model):
    model = sentiment_model
    items = encode(model, TEXTS)
    requests = [[items[i % len(items)], items[(3 * i + 1) % len(items)]] for i in range(40)] + [[items[5]]]
    sizes: list[int] = []

    async def scenario():
        batcher = make(model, max_batch_size=16, sizes=sizes)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.classify(r, timeout=30) for r in requests))
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert sum(sizes) == sum(len(r) for r in requests)  # every input ran exactly once
    assert max(sizes) == 16 and all(s <= 16 for s in sizes)  # coalesced, never above the cap
    assert len(sizes) < len(requests)
    for request, logits in zip(requests, results, strict=True):
        assert logits.shape == (len(request), 2) and logits.dtype == np.float32
        for item, row in zip(request, logits, strict=True):
            np.testing.assert_allclose(row, alone(model, item), atol=1e-5, rtol=0)
    # the inputs really differ, so a mixed-up row would show
    assert np.ptp(np.stack([alone(model, i) for i in items]), axis=0).min() > 1e-3


def test_max_batch_size_1_runs_every_input_alone(sentiment_model):
    model = sentiment_model
    items = encode(model, TEXTS[:4])
    sizes: list[int] = []

    async def scenario():
        batcher = make(model, max_batch_size=1, sizes=sizes)
        batcher.start()
        out = await asyncio.gather(batcher.classify(items[:3], 30), batcher.classify(items[3:], 30))
        await batcher.stop()
        return out

    first, second = asyncio.run(scenario())
    assert sizes == [1, 1, 1, 1]
    np.testing.assert_allclose(first, np.stack([alone(model, i) for i in items[:3]]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(second[0], alone(model, items[3]), atol=1e-5, rtol=0)


def test_a_batch_wait_gathers_requests_that_arrive_during_it(sentiment_model):
    model = sentiment_model
    items = encode(model, TEXTS[:3])
    sizes: list[int] = []

    async def scenario():
        batcher = make(model, max_wait_ms=600, sizes=sizes)
        batcher.start()
        first = asyncio.ensure_future(batcher.classify([items[0]], 30))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.classify(items[1:], 30))
        out = await asyncio.gather(first, second)
        # a lone request is answered once the wait ends (the wait's timeout path), not held forever
        lone = await batcher.classify([items[2]], 30)
        await batcher.stop()
        return out, lone

    (first, second), lone = asyncio.run(scenario())
    assert sizes == [3, 1]
    np.testing.assert_allclose(first[0], alone(model, items[0]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(lone[0], alone(model, items[2]), atol=1e-5, rtol=0)


def test_a_full_queue_raises_queue_full_and_frees_up_when_requests_leave(sentiment_model):
    model = sentiment_model
    items = encode(model, TEXTS[:2])

    async def scenario():
        batcher = make(model, max_queue=2)  # not started: requests wait
        waiting = [asyncio.ensure_future(batcher.classify([items[0]], 30)) for _ in range(2)]
        await asyncio.sleep(0)
        assert batcher.queue_depth == 2
        with pytest.raises(QueueFull):
            await batcher.classify([items[1]], 30)
        assert batcher.queue_depth == 2  # the refused request is not counted
        batcher.start()
        got = await asyncio.gather(*waiting)
        assert batcher.queue_depth == 0
        again = await batcher.classify([items[1]], 30)  # room again
        await batcher.stop()
        return got, again

    got, again = asyncio.run(scenario())
    for logits in got:
        np.testing.assert_allclose(logits[0], alone(model, items[0]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(again[0], alone(model, items[1]), atol=1e-5, rtol=0)


def test_a_timeout_raises_and_drops_the_pending_inputs(sentiment_model):
    model = sentiment_model
    items = encode(model, TEXTS)
    sizes: list[int] = []

    async def scenario():
        batcher = make(model, sizes=sizes)  # not started yet: nothing runs before the timeout
        with pytest.raises(TimeoutError):
            await batcher.classify(items[:5], timeout=0.05)
        assert batcher.queue_depth == 0
        batcher.start()
        out = await batcher.classify([items[6]], timeout=30)
        await asyncio.sleep(0.05)
        await batcher.stop()
        return out

    out = asyncio.run(scenario())
    assert sizes == [1]  # the 5 timed-out inputs were skipped, not run
    np.testing.assert_allclose(out[0], alone(model, items[6]), atol=1e-5, rtol=0)


def test_a_cancelled_caller_drops_its_inputs(sentiment_model):
    model = sentiment_model
    items = encode(model, TEXTS)
    sizes: list[int] = []

    async def scenario():
        batcher = make(model, sizes=sizes)
        task = asyncio.ensure_future(batcher.classify(items[:4], timeout=30))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert batcher.queue_depth == 0
        batcher.start()
        await batcher.classify(items[4:6], timeout=30)
        await batcher.stop()

    asyncio.run(scenario())
    assert sizes == [2]


def test_a_failing_batch_fails_its_requests_and_the_batcher_keeps_serving(sentiment_model):
    model = sentiment_model
    items = encode(model, TEXTS[:2])
    vocab = model.tokenizer.get_vocab_size()
    bad = EncodedInput([vocab + 1000, vocab + 2000], [0, 0])  # out of the embedding table

    async def scenario():
        batcher = make(model, max_batch_size=1)
        batcher.start()
        with pytest.raises(Exception) as failure:
            await batcher.classify([bad], timeout=30)
        good = await batcher.classify(items, timeout=30)
        await batcher.stop()
        return failure.value, good

    failure, good = asyncio.run(scenario())
    assert not isinstance(failure, (TimeoutError, QueueFull))
    np.testing.assert_allclose(good, np.stack([alone(model, i) for i in items]), atol=1e-5, rtol=0)


def test_stop_ends_the_loop_and_the_executor(sentiment_model):
    model = sentiment_model
    items = encode(model, TEXTS[:1])

    async def scenario():
        batcher = make(model)
        batcher.start()
        await batcher.classify(items, timeout=30)
        task = batcher._task
        await asyncio.wait_for(batcher.stop(), 5)
        assert task.done()
        with pytest.raises(RuntimeError):  # the executor is shut down
            batcher._executor.submit(lambda: None)
        # nothing serves after stop: a request times out instead of hanging
        with pytest.raises(TimeoutError):
            await batcher.classify(items, timeout=0.05)
        never_started = make(model)
        await asyncio.wait_for(never_started.stop(), 5)

    asyncio.run(scenario())
