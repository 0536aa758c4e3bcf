"""PyTorch -> ONNX through optimum's exporter (tasks text-classification, text-generation-with-past)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

from adamix_deploy.contracts.errors import AdamixError

# a regression head is a one-output sequence classifier to optimum
OPTIMUM_TASKS = {
    "classification": "text-classification",
    "regression": "text-classification",
    "generation": "text-generation-with-past",
}


def export_onnx(model, tokenizer, task: str, folder: Path, opset: int) -> Path:
    """Write ``model.onnx`` (+ config and tokenizer files) into ``folder``; returns the model path.

    The model may hold static adapters (not a stock architecture): optimum exports from the instance."""
    from optimum.exporters.onnx import onnx_export_from_model

    # The tracer's warnings (python control flow in transformers' masking code) are expected and noisy.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("optimum").setLevel(logging.ERROR)
        try:
            onnx_export_from_model(
                model,
                folder,
                task=OPTIMUM_TASKS[task],
                opset=opset,
                preprocessors=[tokenizer],
                do_validation=False,
            )
        except (ValueError, KeyError, NotImplementedError) as e:
            raise AdamixError(f"ONNX export failed: {str(e).splitlines()[0]}") from None
    return folder / "model.onnx"
