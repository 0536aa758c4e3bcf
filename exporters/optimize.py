"""onnxruntime's transformer graph optimisation (fusions), dynamic int8 quantisation and fp16 conversion."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

# optimum's table of which fusion recipe fits which architecture (Llama/Mistral use GPT-2's).
FUSION_FAMILY = {
    "bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert", "electra": "bert",
    "gpt2": "gpt2", "llama": "gpt2", "mistral": "gpt2", "qwen2": "gpt2",
}  # fmt: skip


def _optimizer(onnx_path: Path, model_type: str, num_heads: int, hidden_size: int):
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        return optimize_model(
            str(onnx_path),
            model_type=FUSION_FAMILY.get(model_type, "bert"),
            num_heads=num_heads,
            hidden_size=hidden_size,
        )


def optimize_graph(onnx_path: Path, output: Path, model_type: str, num_heads: int, hidden_size: int) -> dict:
    """Fuse attention, layer norm, GELU etc.; returns the fused-operator counts."""
    optimized = _optimizer(onnx_path, model_type, num_heads, hidden_size)
    optimized.save_model_to_file(str(output))
    return {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}


def convert_fp16(onnx_path: Path, output: Path, model_type: str, num_heads: int, hidden_size: int) -> None:
    """float16 weights and compute, float32 inputs and outputs (for GPU serving)."""
    optimized = _optimizer(onnx_path, model_type, num_heads, hidden_size)
    optimized.convert_float_to_float16(keep_io_types=True)
    optimized.save_model_to_file(str(output))


def quantize_int8(onnx_path: Path, output: Path) -> None:
    """Dynamic int8 quantisation of the weights (activations quantised at run time): for CPU serving."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantiser warns on the root logger once per tensor whose type it cannot infer (hundreds of lines).
    root_level = logging.root.level
    logging.root.setLevel(logging.ERROR)
    # Shape inference cannot type the outputs of fused contrib ops (Attention, SkipLayerNorm): they are float.
    try:
        quantize_dynamic(
            str(onnx_path),
            str(output),
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        logging.root.setLevel(root_level)
