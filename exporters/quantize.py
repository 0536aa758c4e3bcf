"""Reduced-precision copies of the optimised fp32 graph, for CPU serving. Each function writes one file and
returns the settings it used, which the manifest records (`OnnxInfo.quantization`).

- Encoders (classification, regression), `int8`: onnxruntime's dynamic quantisation (int8 weights, activations
  quantised at run time), with per-channel weight scales. On merged MiniLM-L6 SST-2 classifiers (872 dev
  sentences) per-channel agreed with fp32 on 98.05 % vs 96.33 % per-tensor (docs/benchmarks/quantization.md) and on
  97.36 % vs 96.90 % (docs/benchmarks/quantization.md), at the same speed (~1.9x fp32 at batch 1) and with no
  calibration data; the differences are within the noise of one dev set. `reduce_range` lowered agreement in
  both measurements on this VNNI CPU, so it stays off.
- Decoders (generation), `int8` / `int4`: weight-only block quantisation through onnxruntime's
  `MatMulNBitsQuantizer` (its default algorithm: round-to-nearest per block, in C++), symmetric, block 32,
  `accuracy_level` 4 (int8 activations per block, int8 dot products: without it int8 weights ran 3-7x *slower*
  than fp32 on this CPU). The LM head and the embedding stay fp32: keeping the head fp32 was more accurate for
  every algorithm measured, and a tied head is one matrix with the embedding (`tied_weights`), so it costs no
  extra bytes. Dynamic int8 on a decoder was unusable (max |Δlogit| 9.2, greedy tokens identical on 0/4 prompts).
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

WEIGHT_ONLY = {"block_size": 32, "symmetric": True, "accuracy_level": 4, "algorithm": "RTN"}


@contextlib.contextmanager
def _quiet():
    """The quantisers log one line per tensor whose type they cannot infer, on the root logger (hundreds)."""
    root_level = logging.root.level
    logging.root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.root.setLevel(root_level)


def quantize_model(onnx_path: Path, output: Path, precision: str, task: str) -> dict:
    """Write the ``precision`` (int8 | int4) copy of ``onnx_path`` for ``task``; returns its settings."""
    if task == "generation":
        return quantize_weight_only(onnx_path, output, bits=8 if precision == "int8" else 4)
    return quantize_dynamic_int8(onnx_path, output)  # the pipeline admits only int8 for encoders


def quantize_dynamic_int8(onnx_path: Path, output: Path) -> dict:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = {"method": "dynamic", "weights": "int8", "per_channel": True, "reduce_range": False}
    with _quiet():
        quantize_dynamic(
            str(onnx_path),
            str(output),
            weight_type=QuantType.QInt8,
            per_channel=settings["per_channel"],
            reduce_range=settings["reduce_range"],
            # shape inference cannot type the outputs of fused contrib ops (Attention, SkipLayerNorm): float
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return settings


def matmul_nbits_module():
    """onnxruntime's matmul_nbits_quantizer calls `logging.basicConfig(level=INFO)` when imported, which would
    print every later INFO line of the process (the optimiser's fusions among them): undo that."""
    handlers, level = list(logging.root.handlers), logging.root.level
    from onnxruntime.quantization import matmul_nbits_quantizer

    for handler in [h for h in logging.root.handlers if h not in handlers]:
        logging.root.removeHandler(handler)
    logging.root.setLevel(level)
    return matmul_nbits_quantizer


def quantize_weight_only(onnx_path: Path, output: Path, bits: int) -> dict:
    import onnx

    nbits = matmul_nbits_module()
    model = onnx.load(str(onnx_path))
    head = lm_head_matmul(model)  # None when tied: the head is then a FusedMatMul the quantiser never touches
    config = nbits.DefaultWeightOnlyQuantConfig(
        block_size=WEIGHT_ONLY["block_size"],
        is_symmetric=WEIGHT_ONLY["symmetric"],
        accuracy_level=WEIGHT_ONLY["accuracy_level"],
        bits=bits,
    )
    with _quiet():
        quantizer = nbits.MatMulNBitsQuantizer(
            model,
            bits=bits,
            block_size=WEIGHT_ONLY["block_size"],
            is_symmetric=WEIGHT_ONLY["symmetric"],
            accuracy_level=WEIGHT_ONLY["accuracy_level"],
            nodes_to_exclude=[head] if head else [],
            algo_config=config,
        )
        quantizer.process()
    quantized = quantizer.model.model
    onnx.save_model(quantized, str(output))
    count = sum(node.op_type == "MatMulNBits" for node in quantized.graph.node)
    tied = any(node.op_type == "FusedMatMul" and node.name.endswith("_tied") for node in quantized.graph.node)
    return {
        "method": "weight-only MatMulNBits (onnxruntime.quantization.matmul_nbits_quantizer)",
        "bits": bits,
        **WEIGHT_ONLY,
        "quantized_matmuls": count,
        "lm_head": "fp32, one matrix with the embedding (tied)" if tied else "fp32 (excluded)",
        "embedding": "fp32",
    }


def lm_head_matmul(model) -> str | None:
    """The name of the MatMul with a constant weight that produces the ``logits`` output, if there is one."""
    initializers = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if "logits" in node.output and node.op_type == "MatMul" and node.input[1] in initializers:
            return node.name
    return None
