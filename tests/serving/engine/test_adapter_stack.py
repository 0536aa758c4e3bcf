"""Rows of different LoRA adapters of one base in one onnxruntime call: the `AdapterStack` (slots, rank padding,
arrays never changed under a call), one `GenerationEngine` decoding every adapter's rows together equal to each
adapter alone on the base graph with its run options, and the server's runtimes sharing that engine while
adapters load and unload under a mixed load. A base without a multi-adapter graph keeps one engine per adapter.
All in process, over tiny Llama adapter bases exported from PyTorch (no subprocess)."""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest

from adamix_deploy.contracts.export_folder import (
    ADAPTER_FILE,
    ADAPTER_INDEX_INPUT,
    ADAPTERS_FOLDER,
    MANIFEST_NAME,
    MULTI_ADAPTER_FILE,
)
from adamix_deploy.serving.engine.adapter_stack import AdapterStack
from adamix_deploy.serving.engine.generation import GenerationEngine, GenerationJob
from adamix_deploy.serving.engine.model_folder import read_adapter, read_adapter_folders, read_model_folder
from adamix_deploy.serving.engine.onnx_loops import ActiveAdapter, greedy_generate, open_session
from adamix_deploy.serving.engine.runtime import ModelRuntime, ServerSettings
from adamix_deploy.serving.engine.sampling import SamplingParams
from adamix_deploy.serving.metrics import ServerMetrics

from helpers.adapters import PROMPTS, llama_adapter_base
from helpers.engine import Events, IdTokenizer

STEPS = 12


@pytest.fixture(scope="module")
def base(tiny_llama, tmp_path_factory):
    """A tiny Llama base with adapters alpha (rank 4), beta (rank 2) and gamma (rank 8, one more layer)."""
    root = tmp_path_factory.mktemp("multi-adapter")
    llama_adapter_base(tiny_llama, root)
    return root / "base"


@pytest.fixture(scope="module")
def references(base) -> dict[tuple[str, int], list[int]]:
    """Each adapter alone on the base graph, active by run options: greedy tokens of each prompt."""
    session = open_session(base / "model.onnx")
    out = {}
    for name in ("alpha", "beta", "gamma"):
        active = ActiveAdapter(base / ADAPTERS_FOLDER / name / ADAPTER_FILE)
        for p, prompt in enumerate(PROMPTS):
            out[name, p] = greedy_generate(session, prompt, STEPS, None, active.run_options)[0]
    return out


def _inputs(d_in=3, d_out=5, modules=("m0", "m1")) -> list[dict]:
    return [
        {"name": f"{m}.lora_{k}", "kind": f"lora_{k}", "module": m, "shape": shape}
        for m in modules
        for k, shape in (("a", [d_in, f"rank_{m}"]), ("b", [f"rank_{m}", d_out]))
    ]


def _factors(rank: int, seed: int, modules=("m0", "m1")) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for m in modules:
        out[f"{m}.lora_a"] = rng.normal(size=(3, rank)).astype(np.float32)
        out[f"{m}.lora_b"] = rng.normal(size=(rank, 5)).astype(np.float32)
    return out


def test_the_stack_pads_ranks_grows_reuses_slots_zeroed_and_never_changes_arrays_it_handed_out():
    stack = AdapterStack(_inputs(), slots=3)
    two, four = _factors(2, 0), _factors(4, 1, modules=("m0",))  # four adapts m0 only
    stack.add("two", two)
    assert stack.shape == (3, 2)
    before = stack.row_inputs(["two", None, "gone"])
    assert before[ADAPTER_INDEX_INPUT].tolist() == [1, 0, 0]  # no adapter and an unloaded one: slot 0, zeros
    snapshot = {k: v.copy() for k, v in before.items()}
    stack.add("four", four)
    assert stack.shape == (3, 4)  # the rank grew to the widest; slots were enough
    feeds = stack.row_inputs(["four", "two"])
    a, b = feeds["m0.lora_a.stack"], feeds["m0.lora_b.stack"]
    np.testing.assert_array_equal(a[2], four["m0.lora_a"])
    np.testing.assert_array_equal(a[1], np.pad(two["m0.lora_a"], ((0, 0), (0, 2))))  # zero columns
    np.testing.assert_array_equal(b[1], np.pad(two["m0.lora_b"], ((0, 2), (0, 0))))  # zero rows
    assert not feeds["m1.lora_a.stack"][2].any() and not a[0].any()  # m1 unadapted by four; slot 0
    x = np.ones((1, 3), np.float32)  # the padding adds nothing
    np.testing.assert_allclose(x @ a[1] @ b[1], x @ two["m0.lora_a"] @ two["m0.lora_b"], rtol=1e-6)
    stack.remove("two")
    stack.add("again", _factors(1, 2, modules=("m1",)))  # takes slot 1, zeroed first: no stale m0 factors
    after = stack.row_inputs(["again"])
    assert after[ADAPTER_INDEX_INPUT].tolist() == [1] and not after["m0.lora_a.stack"][1].any()
    for extra in ("five", "six"):
        stack.add(extra, _factors(2, 3))
    assert stack.shape == (6, 4) and stack.adapters == ["again", "five", "four", "six"]
    for key, value in snapshot.items():  # what a call in flight holds stays as it was
        np.testing.assert_array_equal(before[key], value)
    with pytest.raises(ValueError, match="already has a slot"):
        stack.add("four", four)
    with pytest.raises(ValueError, match="takes no input"):
        stack.add("odd", {"m9.lora_a": np.zeros((3, 1), np.float32)})


def test_one_engine_decodes_rows_of_every_adapter_together_equal_to_each_adapter_alone(base, references):
    model = read_model_folder(base)
    assert model.onnx_file == MULTI_ADAPTER_FILE
    adapters = read_adapter_folders(model)
    for adapter in adapters:
        adapter.load(threads=1, gpu=False)
    stack = model.stack
    assert stack.adapters == ["alpha", "beta", "gamma"] and stack.shape[1] == 8
    steps: list[int] = []
    engine = GenerationEngine(model.session, IdTokenizer(), frozenset(), 8, 64, "test", on_step=steps.append,
                              row_inputs=stack.row_inputs)  # fmt: skip
    plan = [(name, p) for p in range(len(PROMPTS)) for name in ("alpha", "beta", "gamma")]
    jobs = []
    for name, p in plan:
        events = Events()
        engine.submit(GenerationJob(list(PROMPTS[p]), STEPS, SamplingParams(), None, [], events, adapter=name))
        jobs.append(((name, p), events))
    engine.start()
    try:
        results = {key: events.wait().tokens for key, events in jobs}
    finally:
        engine.stop()
    assert max(steps) == 8  # decode steps held rows of all three adapters
    assert results == {key: references[key] for key in results}


async def _start(model) -> ModelRuntime:
    runtime = ModelRuntime(model, ServerSettings(threads=1, max_generation_batch=6), ServerMetrics())
    await runtime.start()
    return runtime


async def _text(runtime: ModelRuntime, prompt: list[int], tokens: int = STEPS) -> str:
    return (await runtime.generate_text(prompt, tokens, SamplingParams())).text


def test_runtimes_share_one_engine_while_adapters_load_and_unload_under_a_mixed_load(base):
    long = 40  # new tokens per request: enough for the load and the unload to land while rows decode

    async def scenario():
        model = read_model_folder(base)
        adapters = {a.name: a for a in read_adapter_folders(model)}
        runtimes = {name: await _start(adapters[name]) for name in ("alpha", "beta")}
        assert runtimes["alpha"].engine is runtimes["beta"].engine
        alone = {(name, p): await _text(runtimes[name], PROMPTS[p], long) for name in runtimes for p in range(4)}
        # gamma comes from a folder of its own, as POST /v1/adapters loads one
        gamma_model = read_adapter(model, base / ADAPTERS_FOLDER / "gamma", name="gamma")
        keys = [(name, p) for p in range(4) for name in runtimes] * 2
        running = [asyncio.create_task(_text(runtimes[name], PROMPTS[p], long)) for name, p in keys]
        await asyncio.sleep(0.02)
        engine = runtimes["alpha"].engine
        busy_at_load = engine.active + engine.queue_depth
        runtimes["gamma"] = await _start(gamma_model)  # loads while the others decode
        gamma = [asyncio.create_task(_text(runtimes["gamma"], PROMPTS[p], long)) for p in range(4)]
        beta_in_flight = runtimes["beta"]._in_flight
        drained = await runtimes["beta"].drain_and_stop(30)  # unloads while its own rows decode
        assert drained and model.stack.adapters == ["alpha", "gamma"]
        mixed = await asyncio.gather(*running)
        gamma_texts = await asyncio.gather(*gamma)
        gamma_alone = [await _text(runtimes["gamma"], PROMPTS[p], long) for p in range(4)]
        shared = runtimes["alpha"].engine is runtimes["gamma"].engine
        for name in ("alpha", "gamma"):
            await runtimes[name].stop()
        left = model.stack.adapters
        return alone, keys, mixed, gamma_texts, gamma_alone, shared, left, busy_at_load, beta_in_flight

    alone, keys, mixed, gamma_texts, gamma_alone, shared, left, busy_at_load, beta_in_flight = asyncio.run(
        scenario()
    )
    assert busy_at_load > 0 and beta_in_flight > 0  # both happened under load
    assert alone["alpha", 0] != alone["beta", 0]  # the adapters differ: each row read its own slot
    assert shared and left == []
    assert mixed == [alone[key] for key in keys]
    assert gamma_texts == gamma_alone


def test_a_base_without_a_multi_adapter_graph_serves_each_adapter_on_its_own_engine(base, tmp_path, references):
    """A base written before multi-adapter graphs: its manifest names none, so the server opens model.onnx and
    gives each adapter its run options and an engine of its own, as before."""
    old = tmp_path / "old-base"
    shutil.copytree(base, old)
    manifest = json.loads((old / MANIFEST_NAME).read_text())
    for key in ("multi_adapter_file", "multi_adapter_absent"):
        del manifest["adapter_base"][key]
    (old / MANIFEST_NAME).write_text(json.dumps(manifest))

    async def scenario():
        model = read_model_folder(old)
        assert model.onnx_file == "model.onnx"
        runtimes = {a.name: await _start(a) for a in read_adapter_folders(model)}
        assert model.stack is None and runtimes["alpha"].engine is not runtimes["beta"].engine
        assert runtimes["alpha"].model.run_options is not None
        texts = await asyncio.gather(*(_text(runtimes[n], PROMPTS[0]) for n in ("alpha", "beta", "gamma")))
        for runtime in runtimes.values():
            await runtime.stop()
        return texts, runtimes["alpha"].model.tokenizer

    texts, tokenizer = asyncio.run(scenario())
    for name, text in zip(("alpha", "beta", "gamma"), texts, strict=True):
        assert text == tokenizer.decode(references[name, 0])
