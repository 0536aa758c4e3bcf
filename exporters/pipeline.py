"""``adamix-export --merge``: mixture checkpoint -> merged model -> verified, self-contained export folder.

Read `export_checkpoint` top to bottom: load (any supported checkpoint format), merge the experts and fold them
(`adamix_deploy.merge`), write the merged Hugging Face folder, write the ONNX files, check parity, write the
manifest. The ONNX files come one of two ways, recorded per file in the manifest (`OnnxInfo.tools`):
- decoders of the families onnxruntime-genai's model builder supports (`genai_builder.BUILDER_ARCHITECTURES`:
  Llama, Mistral, Qwen2/3, Phi3, Gemma, ...) when it is installed: the builder writes fp32 from the merged
  folder, and the requested int8/int4 are quantised from its graph (`_builder_files`); no fp16 (the builder's
  targets GPUs);
- everything else (encoders, GPT-2, bottleneck-adapter merges, any decoder without onnxruntime-genai):
  `torch.onnx.export`, onnxruntime's fusions, then `quantize` (`_torch_files`).
Everything is built in a temporary folder and renamed into place only after parity passes. The folder's format
is `contracts.export_folder`.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

from adamix_deploy.checkpoint import MixtureCheckpoint
from adamix_deploy.contracts.atomic import atomic_directory
from adamix_deploy.contracts.checkpoint_format import CONFIG_NAME, WEIGHTS_NAME, CheckpointConfig
from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.contracts.export_folder import (
    MERGED_FOLDER,
    ONNX_FILES,
    QUANTIZED_PRECISIONS,
    Manifest,
    MixtureInfo,
    OnnxInfo,
    SourceInfo,
    ToolRecord,
    sha256_folder,
    write_manifest,
)
from adamix_deploy.contracts.tasks import SEQUENCE_TASKS
from adamix_deploy.exporters import genai_builder
from adamix_deploy.exporters.merged_folder import ADAPTERS_LAYOUT_NAME, save_merged_folder
from adamix_deploy.exporters.onnx_export import export_onnx
from adamix_deploy.exporters.optimize import convert_fp16, optimize_graph
from adamix_deploy.exporters.parity import check_classification, check_generation, parity_inputs
from adamix_deploy.exporters.quantize import quantize_model
from adamix_deploy.importers import detect_and_load
from adamix_deploy.merge import merge_mixture_model, parse_merge_method, routing_for
from adamix_deploy.mixture import set_routing
from adamix_deploy.routing_comparison import compare_routings

VALIDATION_EXAMPLES = 1000  # a seeded subset of a larger --verify-file keeps the export quick
REDUCED_PRECISIONS = {"onnx_int8", "onnx_int4", "onnx_fp16"}  # parity reports their agreement; fp32 must pass


def export_checkpoint(
    source: str | Path,
    output: str | Path,
    merge_method: str = "average",
    quantize: tuple[str, ...] = (),
    fp16: bool = False,
    opset: int = 18,
    verify_file: str | Path | None = None,
    overwrite: bool = False,
    tolerance: float = 1e-4,
    base_model: str | None = None,
    greedy_steps: int = 16,
    parity_prompts: int = 4,
    lora_alpha: float | None = None,
    adapter_activation: str = "gelu",
) -> Manifest:
    """Merge, fold, export, optimise and verify; returns the manifest written into ``output``."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise AdamixError(f"{output} exists: pass --overwrite to replace it")
    unknown = [q for q in quantize if q not in QUANTIZED_PRECISIONS]
    if unknown:
        raise AdamixError(f"unknown quantisation {unknown[0]!r}: choose from {', '.join(QUANTIZED_PRECISIONS)}")
    merge_method = parse_merge_method(merge_method)
    started = time.perf_counter()
    ckpt = detect_and_load(Path(source), base_model, lora_alpha, adapter_activation)
    model, tokenizer, config = ckpt.model, ckpt.tokenizer, ckpt.config
    task = config.task
    if "int4" in quantize and task != "generation":
        raise AdamixError("--quantize int4 is for generation models; encoders take --quantize int8")
    set_routing(model, routing_for(merge_method))
    merged = merge_mixture_model(model, merge_method)
    samples = parity_inputs(task, verify_file, config, parity_prompts)

    builder = task == "generation" and genai_builder.builds(merged)
    if builder and fp16:
        raise AdamixError(
            f"--fp16 is not offered for {merged.config.architectures[0]} decoders: they are built by "
            "onnxruntime-genai's model builder, whose fp16 graphs target GPUs; export fp32/int8/int4 for CPU"
        )

    with atomic_directory(output) as tmp:
        save_merged_folder(merged, tokenizer, tmp / MERGED_FOLDER)
        if builder:
            files, fusions, quantization, tools = _builder_files(merged, tmp, quantize)
            opset = genai_builder.graph_opset(tmp / files["fp32"])
        else:
            files, fusions, quantization, tools = _torch_files(merged, tokenizer, task, tmp, quantize, fp16, opset)
        stages = {f"onnx_{precision}": tmp / name for precision, name in files.items()}
        if task in SEQUENCE_TASKS:
            max_length = config.max_length
            parity = check_classification(
                model, merged, tokenizer, stages, samples, REDUCED_PRECISIONS, tolerance, max_length
            )
        else:
            parity = check_generation(
                model, merged, tokenizer, stages, samples, REDUCED_PRECISIONS, tolerance, greedy_steps
            )
        # what the merge costs on the user's own validation file (parity only shows it is served faithfully)
        validation = compare_routings(ckpt, verify_file, max_examples=VALIDATION_EXAMPLES) if verify_file else None
        onnx = OnnxInfo(
            opset,
            onnxruntime_version(),
            files,
            fusions,
            with_past=task == "generation",
            quantization=quantization,
            tools={precision: asdict(record) for precision, record in tools.items()},
            genai=_genai_info(tmp, samples) if builder else None,
        )
        manifest = _manifest(ckpt, Path(source), merge_method, onnx, parity, started)
        return write_manifest(tmp, replace(manifest, validation=validation))


def _torch_files(merged, tokenizer, task: str, tmp: Path, quantize: tuple[str, ...], fp16: bool, opset: int):
    """ONNX from PyTorch (`onnx_export`), onnxruntime's fusions, then the reduced precisions (`quantize`):
    encoders, GPT-2 and every decoder the model builder does not take. Returns files, fusions, quantisation
    settings and tool records by precision."""
    import torch

    raw = tmp / ".raw"
    raw_onnx = export_onnx(merged, tokenizer, task, raw, opset)
    hf = merged.config
    shape = (hf.model_type, hf.num_attention_heads, hf.hidden_size)
    files = {"fp32": ONNX_FILES["fp32"]}
    fusions = optimize_graph(raw_onnx, tmp / files["fp32"], *shape)
    exporter = f"torch.onnx.export (torch {torch.__version__})"
    tools = {"fp32": ToolRecord(exporter, {"opset": opset, "optimizer": "onnxruntime.transformers"})}
    quantization = {}
    for precision in dict.fromkeys(quantize):
        files[precision] = ONNX_FILES[precision]
        quantization[precision] = quantize_model(tmp / files["fp32"], tmp / files[precision], precision, task)
        tools[precision] = ToolRecord(
            f"onnxruntime.quantization ({onnxruntime_version()})", quantization[precision]
        )
    if fp16:
        files["fp16"] = ONNX_FILES["fp16"]
        convert_fp16(raw_onnx, tmp / files["fp16"], *shape)
        tools["fp16"] = ToolRecord(exporter, {"opset": opset, "optimizer": "onnxruntime.transformers, float16"})
    keep_export_files(raw, tmp)
    return files, fusions, quantization, tools


def _builder_files(merged, tmp: Path, quantize: tuple[str, ...]):
    """fp32 by onnxruntime-genai's model builder from the merged folder and the requested int8/int4 quantised
    from its graph, with the merged folder's config and tokenizer files beside them. Same returns as
    `_torch_files`."""
    precisions = ["fp32", *dict.fromkeys(quantize)]
    tied = bool(getattr(merged.config, "tie_word_embeddings", False))
    tools = genai_builder.build_onnx(tmp / MERGED_FOLDER, tmp, precisions, tied)
    files = {precision: ONNX_FILES[precision] for precision in precisions}
    fusions = genai_builder.fused_op_counts([tmp / name for name in files.values()])
    quantization = {
        precision: genai_builder.weight_only_settings(tmp / files[precision], 8 if precision == "int8" else 4)
        for precision in precisions[1:]
    }
    for item in (tmp / MERGED_FOLDER).iterdir():  # config, generation config, tokenizer, chat template
        if item.suffix != ".safetensors" and item.name != ADAPTERS_LAYOUT_NAME:
            shutil.copy2(item, tmp / item.name)
    return files, fusions, quantization, tools


def _genai_info(folder: Path, prompts: list[str]) -> dict:
    return {
        "config": genai_builder.GENAI_CONFIG_FILE,
        "model": ONNX_FILES["fp32"],
        "tokenizer": genai_builder.check_genai_tokenizer(folder, prompts),
    }


def onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def keep_export_files(raw: Path, folder: Path) -> None:
    """Move optimum's config, generation config and tokenizer files from its raw export into ``folder``, then
    drop the raw export (its ONNX files have been optimised into ``folder`` already)."""
    for item in raw.iterdir():
        if item.suffix != ".onnx" and not item.name.endswith(".onnx_data"):
            shutil.move(str(item), folder / item.name)
    shutil.rmtree(raw)


def mixture_info(config: CheckpointConfig) -> MixtureInfo:
    """The manifest's description of a checkpoint's mixture."""
    mixture = config.mixture
    return MixtureInfo(**{k: mixture[k] for k in ("method", "experts", "share", "rank", "alpha", "bottleneck")})


def _manifest(
    ckpt: MixtureCheckpoint, source: Path, merge_method: str, onnx: OnnxInfo, parity: dict, started: float
) -> Manifest:
    config = ckpt.config
    return Manifest(
        task=config.task,
        labels=config.labels,
        prompt_template=config.prompt_template,
        max_length=config.max_length,
        base_model=config.base_model,
        mixture=mixture_info(config),
        parameters=config.parameters,
        merge_method=merge_method,
        onnx=onnx,
        parity=parity,
        source=source_info(ckpt, source),
        export_seconds=round(time.perf_counter() - started, 1),
    )


def source_info(ckpt: MixtureCheckpoint, source: Path) -> SourceInfo:
    """Where an export came from, with a digest that recognises a re-export of the same checkpoint."""
    config = ckpt.config
    if source.is_file():  # an official AdaMix file: its own digest
        hashed_folder, hashed = source.parent, [source.name]
    else:
        hashed_folder = ckpt.folder
        hashed = [n for n in config.source_files or [CONFIG_NAME, WEIGHTS_NAME] if (ckpt.folder / n).is_file()]
    return SourceInfo(
        checkpoint=str(source.absolute()),
        format=config.source_format,
        sha256=sha256_folder(hashed_folder, hashed),
        files_hashed=hashed,
    )
