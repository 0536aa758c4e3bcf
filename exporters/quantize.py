"""Reduced-precision copies of the optimised fp32 graph, for CPU serving. Each function writes one file and
returns the settings it used, which the manifest records (`OnnxInfo.quantization`).

- Encoders (classification, regression), `int8`: onnxruntime's dynamic quantisation (int8 weights, activations
  quantised at run time), with per-channel weight scales. On merged MiniLM-L6 SST-2 classifiers (872 dev
  sentences) per-channel agreed with fp32 on 98.05 % vs 96.33 % per-tensor (docs/benchmarks/quantization.md) and on
  97.36 % vs 96.90 % (docs/benchmarks/quantization.md), at the same speed (~1.9x fp32 at batch 1) and with no
  calibration data; the differences are within the noise of one dev set. `reduce_range` lowered agreement in
  both measurements on this VNNI CPU, so it stays off.
- Decoders through PyTorch's exporter (GPT-2, and any decoder the model builder does not take), `int8` /
  `int4` (`quantize_weight_only`): weight-only block quantisation through onnxruntime's
  `MatMulNBitsQuantizer` (its default algorithm: round-to-nearest per block, in C++), symmetric, block 32,
  `accuracy_level` 4 (int8 activations per block, int8 dot products: without it int8 weights ran 3-7x *slower*
  than fp32 on this CPU). The LM head and the embedding stay fp32: keeping the head fp32 was more accurate for
  every algorithm measured, and a tied head is one matrix with the embedding (`tied_weights`), so it costs no
  extra bytes. Dynamic int8 on a decoder was unusable (max |Δlogit| 9.2, greedy tokens identical on 0/4 prompts).
- Decoders by onnxruntime-genai's model builder (Llama family), `int8` / `int4` (`quantize_builder_decoder`,
  `BUILDER_DECODERS`): copies of the builder's fp32 graph, whose embedding gathers from the transposed LM head
  matrix. At batch 1 every token reads every MatMul weight, and the head (SmolLM2: 49152 x 576, 113 MB fp32) is
  the largest; the embedding reads one row. So the head may get its own MatMulNBits weight while the embedding
  keeps the fp32 matrix: more file, fewer bytes per token. Chosen on a SmolLM2-135M E2E LoRA (fp32 BLEU 53.4
  on 200 test MRs; benchmarks/generation_frontier, docs/benchmarks/generation.md): the fastest variant at batch 1
  whose BLEU stays within 0.5 of fp32, and whose export parity passes the warning threshold:
  - int8: RTN block 128 with an int8 head, 151 MB/token, 143 tokens/s against 40 for fp32 (median of 4 runs),
    BLEU -0.40 (95 % interval -1.82 to +1.00), export parity 98.5 % next-token agreement. Block 32 with an int8
    head reads the same bytes but ran at ~110 (its scales cost compute: it stays below the bandwidth ceiling)
    for -0.47; the fp32 head (the builder's own ``-p int8``) reads 233 MB/token, 84 tokens/s, -0.13.
  - int4: RTN block 32 symmetric with an int8 head, 98 MB/token, BLEU -5.1 (-7.6 to -2.6): no int4 variant
    came within 0.5, and this one scored best. The fp32 head scored -5.6 for 180 MB/token; block 64 -7.0 and
    block 128 -11.3 (576-wide projections pad K to 640 at block 128, so it reads more bytes than block 64);
    asymmetric RTN -12.7 and k-quant -15.0, though their weights' RMS error is lower (0.082 vs 0.085 of the
    weights' RMS). HQQ decoded 2 prompts in 87 s against 3-6 s for the others (its float zero points have no
    fast kernel here), too slow to serve.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

WEIGHT_ONLY = {"block_size": 32, "symmetric": True, "accuracy_level": 4, "algorithm": "RTN"}
WEIGHT_ONLY_METHOD = "weight-only MatMulNBits (onnxruntime.quantization.matmul_nbits_quantizer)"
BUILDER_LM_HEAD = "/lm_head/MatMul"  # onnxruntime-genai's builders/base.py make_lm_head
ALGORITHMS = ("RTN", "k_quant", "HQQ")


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
        "method": WEIGHT_ONLY_METHOD,
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


# -- the model builder's decoders ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecoderVariant:
    """How a builder decoder's weights are quantised. ``head_bits`` None keeps the LM head fp32; otherwise the
    head gets a MatMulNBits weight of its own while the embedding keeps gathering from the fp32 matrix (read one
    row per token, so it costs file size, not bytes per token). Algorithms: ``RTN`` (onnxruntime's default
    quantiser, round-to-nearest in C++, 4 or 8 bits), ``k_quant`` (its llama.cpp-style search, asymmetric,
    4 bits), ``HQQ`` (float zero points, 4 bits); the head, when quantised, is always RTN."""

    layers_bits: int
    head_bits: int | None = None
    block_size: int = 32
    algorithm: str = "RTN"
    symmetric: bool = True
    accuracy_level: int = 4

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algorithm!r}: choose from {', '.join(ALGORITHMS)}")
        if self.algorithm != "RTN" and (self.layers_bits != 4 or self.symmetric):
            raise ValueError(f"{self.algorithm} quantises to 4 bits with zero points (symmetric=False)")


# what --quantize int8 / int4 write for builder decoders: both with an int8 LM head (the module's docstring)
BUILDER_DECODERS = {"int8": DecoderVariant(8, 8, 128), "int4": DecoderVariant(4, 8)}


def quantize_builder_decoder(onnx_path: Path, output: Path, variant: DecoderVariant) -> dict:
    """Write ``variant`` of the model builder's fp32 graph ``onnx_path`` to ``output`` (its weights in
    ``<output name>.data`` beside it); returns the settings the manifest records. Only ``onnx_path``'s graph and
    weights are read: the fp32 file is left as it is."""
    import onnx

    model = onnx.load(str(onnx_path))
    head = BUILDER_LM_HEAD if any(n.name == BUILDER_LM_HEAD for n in model.graph.node) else None
    with _quiet():
        model = _quantize_matmuls(model, variant, variant.layers_bits, variant.algorithm, exclude=[head])
        if head and variant.head_bits:
            others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name != head]
            model = _quantize_matmuls(model, variant, variant.head_bits, "RTN", exclude=others)
    _set_accuracy_level(model, variant.accuracy_level)
    output.unlink(missing_ok=True)
    data = output.with_name(output.name + ".data")
    data.unlink(missing_ok=True)  # external data is appended to an existing file, never replaced
    onnx.save_model(model, str(output), save_as_external_data=True, location=data.name)
    shutil.copymode(output, data)  # onnx creates the data file owner-only; a served folder must be readable
    return decoder_settings(model, variant)


def _quantize_matmuls(model, variant: DecoderVariant, bits: int, algorithm: str, exclude: list):
    """One MatMulNBitsQuantizer pass over the MatMuls with a constant weight, but those in ``exclude``.
    (``nodes_to_include`` would not do for the head pass: the quantiser takes a node that is included *or* of
    a quantised op type.)"""
    nbits = matmul_nbits_module()
    exclude = [name for name in exclude if name]
    common = {"block_size": variant.block_size, "accuracy_level": variant.accuracy_level}
    if algorithm == "RTN":
        config = nbits.DefaultWeightOnlyQuantConfig(**common, is_symmetric=variant.symmetric, bits=bits)
    elif algorithm == "k_quant":
        config = nbits.KQuantWeightOnlyQuantConfig()
    else:
        config = nbits.HQQWeightOnlyQuantConfig(block_size=variant.block_size, bits=bits)
    quantizer = nbits.MatMulNBitsQuantizer(
        model, bits=bits, is_symmetric=variant.symmetric, nodes_to_exclude=exclude, algo_config=config, **common
    )
    quantizer.process()
    return quantizer.model.model


def _set_accuracy_level(model, level: int) -> None:
    """HQQ writes its MatMulNBits nodes without ``accuracy_level``; every variant is served with it (int8
    activations: without it the kernels fell back to slow paths here), so it is set on every node."""
    from onnx import helper

    for node in model.graph.node:
        if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
            node.attribute.append(helper.make_attribute("accuracy_level", level))


def decoder_settings(model, variant: DecoderVariant) -> dict:
    """The manifest's record of a quantised builder decoder, read back from its graph."""
    from onnx import helper

    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    head = next((n for n in model.graph.node if "logits" in n.output), None)
    if head is not None and head.op_type == "MatMulNBits":
        bits = next(helper.get_attribute_value(a) for a in head.attribute if a.name == "bits")
        lm_head = f"int{bits} (its own MatMulNBits weight)"
    else:
        lm_head = "fp32 (excluded)"
    transposed = any(
        n.op_type == "Transpose" and n.name.startswith("/model/embed_tokens") for n in model.graph.node
    )
    if not transposed:
        embedding = "fp32"
    elif lm_head.startswith("fp32"):
        embedding = "fp32, the transposed LM head matrix (shared)"
    else:
        embedding = "fp32, the transposed LM head matrix (read one row per token)"
    return {
        "method": WEIGHT_ONLY_METHOD,
        "bits": variant.layers_bits,
        **{k: v for k, v in asdict(variant).items() if k not in ("layers_bits", "head_bits")},
        "quantized_matmuls": len(nbits),
        "lm_head": lm_head,
        "embedding": embedding,
    }
