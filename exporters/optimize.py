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


def _optimizer(onnx_path: Path, model_type: str, num_heads: int, hidden_size: int):
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        optimized = optimize_model(
            str(onnx_path),
            model_type=FUSION_FAMILY.get(model_type, "bert"),
            num_heads=num_heads,
            hidden_size=hidden_size,
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


def convert_fp16(onnx_path: Path, output: Path, model_type: str, num_heads: int, hidden_size: int) -> None:
    """float16 weights and compute, float32 inputs and outputs (for GPU serving). The tied LM head is not
    shared here: onnxruntime's CPU provider (where parity runs) has no float16 FusedMatMul kernel."""
    optimized = _optimizer(onnx_path, model_type, num_heads, hidden_size)
    optimized.convert_float_to_float16(keep_io_types=True)
    optimized.save_model_to_file(str(output))
