"""Decoders that onnxruntime-genai's model builder supports, built from the merged Hugging Face folder.

The builder writes fused graphs (GroupQueryAttention with rotary embedding inside, SkipSimplifiedLayerNorm,
packed QKV, MatMulNBits for int8/int4) and a ``genai_config.json``; its fp32 config is put at the export
folder's root, so the folder also opens as is with ``onnxruntime_genai.Model(folder)``. It runs as a subprocess
(``python -m onnxruntime_genai.models.builder``): the module rewrites ``sys.path`` and prints progress, and a
subprocess keeps both out of the exporter's process.

The builder writes the fp32 graph only, with these options (its 0.18 names):
- ``filename``: our file name (`ONNX_FILES`), with its ``.data`` file of weights beside it.
- ``shared_embeddings`` for tied models: the embedding is a Gather on the transposed LM head, so SmolLM2's
  113 MB matrix is stored once, not twice.

int8 / int4 are quantised copies of that fp32 graph (`quantize.quantize_builder_decoder` with
`quantize.BUILDER_DECODERS`, one quantiser pass per bit width, no second builder run): MatMulNBits weights,
the LM head its own MatMulNBits weight where the measurements chose so, the embedding always gathering from the
fp32 matrix (one row per token).

What it does not write, we keep ours: ``config.json``, the tokenizer files (the builder re-saves the tokenizer
through transformers; the server reads ours) and the manifest.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.contracts.export_folder import GENAI_CONFIG_FILE, ONNX_FILES, TOKENIZER_FILE, ToolRecord
from adamix_deploy.exporters.quantize import (
    BUILDER_DECODERS,
    decoder_settings,
    quantize_builder_decoder,
)

# create_model's architectures (onnxruntime_genai/models/builder.py, 0.18) that are plain text decoders of the
# families our training loads; multimodal, MoE and remote-code ones stay on the torch path.
BUILDER_ARCHITECTURES = frozenset({
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM",
    "PhiForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "GraniteForCausalLM",
    "OlmoForCausalLM", "NemotronForCausalLM", "SmolLM3ForCausalLM",
})  # fmt: skip
BUILDER_PRECISIONS = ("fp32", "int8", "int4")  # fp32 by the builder, int8 / int4 quantised from it
# the fused operators the manifest counts (`OnnxInfo.fusions`)
FUSED_OPS = (
    "GroupQueryAttention", "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", "MatMulNBits",
    "RotaryEmbedding", "GatherBlockQuantized",
)  # fmt: skip
_ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception)\b|^error:", re.IGNORECASE)


def builder_version() -> str | None:
    """The installed onnxruntime-genai's version, or None when it is not installed (`[train]` brings it; a
    platform without its wheel exports every decoder through PyTorch)."""
    if importlib.util.find_spec("onnxruntime_genai") is None:
        return None
    return importlib.metadata.version("onnxruntime-genai")


def builds(merged) -> bool:
    """Whether this merged decoder goes to the builder: a supported architecture, no static adapters (the
    builder would read the stock weights only) and onnxruntime-genai installed."""
    architecture = (getattr(merged.config, "architectures", None) or [None])[0]
    return (
        architecture in BUILDER_ARCHITECTURES and not has_static_adapters(merged) and builder_version() is not None
    )


def builder_options(tied: bool) -> dict[str, str]:
    """The builder's ``--extra_options`` for the fp32 graph."""
    return {"filename": ONNX_FILES["fp32"], "shared_embeddings": str(tied).lower()}


def build_onnx(merged_folder: Path, folder: Path, precisions: list[str], tied: bool) -> dict[str, ToolRecord]:
    """Write the fp32 graph (``ONNX_FILES``, with its ``.data``) and its ``genai_config.json`` into ``folder``,
    then each requested int8 / int4 copy of it; returns the tool record of each file."""
    import onnxruntime

    work = folder / ".builder-fp32"
    options = builder_options(tied)
    _run_builder(merged_folder, work, "fp32", options)
    fp32 = ONNX_FILES["fp32"]
    for item in (fp32, f"{fp32}.data", GENAI_CONFIG_FILE):
        shutil.move(str(work / item), folder / item)
    shutil.rmtree(work)
    config = json.loads((folder / GENAI_CONFIG_FILE).read_text())
    pin_cache_shapes(folder / fp32, config["model"]["decoder"]["head_size"])  # the copies inherit the shapes
    records = {
        "fp32": ToolRecord(
            tool=f"onnxruntime-genai model builder {builder_version()}",
            options={"precision": "fp32", "execution_provider": "cpu", "extra_options": options},
        )
    }
    for precision in [p for p in precisions if p != "fp32"]:
        settings = quantize_builder_decoder(
            folder / fp32, folder / ONNX_FILES[precision], BUILDER_DECODERS[precision]
        )
        records[precision] = ToolRecord(
            tool=f"onnxruntime.quantization ({onnxruntime.__version__})", options={"source": fp32, **settings}
        )
    return records


def _run_builder(merged_folder: Path, work: Path, precision: str, options: dict[str, str]) -> None:
    work.mkdir(parents=True)
    command = [
        sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(merged_folder), "-o", str(work),
        "-p", precision, "-e", "cpu", "-c", str(work / "cache"),
        "--extra_options", *(f"{k}={v}" for k, v in options.items()),
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    log = work / "builder.log"
    with open(log, "wb") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        raise AdamixError(f"onnxruntime-genai's model builder failed ({precision}): {last_error_line(log)}")
    shutil.rmtree(work / "cache", ignore_errors=True)


def last_error_line(log: Path) -> str:
    """The builder's own error from its output: the last exception line, else the last line that is not a
    progress bar."""
    lines = [line.strip() for line in log.read_text(errors="replace").replace("\r", "\n").splitlines()]
    lines = [line for line in lines if line and "it/s" not in line and "%|" not in line]
    errors = [line for line in lines if _ERROR_LINE.search(line)]
    return (errors or lines or ["no output"])[-1]


def pin_cache_shapes(onnx_path: Path, head_size: int) -> None:
    """Write the head size into the cache inputs' and outputs' shapes: the builder leaves it symbolic
    (``kv_cache_dim``), and the loops size an empty cache from the graph (`CacheLayout`). Only the graph file
    is rewritten; its ``.data`` file is untouched."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    for value in [*model.graph.input, *model.graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            dim = value.type.tensor_type.shape.dim[3]
            dim.Clear()
            dim.dim_value = head_size
    onnx.save(model, str(onnx_path))


def fused_op_counts(onnx_paths: list[Path]) -> dict[str, int]:
    """The fused operators of the builder's graphs (the most of each op over the files)."""
    import onnx

    counts: dict[str, int] = {}
    for path in onnx_paths:
        model = onnx.load(str(path), load_external_data=False)
        for op in FUSED_OPS:
            n = sum(node.op_type == op for node in model.graph.node)
            if n:
                counts[op] = max(counts.get(op, 0), n)
    return counts


def weight_only_settings(onnx_path: Path, bits: int) -> dict:
    """The manifest's quantisation record of a builder decoder's int8 / int4 file, read from its graph."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return decoder_settings(model, BUILDER_DECODERS[f"int{bits}"])


def has_static_adapters(merged) -> bool:
    """A merge of bottleneck adapters keeps them as modules beside the stock weights (`merged_folder`), which
    the builder would not read: those decoders stay on the torch path."""
    from adamix_deploy.adapter import LinearWithAdapter

    return any(isinstance(m, LinearWithAdapter) for m in merged.modules())


def check_genai_tokenizer(folder: Path, prompts: list[str]) -> dict:
    """Whether ``onnxruntime_genai.Tokenizer`` on the export folder encodes ``prompts`` to the ids the server's
    tokenizer (``tokenizer.json`` through the ``tokenizers`` library) gives. Recorded, not enforced: a
    mismatch tells genai users to tokenise with ``tokenizer.json`` and feed ids."""
    import onnxruntime_genai as og
    from tokenizers import Tokenizer

    ours = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    report = {"prompts": len(prompts), "tokenizer": TOKENIZER_FILE}
    try:
        genai = og.Tokenizer(og.Model(str(folder)))
        mismatched = [i for i, p in enumerate(prompts) if [int(t) for t in genai.encode(p)] != ours.encode(p).ids]
    except Exception as e:  # onnxruntime-genai's own error types; the message is the finding
        report |= {"genai_tokenizer": "fails", "error": str(e).splitlines()[0] if str(e) else type(e).__name__}
        mismatched = None
    if mismatched == []:
        report["genai_tokenizer"] = "same ids"
    elif mismatched:
        report |= {"genai_tokenizer": "different ids", "mismatched_prompts": mismatched}
    if report["genai_tokenizer"] != "same ids":
        report["use"] = f"tokenise with {TOKENIZER_FILE} (the tokenizers library) and give genai the ids"
    return report


def graph_opset(onnx_path: Path) -> int:
    """The default-domain opset the builder wrote (the manifest's ``opset``; ``--opset`` is the torch path's)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
