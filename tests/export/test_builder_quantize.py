"""Quantised copies of a model builder decoder graph (`exporters.quantize.quantize_builder_decoder`) on a tiny
hand-built graph laid out as the builder writes a tied model: the embedding gathers from the transposed LM head
matrix, the head is ``/lm_head/MatMul``, the weights are in ``model.onnx.data``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from adamix_deploy.exporters.quantize import BUILDER_DECODERS, DecoderVariant, quantize_builder_decoder
from adamix_deploy.serving.engine.onnx_loops import open_session

HIDDEN, VOCAB = 64, 96


@pytest.fixture(scope="module")
def builder_graph(tmp_path_factory):
    """ids -> Gather(Transpose(W)) -> MatMul(., L) -> MatMul(., W) -> logits, written with external data."""
    rng = np.random.default_rng(0)
    head = rng.normal(size=(HIDDEN, VOCAB)).astype(np.float32)
    layer = rng.normal(scale=0.2, size=(HIDDEN, HIDDEN)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["lm_head.MatMul.weight"], ["E"], name="/model/embed_tokens/Transpose",
                         perm=[1, 0]),
        helper.make_node("Gather", ["E", "input_ids"], ["h"], name="/model/embed_tokens/Gather"),
        helper.make_node("MatMul", ["h", "layer.weight"], ["x"], name="/model/layers.0/mlp/down_proj/MatMul"),
        helper.make_node("MatMul", ["x", "lm_head.MatMul.weight"], ["logits"], name="/lm_head/MatMul"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "builder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "n"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "n", VOCAB])],
        [numpy_helper.from_array(head, "lm_head.MatMul.weight"), numpy_helper.from_array(layer, "layer.weight")],
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    path = tmp_path_factory.mktemp("builder") / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    return path


def _logits(path, ids=(3, 17, 95, 0)) -> np.ndarray:
    return open_session(path).run(["logits"], {"input_ids": np.array([ids], dtype=np.int64)})[0]


def _attributes(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_int4_layers_with_an_int8_head_keep_the_embedding_on_the_fp32_matrix(builder_graph, tmp_path):
    before = builder_graph.with_name("model.onnx.data").read_bytes()
    output = tmp_path / "model_int4.onnx"
    settings = quantize_builder_decoder(builder_graph, output, DecoderVariant(4, 8))
    assert (tmp_path / "model_int4.onnx.data").is_file()
    model = onnx.load(str(output))
    nodes = {n.name: n for n in model.graph.node}
    layer, head = nodes["/model/layers.0/mlp/down_proj/MatMul_Q4"], nodes["/lm_head/MatMul_Q8"]
    assert layer.op_type == head.op_type == "MatMulNBits"
    assert _attributes(layer) | {"N": 0} == {"K": HIDDEN, "N": 0, "bits": 4, "block_size": 32, "accuracy_level": 4}
    assert _attributes(head) == {"K": HIDDEN, "N": VOCAB, "bits": 8, "block_size": 32, "accuracy_level": 4}
    # the embedding still gathers from the fp32 matrix, which the head no longer reads
    assert list(nodes["/model/embed_tokens/Transpose"].input) == ["lm_head.MatMul.weight"]
    assert "lm_head.MatMul.weight" not in head.input
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert weights["lm_head.MatMul.weight"].dtype == np.float32
    assert settings == {
        "method": "weight-only MatMulNBits (onnxruntime.quantization.matmul_nbits_quantizer)",
        "bits": 4, "block_size": 32, "algorithm": "RTN", "symmetric": True, "accuracy_level": 4,
        "quantized_matmuls": 2, "lm_head": "int8 (its own MatMulNBits weight)",
        "embedding": "fp32, the transposed LM head matrix (read one row per token)",
    }  # fmt: skip
    reference, quantized = _logits(builder_graph), _logits(output)
    assert np.abs(quantized - reference).max() < 0.1 * np.abs(reference).max()
    assert builder_graph.with_name("model.onnx.data").read_bytes() == before  # the fp32 file is left alone


def test_a_head_kept_fp32_stays_one_matrix_with_the_embedding(builder_graph, tmp_path):
    output = tmp_path / "model_int8.onnx"
    settings = quantize_builder_decoder(builder_graph, output, DecoderVariant(8))
    model = onnx.load(str(output))
    head = next(n for n in model.graph.node if "logits" in n.output)
    assert head.op_type == "MatMul" and head.input[1] == "lm_head.MatMul.weight"
    assert [n.op_type for n in model.graph.node].count("MatMulNBits") == settings["quantized_matmuls"] == 1
    assert settings["lm_head"] == "fp32 (excluded)"
    assert settings["embedding"] == "fp32, the transposed LM head matrix (shared)"
    reference = _logits(builder_graph)
    assert settings["bits"] == 8 and np.abs(_logits(output) - reference).max() < 0.02 * np.abs(reference).max()


def test_k_quant_layers_carry_zero_points_and_the_accuracy_level(builder_graph, tmp_path):
    output = tmp_path / "model_int4.onnx"
    settings = quantize_builder_decoder(builder_graph, output, DecoderVariant(4, 8, algorithm="k_quant",
                                                                              symmetric=False))  # fmt: skip
    layer = next(n for n in onnx.load(str(output)).graph.node if n.input[0] == "h")
    assert layer.op_type == "MatMulNBits" and len(layer.input) == 4  # zero points
    assert _attributes(layer)["accuracy_level"] == 4 and settings["algorithm"] == "k_quant"
    assert _logits(output).shape == (1, 4, VOCAB)


def test_variants_the_quantisers_cannot_write_are_refused():
    with pytest.raises(ValueError, match="4 bits with zero points"):
        DecoderVariant(8, algorithm="k_quant", symmetric=False)
    with pytest.raises(ValueError, match="4 bits with zero points"):
        DecoderVariant(4, algorithm="HQQ")
    with pytest.raises(ValueError, match="unknown algorithm"):
        DecoderVariant(4, algorithm="GPTQ")
    assert set(BUILDER_DECODERS) == {"int8", "int4"}
    assert BUILDER_DECODERS["int8"].layers_bits == 8 and BUILDER_DECODERS["int4"].layers_bits == 4
