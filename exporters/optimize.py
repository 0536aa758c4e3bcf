"""onnxruntime's transformer graph optimisation (fusions, a tied LM head written once) and fp16 conversion."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

from adamix_deploy.exporters.tied_weights import share_tied_lm_head

# optimum's table of which fusion recipe fits which architecture (Llama/Mistral use GPT-2's).
FUSION_FAMILY = {
    "bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert", "electra": "bert",
    "gpt2": "gpt2", "llama": "gpt2", "mistral": "gpt2", "qwen2": "gpt2",
}  # fmt: skip


def _optimizer(onnx_path: Path, model_type: str, num_heads: int, hidden_size: int, separate_qkv: bool = False):
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    family = FUSION_FAMILY.get(model_type, "bert")
    options = FusionOptions(family)
    # MultiHeadAttention takes Q, K and V from their own MatMuls, where Attention packs the three weights
    # into one: adapter graphs need the MatMuls apart to add LoRA branches to them
    options.use_multi_head_attention = separate_qkv
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        optimized = optimize_model(
            str(onnx_path),
            model_type=family,
            num_heads=num_heads,
            hidden_size=hidden_size,
            optimization_options=options,
        )
    return optimized


def optimize_graph(onnx_path: Path, output: Path, model_type: str, num_heads: int, hidden_size: int) -> dict:
    """Fuse attention, layer norm, GELU etc. and write a tied LM head once; returns the fused-operator counts."""
    optimized = _optimizer(onnx_path, model_type, num_heads, hidden_size)
    fusions = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    tied = share_tied_lm_head(optimized.model)  # undo the optimiser's transposed copy of the embedding
    if tied:
        fusions["FusedMatMul (tied LM head)"] = tied
    optimized.save_model_to_file(str(output))
    return fusions


def optimize_adapter_base(
    onnx_path: Path,
    output: Path,
    model_type: str,
    num_heads: int,
    hidden_size: int,
    lora_weights: dict,
    replaced: dict,
) -> tuple[list, dict]:
    """`optimize_graph` for a base of onnxruntime LoRA adapters: the same fusions with Q/K/V kept apart, then
    the LoRA, head and bottleneck tensors made graph inputs (`ort_adapters.add_adapter_inputs`). Returns the inputs and the
    fused-operator counts."""
    from adamix_deploy.exporters.ort_adapters import add_adapter_inputs

    optimized = _optimizer(onnx_path, model_type, num_heads, hidden_size, separate_qkv=True)
    fusions = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    tied = share_tied_lm_head(optimized.model)
    if tied:
        fusions["FusedMatMul (tied LM head)"] = tied
    inputs = add_adapter_inputs(optimized.model, lora_weights, replaced)
    optimized.save_model_to_file(str(output))
    return inputs, fusions


def convert_fp16(onnx_path: Path, output: Path, model_type: str, num_heads: int, hidden_size: int) -> None:
    """float16 weights and compute, float32 inputs and outputs (for GPU serving). The tied LM head is not
    shared here: onnxruntime's CPU provider (where parity runs) has no float16 FusedMatMul kernel."""
    optimized = _optimizer(onnx_path, model_type, num_heads, hidden_size)
    optimized.convert_float_to_float16(keep_io_types=True)
    optimized.save_model_to_file(str(output))
