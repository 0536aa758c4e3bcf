"""serving.generation.GenerationEngine in process, over real onnxruntime sessions of the "restaurants" (Llama,
built by onnxruntime-genai's model builder: GroupQueryAttention, right-padded cache) and "restaurants-gpt2"
(exported from PyTorch: left-padded cache with position ids; and, wrapped, a graph without mask inputs that runs
one job at a time) exports. The Llama export runs the model builder as a subprocess, so its tests are marked
integration; the GPT-2 ones stay in the fast loop.

Most jobs decode with `IdTokenizer`, whose text is "[id][id]...", so a job's events give back its exact tokens.
References are independent of the engine's cache handling: `greedy_generate`, and a numpy loop that recomputes
the whole sequence without any cache at every step."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest

import adamix_deploy.serving.engine.generation as generation
from adamix_deploy.serving.engine.generation import GenerationEngine, GenerationJob, QueueFull
from adamix_deploy.serving.engine.onnx_loops import empty_cache, greedy_generate
from adamix_deploy.serving.engine.results import Failed, Finished, TextDelta
from adamix_deploy.serving.engine.sampling import SamplingParams, next_token

from helpers.engine import Events, IdTokenizer, load_model

PROMPTS = [
    "name[The Mill], food[Italian]\n",
    "name[Zizzi]\n",
    "a",
    "name[Aromi], food[Indian], near[The Vaults]\n",
    "Blue Spice serves",
    "food[French]\n",
]
SAMPLED = SamplingParams(temperature=1.0)


@pytest.fixture(scope="module")
def llama_model(exports):
    return load_model(exports["restaurants"])


@pytest.fixture(scope="module")
def gpt2_model(exports):
    return load_model(exports["restaurants-gpt2"])


def prompt_ids(model, text: str) -> list[int]:
    return model.tokenizer.encode(text).ids


@contextlib.contextmanager
def running(model, tokenizer=None, eos=frozenset(), max_batch=8, max_queue=64, steps=None, tokens=None, jobs=()):
    """A started engine, stopped (all its jobs finished) on exit. ``jobs`` are queued before the engine thread
    starts, so they are admitted together however the threads are scheduled."""
    engine = GenerationEngine(
        model.session, tokenizer or IdTokenizer(), frozenset(eos), max_batch, max_queue, "test",
        on_step=None if steps is None else steps.append,
        on_tokens=None if tokens is None else tokens.append,
    )  # fmt: skip
    for job in jobs:
        engine.submit(job)
    engine.start()
    try:
        yield engine
    finally:
        engine.stop(timeout=30)
        assert not engine._thread.is_alive()


def new_job(ids, max_new, params=None, seed=None, stop=(), emit=None) -> tuple[GenerationJob, Events]:
    events = Events()
    return GenerationJob(list(ids), max_new, params or SamplingParams(), seed, list(stop), emit or events), events


def run_alone(model, ids, max_new, params=None, seed=None, eos=frozenset(), tokenizer=None) -> Events:
    with running(model, tokenizer, eos) as engine:
        job, events = new_job(ids, max_new, params, seed)
        engine.submit(job)
        return events.wait()


def reference(session, ids, max_new, params, seed, eos=frozenset()) -> tuple[list[int], list[np.ndarray]]:
    """Tokens and per-step logits, recomputing the whole sequence from an empty cache at every step."""
    rng = np.random.default_rng(seed)
    names = [o.name for o in session.get_outputs()]
    inputs = {i.name for i in session.get_inputs()}
    seq, tokens, all_logits = list(ids), [], []
    for _ in range(max_new):
        feed = {"input_ids": np.asarray([seq], dtype=np.int64), **empty_cache(session)}
        if "attention_mask" in inputs:
            feed["attention_mask"] = np.ones((1, len(seq)), dtype=np.int64)
        if "position_ids" in inputs:
            feed["position_ids"] = np.arange(len(seq), dtype=np.int64)[None, :]
        logits = session.run(names, feed)[0][0, -1].astype(np.float32)
        all_logits.append(logits)
        token = next_token(logits, params, rng)
        if token in eos:
            break
        tokens.append(token)
        seq.append(token)
    return tokens, all_logits


@pytest.fixture
def logits_seen(monkeypatch) -> dict[int, list[np.ndarray]]:
    """The logits each job's rows were sampled from, keyed by id() of the job's SamplingParams."""
    seen: dict[int, list[np.ndarray]] = {}
    lock = threading.Lock()

    def recording(logits, params, rng):
        with lock:
            seen.setdefault(id(params), []).append(np.array(logits, dtype=np.float32))
        return next_token(logits, params, rng)

    monkeypatch.setattr(generation, "next_token", recording)
    return seen


# -- results ------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_greedy_output_equals_greedy_generate(llama_model):
    model = llama_model
    (eos,) = model.eos_token_ids
    for text in PROMPTS[:3]:
        ids = prompt_ids(model, text)
        expected, _ = greedy_generate(model.session, ids, 12, eos)
        events = run_alone(model, ids, 12, eos=model.eos_token_ids)
        assert events.tokens == expected
        assert events.finished == Finished("length" if len(expected) == 12 else "stop", len(ids), len(expected))
        text_events = run_alone(model, ids, 12, eos=model.eos_token_ids, tokenizer=model.tokenizer)
        assert text_events.text == model.tokenizer.decode(expected)
        assert text_events.finished == events.finished


@pytest.mark.integration
def test_seeded_sampling_repeats_matches_a_cacheless_reference_and_differs_across_seeds(llama_model):
    model = llama_model
    ids = prompt_ids(model, PROMPTS[0])
    a = run_alone(model, ids, 20, SAMPLED, seed=7).tokens
    assert a == run_alone(model, ids, 20, SAMPLED, seed=7).tokens
    assert a == reference(model.session, ids, 20, SAMPLED, 7)[0]
    assert len(set(a)) > 5  # really sampled, not a degenerate repetition
    assert a != run_alone(model, ids, 20, SAMPLED, seed=8).tokens
    restricted = run_alone(model, ids, 20, SamplingParams(1.0, top_k=3), seed=7).tokens
    assert restricted == reference(model.session, ids, 20, SamplingParams(1.0, top_k=3), 7)[0]


@pytest.mark.integration
def test_concurrent_jobs_give_each_the_tokens_and_logits_it_gets_alone(llama_model, logits_seen):
    """Continuous batching: 6 jobs of different prompt lengths and lengths through 3 rows, so jobs join while
    others are mid-generation (cache merged with left padding) and rows leave early (cache trimmed)."""
    model = llama_model
    specs = [(prompt_ids(model, p), 6 + 4 * i, SamplingParams(1.0) if i % 2 else SamplingParams(), 100 + i)
             for i, p in enumerate(PROMPTS)]  # fmt: skip
    steps: list[int] = []
    tokens: list[int] = []
    jobs = [new_job(ids, n, params, seed) for ids, n, params, seed in specs]
    with running(model, max_batch=3, steps=steps, tokens=tokens, jobs=[job for job, _ in jobs]):
        results = [events.wait() for _, events in jobs]
    assert max(steps) == 3 and 2 in steps  # rows were decoded together, and some left before others
    assert sum(tokens) == sum(n for _, n, _, _ in specs)
    for (ids, n, params, seed), events in zip(specs, results, strict=True):
        expected, expected_logits = reference(model.session, ids, n, params, seed)
        assert events.tokens == expected
        assert events.finished == Finished("length", len(ids), n)
        seen = logits_seen[id(params)]
        assert len(seen) == n
        np.testing.assert_allclose(np.stack(seen), np.stack(expected_logits), atol=1e-4, rtol=0)
        alone = run_alone(model, ids, n, params, seed)
        assert alone.tokens == expected


@pytest.mark.integration
def test_a_job_joining_mid_generation_is_unaffected(llama_model):
    """A short prompt admitted while a long-prompt row is several steps in, and the other way round."""
    model = llama_model
    long_ids, short_ids = prompt_ids(model, PROMPTS[3]), prompt_ids(model, PROMPTS[2])
    for first, second in [(long_ids, short_ids), (short_ids, long_ids)]:
        with running(model, max_batch=4) as engine:
            late, late_events = new_job(second, 10, SAMPLED, seed=2)
            count = [0]
            first_events = Events()

            def emit(event, count=count, late=late, first_events=first_events, engine=engine):
                first_events(event)
                count[0] += 1
                if count[0] == 5:  # on the engine thread, between two steps
                    engine.submit(late)

            job, _ = new_job(first, 15, SAMPLED, seed=1, emit=emit)
            engine.submit(job)
            first_events.wait()
            late_events.wait()
        assert first_events.tokens == reference(model.session, first, 15, SAMPLED, 1)[0]
        assert late_events.tokens == reference(model.session, second, 10, SAMPLED, 2)[0]


@pytest.mark.integration
def test_text_deltas_with_the_real_tokenizer_join_to_the_decode_and_a_stop_string_cuts_before_it(llama_model):
    model = llama_model
    ids = prompt_ids(model, PROMPTS[1])
    tokens = run_alone(model, ids, 40, SAMPLED, seed=3).tokens
    events = run_alone(model, ids, 40, SAMPLED, seed=3, tokenizer=model.tokenizer)
    full = model.tokenizer.decode(tokens)
    assert events.text == full and events.finished == Finished("length", len(ids), 40)
    assert all(e.text for e in events.events if isinstance(e, TextDelta))  # no empty deltas
    # a stop string from the middle of the text: two printable characters whose first occurrence is late
    start = next(i for i in range(len(full) // 2, len(full) - 1) if full[i : i + 2].isprintable())
    stop = full[start : start + 2]
    with running(model, model.tokenizer) as engine:
        job, stopped = new_job(ids, 40, SAMPLED, seed=3, stop=["never in this text \u2603", stop])
        engine.submit(job)
        stopped.wait()
    assert stopped.text == full[: full.find(stop)]
    finished = stopped.finished
    assert finished.reason == "stop" and finished.completion_tokens < 40
    # the stop is reached on the token that completes it
    assert stop in model.tokenizer.decode(tokens[: finished.completion_tokens])
    assert stop not in model.tokenizer.decode(tokens[: finished.completion_tokens - 1])


@pytest.mark.integration
def test_max_new_tokens_and_eos_end_a_row_with_the_right_reason(llama_model):
    model = llama_model
    ids = prompt_ids(model, PROMPTS[0])
    free = run_alone(model, ids, 30, SAMPLED, seed=11).tokens
    assert len(free) == 30
    one = run_alone(model, ids, 1, SAMPLED, seed=11)
    assert one.tokens == free[:1] and one.finished == Finished("length", len(ids), 1)
    k = next(k for k in range(3, 30) if free[k] not in free[:k])
    ended = run_alone(model, ids, 30, SAMPLED, seed=11, eos={free[k]})
    assert ended.tokens == free[:k] and ended.finished == Finished("stop", len(ids), k)
    at_once = run_alone(model, ids, 30, SAMPLED, seed=11, eos={free[0], 12345})
    assert at_once.events == [Finished("stop", len(ids), 0)]


@pytest.mark.integration
def test_cancelling_a_job_frees_its_row_for_the_others(llama_model):
    model = llama_model
    ids = [prompt_ids(model, p) for p in PROMPTS[:4]]
    steps: list[int] = []
    cancelled_events = Events()

    def emit(event):
        cancelled_events(event)
        if len(cancelled_events.events) == 3:
            cancelled.cancelled.set()  # the caller went away after 3 tokens

    cancelled, _ = new_job(ids[0], 80, SAMPLED, seed=1, emit=emit)
    other, other_events = new_job(ids[1], 20, SAMPLED, seed=2)
    waiting, waiting_events = new_job(ids[2], 10, SAMPLED, seed=3)  # needs a free row
    never, never_events = new_job(ids[3], 10, SAMPLED, seed=4)
    never.cancelled.set()  # cancelled while still queued
    with running(model, max_batch=2, steps=steps, jobs=[cancelled, other, never, waiting]) as engine:
        other_events.wait()
        waiting_events.wait()
    assert len(cancelled_events.events) == 3 and not cancelled_events.done.is_set()
    assert never_events.events == []
    assert other_events.tokens == reference(model.session, ids[1], 20, SAMPLED, 2)[0]
    assert waiting_events.tokens == reference(model.session, ids[2], 10, SAMPLED, 3)[0]
    assert engine.active == 0 and engine.queue_depth == 0
    # the waiting job took the cancelled job's row at once: its 10 tokens were done before the other's 20
    assert waiting_events.ended_at < other_events.ended_at
    assert max(steps) == 2


@pytest.mark.integration
def test_the_queue_limit_raises_queue_full_and_stop_finishes_the_queued_jobs(llama_model):
    model = llama_model
    ids = prompt_ids(model, PROMPTS[1])
    engine = GenerationEngine(model.session, IdTokenizer(), frozenset(), 1, 2, "test")  # not started
    jobs = [new_job(ids, 4) for _ in range(3)]
    engine.submit(jobs[0][0])
    engine.submit(jobs[1][0])
    assert engine.queue_depth == 2
    with pytest.raises(QueueFull):
        engine.submit(jobs[2][0])
    assert engine.queue_depth == 2
    engine.start()
    engine.stop(timeout=30)
    assert not engine._thread.is_alive()
    expected = greedy_generate(model.session, ids, 4, None)[0]
    for _, events in jobs[:2]:
        assert events.done.is_set() and events.tokens == expected
        assert events.finished == Finished("length", len(ids), 4)
    assert jobs[2][1].events == []


def test_gpt2_jobs_batched_together_equal_greedy_generate(gpt2_model):
    model = gpt2_model
    steps: list[int] = []
    specs = [prompt_ids(model, p) for p in PROMPTS[:4]]
    jobs = [new_job(ids, 6 + 3 * i) for i, ids in enumerate(specs)]
    with running(model, max_batch=8, steps=steps, jobs=[job for job, _ in jobs]) as engine:
        assert engine.can_pad and engine.max_batch == 8
        results = [events.wait() for _, events in jobs]
    assert max(steps) == 4
    for i, (ids, events) in enumerate(zip(specs, results, strict=True)):
        expected = greedy_generate(model.session, ids, 6 + 3 * i, None)[0]
        # (a tiny random GPT-2 may repeat one token: equality with the single-row loop is the check)
        assert events.tokens == expected


class WithoutMaskInputs:
    """A session as a model exported without ``attention_mask`` and ``position_ids`` looks to the engine: the
    wrapper fills them in itself for one unpadded sequence."""

    def __init__(self, session):
        self.session = session

    def get_inputs(self):
        return [i for i in self.session.get_inputs() if i.name not in ("attention_mask", "position_ids")]

    def get_outputs(self):
        return self.session.get_outputs()

    def run(self, names, feed, run_options=None):
        assert "attention_mask" not in feed and "position_ids" not in feed
        batch, n = feed["input_ids"].shape
        assert batch == 1, "an unpaddable model got a batch"
        past = feed["past_key_values.0.key"].shape[2]
        feed = dict(feed, attention_mask=np.ones((1, past + n), dtype=np.int64))
        feed["position_ids"] = np.arange(past, past + n, dtype=np.int64)[None, :]
        return self.session.run(names, feed, run_options)


def test_a_model_without_mask_inputs_runs_one_job_at_a_time_with_the_same_results(gpt2_model):
    model = gpt2_model
    steps: list[int] = []
    specs = [prompt_ids(model, p) for p in PROMPTS[:3]]
    engine = GenerationEngine(
        WithoutMaskInputs(model.session), IdTokenizer(), frozenset(), 8, 64, "test", steps.append
    )
    assert engine.max_batch == 1 and not engine.can_pad
    engine.start()
    jobs = [new_job(ids, 10) for ids in specs]
    for job, _ in jobs:
        engine.submit(job)
    results = [events.wait() for _, events in jobs]
    engine.stop(timeout=30)
    assert set(steps) == {1} and len(steps) == 3 * 10  # one prefill and 9 decode steps per job, never batched
    for ids, events in zip(specs, results, strict=True):
        assert events.tokens == greedy_generate(model.session, ids, 10, None)[0]
        assert events.tokens == reference(model.session, ids, 10, SamplingParams(), None)[0]


@pytest.mark.integration
def test_a_failing_job_gets_failed_and_the_engine_keeps_serving(llama_model):
    model = llama_model
    bad_ids = [model.tokenizer.get_vocab_size() + 5000] * 3  # outside the embedding table
    ids = prompt_ids(model, PROMPTS[1])
    with running(model) as engine:
        bad, bad_events = new_job(bad_ids, 5)
        engine.submit(bad)
        bad_events.wait()
        good, good_events = new_job(ids, 5)
        engine.submit(good)
        good_events.wait()
    assert len(bad_events.events) == 1 and isinstance(bad_events.events[0], Failed)
    assert bad_events.events[0].message.startswith("generation failed: ")
    assert good_events.tokens == greedy_generate(model.session, ids, 5, None)[0]


@pytest.mark.integration
def test_a_failing_admission_does_not_drop_the_rows_already_running(llama_model):
    model = llama_model
    ids = prompt_ids(model, PROMPTS[0])
    bad, bad_events = new_job([model.tokenizer.get_vocab_size() + 5000] * 3, 5)
    with running(model) as engine:
        running_events = Events()

        def emit(event):
            running_events(event)
            if len(running_events.events) == 2:
                engine.submit(bad)  # admitted while this row is mid-generation

        job, _ = new_job(ids, 30, SAMPLED, seed=5, emit=emit)
        engine.submit(job)
        bad_events.wait()
    assert isinstance(bad_events.events[-1], Failed)
    assert running_events.done.is_set(), f"the running job got {len(running_events.events)} events and no end"
    assert running_events.tokens == reference(model.session, ids, 30, SAMPLED, 5)[0]
