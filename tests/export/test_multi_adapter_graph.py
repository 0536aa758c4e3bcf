"""The multi-adapter graph of a generation base (`ort_adapters.multi_adapter_graph`): each row of one onnxruntime
call runs its own LoRA adapter. The rewrite on hand-built graphs (and the bases that get none: a 2-D Gemm target,
head inputs); a tiny Llama base whose two graphs share one weights file; rows of three adapters of different
ranks in one batched call equal, row by row, each adapter on the base graph by run options (and, through the
model builder, each checkpoint's folded export); a GPT-2 base with LoRA on its Gemm keeps one adapter a call."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from adamix_deploy.contracts.export_folder import (
    ADAPTER_FILE,
    ADAPTER_INDEX_INPUT,
    ADAPTERS_FOLDER,
    MULTI_ADAPTER_FILE,
    read_adapter_manifest,
    read_manifest,
)
from adamix_deploy.exporters.ort_adapters import (
    HEAD,
    AdapterInput,
    add_adapter_inputs,
    multi_adapter_graph,
    multi_adapter_refusal,
)
from adamix_deploy.serving.engine.adapter_stack import AdapterStack, read_factors
from adamix_deploy.serving.engine.cache_layout import CacheLayout
from adamix_deploy.serving.engine.onnx_loops import ActiveAdapter, greedy_generate, open_session

from helpers.adapters import LLAMA_ADAPTERS, llama_adapter_base, lora_checkpoint

STEPS = 8
SAME_LENGTH = [[5, 9, 14, 3], [7, 2, 11, 4], [12, 5, 6, 8]]  # one batched call without padding


def _projection_graph(op: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x (batch x seq x 4) -> MatMul by Wᵀ -> y, or x (rows x 4) -> Gemm (transB) -> y: one LoRA target."""
    w = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)  # out x in, as PyTorch holds it
    if op == "MatMul":
        node, x_shape, y_shape, init = (
            helper.make_node("MatMul", ["x", "W"], ["y"]),
            ["b", "s", 4],
            ["b", "s", 6],
            w.T,
        )
    else:
        node, x_shape, y_shape, init = helper.make_node("Gemm", ["x", "W"], ["y"], transB=1), ["n", 4], ["n", 6], w
    graph = helper.make_graph(
        [node], "proj", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], [numpy_helper.from_array(init.copy(), "W")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), {"layer": w}


def test_the_rewrite_gathers_each_rows_factors_and_leaves_the_base_graph_alone():
    model, weights = _projection_graph("MatMul")
    inputs = add_adapter_inputs(model, weights, {})
    before = model.SerializeToString()
    assert multi_adapter_refusal(model, inputs) is None
    multi = multi_adapter_graph(model, inputs)
    assert model.SerializeToString() == before  # a pure function
    onnx.checker.check_model(multi)
    ops = [n.op_type for n in multi.graph.node]
    assert len(ops) == len(model.graph.node) + 2 and ops.count("Gather") == 2  # one Gather per factor
    assert [i.name for i in multi.graph.input] == [
        "x",
        ADAPTER_INDEX_INPUT,
        "layer.lora_a.stack",
        "layer.lora_b.stack",
    ]
    assert not [i for i in multi.graph.initializer if "lora" in i.name]  # the empty defaults went with the inputs

    rng = np.random.default_rng(1)
    factors = {r: (rng.normal(size=(4, r)).astype(np.float32), rng.normal(size=(r, 6)).astype(np.float32))
               for r in (1, 3)}  # fmt: skip
    stack = AdapterStack([vars(i) for i in inputs])
    for r, (a, b) in factors.items():
        stack.add(f"rank{r}", {"layer.lora_a": a, "layer.lora_b": b})
    x = rng.normal(size=(3, 5, 4)).astype(np.float32)
    session = ort.InferenceSession(multi.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x, **stack.row_inputs(["rank3", None, "rank1"])})[0]
    w = weights["layer"]
    expected = [x[0] @ w.T + x[0] @ factors[3][0] @ factors[3][1], x[1] @ w.T,
                x[2] @ w.T + x[2] @ factors[1][0] @ factors[1][1]]  # fmt: skip
    np.testing.assert_allclose(y, np.stack(expected), rtol=1e-5, atol=1e-5)


def test_a_gemm_target_or_a_head_input_gets_no_multi_adapter_graph():
    model, weights = _projection_graph("Gemm")
    inputs = add_adapter_inputs(model, weights, {})
    assert "adds to a Gemm, not a 3-D MatMul" in multi_adapter_refusal(model, inputs)
    head = [*inputs, AdapterInput("classifier.weight", HEAD, "classifier.weight", [4, "labels"])]
    assert "head inputs" in multi_adapter_refusal(model, head)


@pytest.fixture(scope="module")
def llama(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("multi-graph")
    return root, llama_adapter_base(tiny_llama, root)


def _external(model: onnx.ModelProto) -> dict[str, tuple]:
    return {
        i.name: tuple((e.key, e.value) for e in i.external_data)
        for i in model.graph.initializer
        if i.data_location == TensorProto.EXTERNAL
    }


def test_the_base_and_its_multi_adapter_graph_read_one_weights_file(llama):
    base = llama[0] / "base"
    info = read_manifest(base).adapter_base
    assert info.multi_adapter_file == MULTI_ADAPTER_FILE and info.multi_adapter_absent is None
    single = onnx.load(base / "model.onnx", load_external_data=False)
    multi = onnx.load(base / MULTI_ADAPTER_FILE, load_external_data=False)
    shared = _external(single)
    assert shared and _external(multi) == shared  # the same tensors at the same offsets of the same file
    assert {dict(v)["location"] for v in shared.values()} == {"model.onnx.data"}
    assert not [i for i in multi.graph.initializer if len(i.raw_data) > 1024]  # no weight copied into it
    lora = [i for i in info.inputs if i["kind"] == "lora_a"]
    assert len(lora) == 14  # the first adapter adapts o_proj: the base takes every layer
    assert len(multi.graph.node) == len(single.graph.node) + 2 * len(lora)
    assert (base / "model.onnx.data").stat().st_mode & 0o777 == (base / "model.onnx").stat().st_mode & 0o777
    for name in LLAMA_ADAPTERS:  # each export checked the adapter in a slot against run options
        parity = read_adapter_manifest(base / ADAPTERS_FOLDER / name).parity["multi_adapter"]
        stage = parity["stages"]["onnx_fp32_multi_adapter"]
        assert parity["reference"] == "onnx_fp32_adapter" and stage["greedy_tokens_identical"] == 1.0
        assert stage["max_abs_logit_diff"] <= 1e-5


def _batched_greedy(
    session, prompts: list[list[int]], extra: dict, steps: int
) -> tuple[list[list[int]], np.ndarray]:
    """Greedy decoding of equal-length prompts in one batch, every step one call: (tokens, prefill logits)."""
    layout, names = CacheLayout.of(session), [o.name for o in session.get_outputs()]
    rows, length = len(prompts), len(prompts[0])
    past = {k: np.repeat(v, rows, axis=0) for k, v in layout.empty().items()}
    ids, width, tokens, first = np.asarray(prompts, dtype=np.int64), 0, [[] for _ in prompts], None
    for _ in range(steps):
        feed = {**layout.token_feed(ids, np.full(rows, width), width), **past, **extra}
        out = dict(zip(names, session.run(names, feed), strict=True))
        first = out["logits"] if first is None else first
        next_ids = out["logits"][:, -1].argmax(-1)
        for row, token in enumerate(next_ids):
            tokens[row].append(int(token))
        past, width, ids = layout.presents(out), width + ids.shape[1], next_ids[:, None].astype(np.int64)
    assert width == length + steps - 1
    return tokens, first


def _multi_rows(base, names: list[str]) -> tuple[list[list[int]], np.ndarray]:
    stack = AdapterStack(read_manifest(base).adapter_base.inputs)
    for name in LLAMA_ADAPTERS:
        stack.add(name, read_factors(base / ADAPTERS_FOLDER / name / ADAPTER_FILE))
    session = open_session(base / MULTI_ADAPTER_FILE)
    return _batched_greedy(session, SAME_LENGTH, stack.row_inputs(names), STEPS)


def test_rows_of_three_adapters_in_one_call_equal_each_adapter_active_by_run_options(llama):
    base = llama[0] / "base"
    names = ["beta", "gamma", "alpha"]  # ranks 2, 8 and 4: stacked at rank 8
    tokens, logits = _multi_rows(base, names)
    session = open_session(base / "model.onnx")
    for row, name in enumerate(names):
        active = ActiveAdapter(base / ADAPTERS_FOLDER / name / ADAPTER_FILE)
        alone, first = _batched_greedy_with_options(session, SAME_LENGTH[row], active.run_options)
        np.testing.assert_allclose(logits[row], first, atol=1e-5, rtol=0)
        assert tokens[row] == alone
    assert len({tuple(t) for t in tokens}) == 3


def _batched_greedy_with_options(session, prompt, run_options) -> tuple[list[int], np.ndarray]:
    """One prompt on the base graph with its adapter active; the prefill logits of every position."""
    layout = CacheLayout.of(session)
    feed = {**layout.empty(), **layout.token_feed(np.asarray([prompt]), np.asarray([0]), 0)}
    first = session.run(["logits"], feed, run_options)[0][0]
    return greedy_generate(session, prompt, STEPS, None, run_options)[0], first


# the folded Llama exports run onnxruntime-genai's model builder, a subprocess
@pytest.mark.integration
def test_rows_of_three_adapters_in_one_call_equal_each_checkpoints_folded_export(llama):
    from adamix_deploy.exporters.pipeline import export_checkpoint

    root, checkpoints = llama
    names = ["alpha", "gamma", "beta"]
    tokens, logits = _multi_rows(root / "base", names)
    for row, name in enumerate(names):
        export_checkpoint(checkpoints[name], root / f"{name}-folded", greedy_steps=4)
        folded = open_session(root / f"{name}-folded" / "model.onnx")
        folded_tokens, folded_first = greedy_generate(folded, SAME_LENGTH[row], STEPS, None)
        assert tokens[row] == folded_tokens
        np.testing.assert_allclose(logits[row, -1], folded_first, atol=1e-4, rtol=0)


def test_a_gpt2_base_with_lora_on_its_gemm_keeps_one_adapter_a_call(tiny_gpt2, tmp_path):
    from adamix_deploy.exporters.adapter_export import export_adapter

    ckpt = lora_checkpoint(tiny_gpt2, tmp_path / "ckpt", 4, ("c_attn", "c_proj", "c_fc"), 1)
    export_adapter(ckpt, tmp_path / "base", name="every-layer", greedy_steps=4)
    info = read_manifest(tmp_path / "base").adapter_base
    assert info.multi_adapter_file is None and "adds to a Gemm" in info.multi_adapter_absent
    assert not (tmp_path / "base" / MULTI_ADAPTER_FILE).exists()
    assert not (tmp_path / "base" / "model.onnx.data").exists()  # the base graph stays one file
